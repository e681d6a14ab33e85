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

  import Bitwise

  alias SnakeBridge.{Args, NIF, Object}

  # The protocol's call flags (native/snakebridge_protocol/src/message.rs).
  @as_handle 1
  @stream 2
  @timed 4

  @typedoc "Options of `call_async/4`."
  @type option ::
          {:kwargs, keyword() | map()}
          | {:pool, SnakeBridge.Types.pool()}
          | {:as, :value | :handle}

  @doc """
  Queues a call to `module.function(*args, **kwargs)` in a pool's Python
  workers and returns at once.

  `module` and `function` are strings or atoms; both may be dotted paths
  (`"os.path"`, `"JSONDecoder.decode"`). `module` may also be a
  `SnakeBridge.Object`: `function` then names a method (or any attribute
  path) of it, or is `nil` to call the object itself. Arguments are
  converted as described in the type mapping of `SnakeBridge`; they may
  contain `SnakeBridge.Object`s, and the call then runs in the worker that
  holds them.

  Returns `{:ok, ref}`; the result arrives later as
  `{:snakebridge, ref, result}`. Returns `{:error, %SnakeBridge.Error{}}` when
  the call cannot even be queued: no such pool (`:pool_not_found`), a full
  queue (`:overloaded`), an argument with no Python equivalent
  (`:unsupported_type`, the message names where in the arguments it is),
  values nested too deep or too large (`:nesting_too_deep`,
  `:payload_too_large`), or objects whose worker is gone (`:stale_handle`)
  or that live in different workers (`:handle_conflict`).

  Raises `ArgumentError`, before anything is queued, when an argument or
  option is invalid (`opts` or `args` not a proper list, `:kwargs` neither a
  keyword list nor a map with atom or string keys, a name neither a string
  nor an atom, an unknown option...); the message names it.

  ## Options

    * `:kwargs` — keyword arguments, as a keyword list or a map with atom or
      string keys. Default `[]`.
    * `:pool` — the name of the pool to run in. Default: the pool of the
      target object, else `:default`.
    * `:as` — `:handle` returns the result as a `SnakeBridge.Object` whatever
      its type; `:value` (the default) converts it when it has an Elixir
      equivalent.

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
  @spec call_async(SnakeBridge.Types.target(), SnakeBridge.Types.name() | nil, list(), [option()]) ::
          {:ok, reference()} | {:error, SnakeBridge.Error.t()}
  def call_async(module, function, args \\ [], opts \\ [])

  def call_async(module, function, args, opts) do
    module |> request!(function, args, opts) |> submit(:infinity)
  end

  # call_async/4 with a deadline: the worker skips the call instead of
  # starting it once `timeout` milliseconds have passed. Used by
  # SnakeBridge.call/4.
  @doc false
  def start_call(module, function, args, [], timeout) when is_binary(module) do
    submit(
      {:default, module, Args.name!(function, :function), Args.list!(args, :args), [], {0, 0}},
      timeout
    )
  end

  def start_call(target, function, args, opts, timeout) do
    target |> request!(function, args, opts) |> submit(timeout)
  end

  # request!/4 for SnakeBridge.Telemetry: the worker reports its timing
  # with the reply.
  @doc false
  def timed_request!(target, function, args, opts) do
    {pool, target, function, args, kwargs, {flags, window}} = request!(target, function, args, opts)
    {pool, target, function, args, kwargs, {flags ||| @timed, window}}
  end

  # Checks a call's arguments and options; raises ArgumentError on the
  # first bad one. `stream` asks for the result's items, `window` of them
  # before the consumer grants more (see SnakeBridge.stream/4).
  @doc false
  def request!(target, function, args, opts, stream \\ nil) do
    opts = Args.opts!(opts, [:pool, kwargs: [], as: :value])
    as = as_flag(opts[:as])

    mode =
      case stream do
        nil -> {as, 0}
        window -> {as ||| @stream, Args.window!(window)}
      end

    {pool(target, opts[:pool]), target!(target), function!(target, function),
     Args.list!(args, :args), Args.kwargs!(opts[:kwargs]), mode}
  end

  # Queues a call checked by request!/5.
  @doc false
  def submit({pool, target, function, args, kwargs, mode}, timeout) do
    # The normal-scheduler NIF encodes small calls in place; it answers :dirty
    # when the arguments are too big to encode within a scheduler time slice,
    # and the dirty-CPU variant does the same work off the normal schedulers.
    case NIF.submit(pool, target, function, args, kwargs, timeout, mode) do
      {:ok, _} = queued ->
        queued

      :dirty ->
        NIF.submit_dirty(pool, target, function, args, kwargs, timeout, mode)
        |> refused(pool, target, function)

      refusal ->
        refused(refusal, pool, target, function)
    end
  end

  defp refused({:error, %SnakeBridge.Error{reason: :overloaded}} = error, pool, target, function) do
    SnakeBridge.Telemetry.overloaded(pool, target, function)
    error
  end

  defp refused(result, _pool, _target, _function), do: result

  defp as_flag(:value), do: 0
  defp as_flag(:handle), do: @as_handle

  defp as_flag(other) do
    raise ArgumentError, "expected :as to be :value or :handle, got: #{inspect(other)}"
  end

  defp pool(%Object{pool: pool}, nil), do: pool
  defp pool(_module, nil), do: :default

  defp pool(_target, pool) when is_atom(pool), do: pool

  defp pool(_target, pool) do
    raise ArgumentError, "expected :pool to be an atom, got: #{inspect(pool)}"
  end

  defp target!(%Object{} = object), do: Args.object!(object)
  defp target!(module), do: Args.name!(module, :module)

  defp function!(%Object{}, nil), do: nil
  defp function!(_target, function), do: Args.name!(function, :function)
end
