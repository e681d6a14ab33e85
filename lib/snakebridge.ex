defmodule SnakeBridge do
  @moduledoc """
  Call Python from Elixir.

  Python runs in pools of separate OS processes managed by native Rust code
  inside the BEAM, so a crash or hang in Python never takes the VM down, while
  a call costs microseconds and its reply lands straight in the caller's
  mailbox. The application starts a pool named `:default`; add more with
  `SnakeBridge.Pool`.

      iex> SnakeBridge.call("math", "sqrt", [16.0])
      {:ok, 4.0}

  ## Type mapping

  Elixir to Python:

  | Elixir                                          | Python                         |
  |-------------------------------------------------|--------------------------------|
  | `nil`, `true`, `false`                          | `None`, `True`, `False`        |
  | integer (any size)                              | `int`                          |
  | float                                           | `float`                        |
  | `:nan`, `:infinity`, `:neg_infinity`            | `nan`, `inf`, `-inf`           |
  | other atoms                                     | `str`                          |
  | binary (valid UTF-8)                            | `str`                          |
  | binary (not UTF-8), `SnakeBridge.bytes(bin)`    | `bytes`                        |
  | list                                            | `list`                         |
  | tuple                                           | `tuple`                        |
  | map                                             | `dict` (keys by the same rules)|
  | `MapSet`                                        | `set`                          |

  Pids, ports, references, functions, bitstrings that are not binaries and
  other structs give `{:error, %SnakeBridge.Error{reason: :unsupported_type}}`
  whose message says where in the arguments the value was (`"args[0][2]"`).

  Python to Elixir:

  | Python                                  | Elixir                                          |
  |-----------------------------------------|-------------------------------------------------|
  | `None`, `True`, `False`                 | `nil`, `true`, `false`                          |
  | `int` (any size)                        | integer                                         |
  | `float`                                 | float; `nan`/`inf`/`-inf` → `:nan`, `:infinity`, `:neg_infinity` |
  | `str`                                   | binary                                          |
  | `bytes`, `bytearray`, `memoryview`      | binary                                          |
  | `list`                                  | list                                            |
  | `tuple`                                 | tuple                                           |
  | `dict`                                  | map (string keys stay binaries, never atoms)    |
  | `set`, `frozenset`                      | `MapSet`                                        |

  Any other Python result is an `:unsupported_type` error naming its type.
  So a round trip turns atoms (other than the three float atoms, `nil`,
  `true` and `false`) into strings, map keys included, and
  `SnakeBridge.bytes(bin)` into `bin`.

  ## Errors

  A Python exception comes back as `{:error, %SnakeBridge.PythonError{}}`
  (import failures and missing attributes included); everything else as
  `{:error, %SnakeBridge.Error{}}` whose `reason` is one of
  `t:SnakeBridge.Types.reason/0`.
  """

  alias SnakeBridge.{Error, NIF, Native}

  @default_timeout 5_000

  # When cancel answers :replied, the reply is in or on its way to the
  # caller's mailbox (the runtime may still be decoding a large result). It
  # always arrives; the bound only keeps a misuse (awaiting or cancelling from
  # another process) from blocking forever.
  @reply_grace 5_000

  @typedoc "Options of `call/4`."
  @type call_option ::
          {:kwargs, keyword() | map()}
          | {:timeout, timeout()}
          | {:pool, SnakeBridge.Types.pool()}

  @doc """
  Calls `module.function(*args, **kwargs)` in Python and waits for the result.

  `module` and `function` are strings or atoms; dotted paths work for both
  (`"os.path"`, `"datetime.date", "today"`, `"json", "JSONDecoder.decode"`).

  Returns `{:ok, value}`, `{:error, %SnakeBridge.PythonError{}}` when Python
  raised, or `{:error, %SnakeBridge.Error{}}`. When it returns, no message for
  this call is in, or will later arrive in, the caller's mailbox — after a
  timeout included.

  ## Options

    * `:kwargs` — keyword arguments, a keyword list or a map. Default `[]`.
    * `:timeout` — milliseconds to wait, or `:infinity`. Default `5_000`.
      On timeout the call is cancelled and
      `{:error, %SnakeBridge.Error{reason: :timeout}}` returned.
    * `:pool` — the pool to run in. Default `:default`.

  ## Examples

      iex> SnakeBridge.call("math", "sqrt", [2.0])
      {:ok, 1.4142135623730951}

      iex> SnakeBridge.call(:builtins, :sorted, [[3, 1, 2]], kwargs: [reverse: true])
      {:ok, [3, 2, 1]}

      iex> {:error, error} = SnakeBridge.call("operator", "truediv", [1, 0])
      iex> Exception.message(error)
      "ZeroDivisionError: division by zero"
  """
  @spec call(SnakeBridge.Types.name(), SnakeBridge.Types.name(), list(), [call_option()]) ::
          SnakeBridge.Types.result()
  def call(module, function, args \\ [], opts \\ [])

  def call(module, function, args, []) do
    case Native.start_call(module, function, args, [], @default_timeout) do
      {:ok, ref} -> await(ref, @default_timeout)
      {:error, _} = error -> error
    end
  end

  def call(module, function, args, opts) do
    {timeout, opts} =
      opts
      |> Keyword.validate!([:kwargs, :pool, timeout: @default_timeout])
      |> Keyword.pop!(:timeout)

    validate_timeout!(timeout)

    case Native.start_call(module, function, args, opts, timeout) do
      {:ok, ref} -> await(ref, timeout)
      {:error, _} = error -> error
    end
  end

  @doc """
  Like `call/4`, but returns the value itself and raises the
  `SnakeBridge.PythonError` or `SnakeBridge.Error` on failure.

  ## Options

  The same as `call/4`.

  ## Examples

      iex> SnakeBridge.call!("os.path", "join", ["a", "b"])
      "a/b"
  """
  @spec call!(SnakeBridge.Types.name(), SnakeBridge.Types.name(), list(), [call_option()]) ::
          term()
  def call!(module, function, args \\ [], opts \\ []) do
    case call(module, function, args, opts) do
      {:ok, value} -> value
      {:error, error} -> raise error
    end
  end

  @doc """
  Waits for the reply to a call made with `SnakeBridge.Native.call_async/4`
  and returns it: `{:ok, value}` or `{:error, error}`.

  Must be called from the process that made the call (the reply goes to its
  mailbox). After `timeout` milliseconds the call is cancelled and
  `{:error, %SnakeBridge.Error{reason: :timeout}}` returned — unless the reply
  raced the timeout, in which case the reply is returned. Either way no
  message for `ref` is left behind.

  ## Examples

      {:ok, ref} = SnakeBridge.Native.call_async("math", "factorial", [20])
      SnakeBridge.await(ref)
      #=> {:ok, 2432902008176640000}
  """
  @spec await(reference(), timeout()) :: SnakeBridge.Types.result()
  def await(ref, timeout \\ @default_timeout) when is_reference(ref) do
    validate_timeout!(timeout)

    receive do
      {:snakebridge, ^ref, result} -> result
    after
      timeout ->
        case NIF.cancel(ref) do
          :cancelled ->
            timeout_error(timeout)

          :replied ->
            receive do
              {:snakebridge, ^ref, result} -> result
            after
              @reply_grace -> timeout_error(timeout)
            end

          :unknown ->
            # Not (or no longer) known to the runtime: if it answered at all,
            # the answer is already here.
            receive do
              {:snakebridge, ^ref, result} -> result
            after
              0 -> timeout_error(timeout)
            end
        end
    end
  end

  @doc """
  Cancels a call made with `SnakeBridge.Native.call_async/4`.

  After it returns, no reply for `ref` is in, or will arrive in, the mailbox:
  a call still queued never runs; a reply that was already delivered is
  removed from the mailbox. Call it from the process that made the call, since
  that is the mailbox it cleans. Cancelling an unknown or finished call is a
  no-op. Always returns `:ok`.

  ## Examples

      {:ok, ref} = SnakeBridge.Native.call_async("time", "sleep", [10])
      :ok = SnakeBridge.cancel(ref)
  """
  @spec cancel(reference()) :: :ok
  def cancel(ref) when is_reference(ref) do
    case NIF.cancel(ref) do
      :replied ->
        receive do
          {:snakebridge, ^ref, _} -> :ok
        after
          @reply_grace -> :ok
        end

      _cancelled_or_unknown ->
        receive do
          {:snakebridge, ^ref, _} -> :ok
        after
          0 -> :ok
        end
    end
  end

  @doc """
  Wraps a binary so that Python receives it as `bytes`, even when it is valid
  UTF-8 (which would otherwise become `str`).

  ## Examples

      iex> SnakeBridge.call!("builtins", "repr", [SnakeBridge.bytes("abc")])
      "b'abc'"

      iex> SnakeBridge.call!("builtins", "repr", ["abc"])
      "'abc'"
  """
  @spec bytes(binary()) :: SnakeBridge.Bytes.t()
  def bytes(data) when is_binary(data), do: %SnakeBridge.Bytes{data: data}

  @doc """
  Returns the state of a pool: a map with `:queue_length` (calls waiting for
  a worker), `:max_queue`, `:size`, the pool's totals `:calls`, `:errors` and
  `:restarts`, and `:workers`, one map per worker slot with `:os_pid` (`nil`
  while none runs), `:state` (`:starting`, `:ready`, `:restarting`,
  `:unavailable` or `:stopped`), `:in_flight`, `:calls`, `:errors`,
  `:restarts` and `:rss` (bytes, of the Python process).

  Raises `SnakeBridge.Error` (reason `:pool_not_found`) when no such pool runs.

  ## Examples

      SnakeBridge.stats()
      #=> %{queue_length: 0, size: 2, calls: 10, workers: [%{os_pid: 4242, state: :ready, in_flight: 0, ...}, ...], ...}
  """
  @spec stats(SnakeBridge.Types.pool()) :: %{
          required(:queue_length) => non_neg_integer(),
          required(:workers) => [map()],
          optional(atom()) => term()
        }
  def stats(pool \\ :default) when is_atom(pool) do
    case NIF.stats(pool) do
      {:ok, stats} -> stats
      {:error, error} -> raise error
    end
  end

  defp timeout_error(timeout) do
    {:error,
     %Error{
       reason: :timeout,
       message: "Python call did not answer within #{timeout} ms and was cancelled",
       details: %{timeout: timeout}
     }}
  end

  defp validate_timeout!(:infinity), do: :ok
  defp validate_timeout!(timeout) when is_integer(timeout) and timeout >= 0, do: :ok

  defp validate_timeout!(timeout) do
    raise ArgumentError,
          "expected :timeout to be a non-negative integer or :infinity, got: #{inspect(timeout)}"
  end
end
