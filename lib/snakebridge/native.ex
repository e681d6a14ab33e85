defmodule SnakeBridge.Native do
  @moduledoc """
  The low-level, mailbox-native way to call Python.

  `call_async/4` queues a call and returns a reference at once; the reply
  arrives later as exactly one message in the calling process's mailbox:

      {:snakebridge, ref, {:ok, value}}
      {:snakebridge, ref, {:error, %SnakeBridge.PythonError{} | %SnakeBridge.Error{}}}

  Receive it yourself, or with `SnakeBridge.await/2`; `SnakeBridge.cancel/1`
  withdraws a call. `SnakeBridge.call/4` is the synchronous form built on
  these.
  """

  alias SnakeBridge.NIF

  @typedoc "Options of `call_async/4`."
  @type option :: {:kwargs, keyword() | map()} | {:pool, SnakeBridge.Types.pool()}

  @doc """
  Queues a call to `module.function(*args, **kwargs)` in a pool's Python
  workers and returns at once.

  `module` and `function` are strings or atoms; both may be dotted paths
  (`"os.path"`, `"JSONDecoder.decode"`). Arguments are converted as described
  in the type mapping of `SnakeBridge`.

  Returns `{:ok, ref}`; the result arrives later as
  `{:snakebridge, ref, result}`. Returns `{:error, %SnakeBridge.Error{}}` when
  the call cannot even be queued: no such pool (`:pool_not_found`), a full
  queue (`:overloaded`), an argument with no Python equivalent
  (`:unsupported_type`, the message names where in the arguments it is), or
  values nested too deep or too large (`:nesting_too_deep`,
  `:payload_too_large`).

  ## Options

    * `:kwargs` — keyword arguments, as a keyword list or a map with atom or
      string keys. Default `[]`.
    * `:pool` — the name of the pool to run in. Default `:default`.

  ## Examples

      {:ok, ref} = SnakeBridge.Native.call_async("math", "sqrt", [16.0])

      receive do
        {:snakebridge, ^ref, {:ok, value}} -> value
        {:snakebridge, ^ref, {:error, error}} -> raise error
      after
        5_000 -> SnakeBridge.cancel(ref)
      end
      #=> 4.0

      {:ok, ref} = SnakeBridge.Native.call_async(:builtins, :round, [2.675], kwargs: [ndigits: 2])
  """
  @spec call_async(SnakeBridge.Types.name(), SnakeBridge.Types.name(), list(), [option()]) ::
          {:ok, reference()} | {:error, SnakeBridge.Error.t()}
  def call_async(module, function, args \\ [], opts \\ [])

  def call_async(module, function, args, opts), do: start_call(module, function, args, opts, :infinity)

  # call_async/4 with a deadline: the worker skips the call instead of
  # starting it once `timeout` milliseconds have passed. Used by
  # SnakeBridge.call/4.
  @doc false
  def start_call(module, function, args, [], timeout) do
    submit(:default, name!(module, :module), name!(function, :function), args!(args), [], timeout)
  end

  def start_call(module, function, args, opts, timeout) do
    opts = Keyword.validate!(opts, kwargs: [], pool: :default)
    pool = opts[:pool]

    unless is_atom(pool) do
      raise ArgumentError, "expected :pool to be an atom, got: #{inspect(pool)}"
    end

    submit(
      pool,
      name!(module, :module),
      name!(function, :function),
      args!(args),
      kwargs!(opts[:kwargs]),
      timeout
    )
  end

  defp submit(pool, module, function, args, kwargs, timeout) do
    # The normal-scheduler NIF encodes small calls in place; it answers :dirty
    # when the arguments are too big to encode within a scheduler time slice,
    # and the dirty-CPU variant does the same work off the normal schedulers.
    case NIF.submit(pool, module, function, args, kwargs, timeout) do
      :dirty -> NIF.submit_dirty(pool, module, function, args, kwargs, timeout)
      result -> result
    end
  end

  defp name!(name, _what) when is_binary(name), do: name

  defp name!(name, _what) when is_atom(name) and name not in [nil, true, false],
    do: Atom.to_string(name)

  defp name!(name, what) do
    raise ArgumentError,
          "expected the #{what} name to be a string or an atom, got: #{inspect(name)}"
  end

  defp args!(args) when is_list(args), do: args

  defp args!(args) do
    raise ArgumentError, "expected args to be a list, got: #{inspect(args)}"
  end

  defp kwargs!(kwargs) when is_map(kwargs) do
    Enum.each(kwargs, fn {key, _} -> kwarg_key!(key) end)
    kwargs
  end

  defp kwargs!(kwargs) when is_list(kwargs) do
    Enum.each(kwargs, fn
      {key, _} when is_atom(key) ->
        :ok

      other ->
        raise ArgumentError,
              "expected :kwargs to be a keyword list or a map, got element: #{inspect(other)}"
    end)

    kwargs
  end

  defp kwargs!(kwargs) do
    raise ArgumentError, "expected :kwargs to be a keyword list or a map, got: #{inspect(kwargs)}"
  end

  defp kwarg_key!(key) when is_atom(key) or is_binary(key), do: :ok

  defp kwarg_key!(key) do
    raise ArgumentError, "keyword argument names must be atoms or strings, got: #{inspect(key)}"
  end
end
