defmodule SnakeBridge.Types do
  @moduledoc """
  Types shared by the SnakeBridge modules.

  `t:reason/0` lists every `reason` a `SnakeBridge.Error` can carry, so callers
  can match on them:

    * `:timeout` — the call did not answer within its `:timeout`;
    * `:unsupported_type` — an argument has no Python equivalent, or a result
      has no Elixir one; the message names where (`"args[0][2]"`) and what;
    * `:nesting_too_deep` — a value nests containers more than 100 levels deep;
    * `:payload_too_large` — an encoded call or result is over the pool's `:max_payload` (256 MiB by default, 64 MiB without shared memory);
    * `:pool_not_found` — no pool of that name is running;
    * `:overloaded` — the pool's queue is full (`:max_queue`);
    * `:worker_exited` — the Python process died while running the call;
    * `:python_unavailable` — the pool's interpreter cannot be started;
    * `:cancelled` — the call was cancelled;
    * `:already_started` — a pool of that name is already running;
    * `:protocol_error` — a worker sent bytes that are not a valid reply;
    * `:stale_handle` — a `SnakeBridge.Object` whose Python object is gone:
      released with `SnakeBridge.release/1`, or its worker exited or was
      recycled;
    * `:handle_conflict` — a call uses objects held by different workers (or
      pools); a call runs in one worker, so they must come from the same one;
    * `:circuit_open` — the pool's circuit breaker is open after too many
      failures (`:circuit_breaker` option of `SnakeBridge.Pool`); the message
      says why and when a call will be tried again;
    * `:node_down` — the node running the call (a clustered pool of another
      node, or an object living there) went down or disconnected before it
      answered; see `SnakeBridge.Cluster`.
  """

  @typedoc "Why a call failed without a Python exception."
  @type reason ::
          :timeout
          | :unsupported_type
          | :nesting_too_deep
          | :payload_too_large
          | :pool_not_found
          | :overloaded
          | :worker_exited
          | :python_unavailable
          | :cancelled
          | :already_started
          | :protocol_error
          | :stale_handle
          | :handle_conflict
          | :circuit_open
          | :node_down

  @typedoc "A Python module or function name: `\"os.path\"` or `:math`."
  @type name :: String.t() | atom()

  @typedoc "What a call calls into: a module, or a Python object."
  @type target :: name() | SnakeBridge.Object.t()

  @typedoc """
  A timeout in milliseconds: what `receive ... after` accepts. Anything else
  raises `ArgumentError`.
  """
  @type timeout_ms :: 0..4_294_967_295 | :infinity

  @typedoc "The name of a pool."
  @type pool :: atom()

  @typedoc "What a call evaluates to."
  @type result :: {:ok, term()} | {:error, SnakeBridge.PythonError.t() | SnakeBridge.Error.t()}
end
