defmodule SnakeBridge.Session do
  @moduledoc """
  One Python worker to work in, so that objects made by several calls, or
  by several processes, live together and can be used in one call.

  Objects stay in the worker that made them, and a call runs in one worker,
  so a call that combines objects from two workers fails with
  `:handle_conflict`. Two rules keep objects together:

    * **A process's calls follow its objects.** A call that names no object
      runs in the worker holding the objects the process received last, as
      long as any of them is alive; a process with none is load-balanced.
      Sequential code in one process (a script, a notebook, a GenServer)
      never meets `:handle_conflict`.
    * **Work of several processes goes where you say.** `run/2` runs a
      function with every call of the process in one worker: a session's,
      or the one holding a given object (a model, say). The `:worker` option
      of a call does the same for one call, and `pin/1` for all calls of
      the process from then on (a notebook).

  A session is an anchor object in one worker; `new/1` picks the workers in
  turn, so sessions spread over the pool. The session lasts as long as the
  struct is referred to, like any `SnakeBridge.Object`. If its worker exits,
  the session's objects go with it and calls in it fail with `:stale_handle`.

  The trade-off: all calls of one session (or one process with objects) run
  one at a time in one worker, while other workers may be idle. Spread
  independent work over several sessions, or leave it to the pool.

      session = SnakeBridge.Session.new!()

      SnakeBridge.Session.run(session, fn ->
        {:ok, d} = SnakeBridge.call("datetime", "date", [2024, 1, 1], as: :handle)
        {:ok, dt} = SnakeBridge.call("datetime", "timedelta", [], kwargs: [days: 1], as: :handle)
        SnakeBridge.call!("operator", "add", [d, dt])
      end)
      #=> ~D[2024-01-02]
  """

  alias SnakeBridge.{Args, Native, Object}

  @enforce_keys [:pool, :object]
  defstruct [:pool, :object]

  @typedoc "A session: the pool, and the object that anchors it in its worker."
  @type t :: %__MODULE__{pool: SnakeBridge.Types.pool(), object: Object.t()}

  @typedoc "Where `run/2`, `pin/1` and `:worker` send calls."
  @type worker :: t() | Object.t()

  @doc """
  Starts a session in a worker of `:pool` (default `:default`): each new
  session takes the next worker in turn. Returns `{:ok, session}`, or
  `{:error, error}` when no worker answers (`:timeout`,
  `:python_unavailable`, ...).

  A clustered pool's session is made on the node the cluster routes it to
  (see "Clusters" in the README). One on another node is a remote object:
  it lasts until the process that made it exits or releases it
  (`SnakeBridge.release(session.object)`), not until it is garbage
  collected.

  ## Options

    * `:pool` — the pool. Default `:default`.
    * `:timeout` — milliseconds to wait for a worker (`0..4_294_967_295`,
      or `:infinity`). Default `5_000`.

  Raises `ArgumentError` for an invalid option.

  ## Examples

      {:ok, session} = SnakeBridge.Session.new(pool: :ml)
  """
  @spec new(pool: SnakeBridge.Types.pool(), timeout: SnakeBridge.Types.timeout_ms()) ::
          {:ok, t()} | {:error, SnakeBridge.Error.t() | SnakeBridge.PythonError.t()}
  def new(opts \\ []) do
    opts = Args.opts!(opts, pool: :default, timeout: 5_000)
    pool = Args.pool!(opts[:pool])
    timeout = Args.timeout!(opts[:timeout])

    with {:ok, ref} <- Native.submit_anchor(pool, timeout),
         {:ok, object} <- SnakeBridge.await(ref, timeout) do
      {:ok, %__MODULE__{pool: pool, object: object}}
    end
  end

  @doc """
  Like `new/1`, but returns the session itself and raises on failure.
  """
  @spec new!(pool: SnakeBridge.Types.pool(), timeout: SnakeBridge.Types.timeout_ms()) :: t()
  def new!(opts \\ []) do
    case new(opts) do
      {:ok, session} -> session
      {:error, error} -> raise error
    end
  end

  @doc """
  Runs `fun` with every call this process makes in it going to the worker
  of `worker` (a session, or any `SnakeBridge.Object`: the worker holding
  it), in that worker's pool; returns what `fun` returns. Calls to other
  pools, and calls with their own `:worker`, are not affected. Nested runs
  restore the outer one when they return (or raise).

  A call inside that uses an object held by another worker fails with
  `:handle_conflict`; if the worker has exited, calls fail with
  `:stale_handle`.

  Raises `ArgumentError` when `worker` is neither a session nor an object,
  or `fun` is not a function of arity 0.

  ## Examples

      {:ok, model} = SnakeBridge.call("my_model", "load", [])

      # In each of many request processes:
      SnakeBridge.Session.run(model, fn ->
        {:ok, x} = SnakeBridge.call("my_model", "features", [request])
        SnakeBridge.method(model, "predict", [x])
      end)
  """
  @spec run(worker(), (() -> result)) :: result when result: term()
  def run(worker, fun) do
    object = object!(worker)

    unless is_function(fun, 0) do
      raise ArgumentError, "expected fun to be a function of arity 0, got: #{inspect(fun)}"
    end

    previous = Process.put(Native.pin_key(), object)

    try do
      fun.()
    after
      restore(previous)
    end
  end

  @doc """
  Sends every later call of this process (in the worker's pool) to the
  worker of `worker`, until `unpin/0`: `run/2` for the rest of the
  process's life, as a notebook wants. Returns `:ok`. Raises
  `ArgumentError` like `run/2`.

  ## Examples

      SnakeBridge.Session.new!() |> SnakeBridge.Session.pin()
  """
  @spec pin(worker()) :: :ok
  def pin(worker) do
    Process.put(Native.pin_key(), object!(worker))
    :ok
  end

  @doc """
  Undoes `pin/1`: the process's calls follow its objects again. Returns `:ok`.
  """
  @spec unpin() :: :ok
  def unpin do
    Process.delete(Native.pin_key())
    :ok
  end

  @doc """
  The OS pid of the session's worker, or `nil` once it has exited. Raises
  `ArgumentError` when `session` is not a session.
  """
  @spec os_pid(t()) :: pos_integer() | nil
  def os_pid(%__MODULE__{object: object}), do: Object.os_pid(object)

  def os_pid(other) do
    raise ArgumentError, "expected a SnakeBridge.Session, got: #{inspect(other)}"
  end

  defp object!(%__MODULE__{object: object}), do: Args.object!(object)
  defp object!(%Object{} = object), do: Args.object!(object)

  defp object!(other) do
    raise ArgumentError,
          "expected a SnakeBridge.Session or a SnakeBridge.Object, got: #{inspect(other)}"
  end

  defp restore(nil), do: Process.delete(Native.pin_key())
  defp restore(previous), do: Process.put(Native.pin_key(), previous)

  defimpl Inspect do
    def inspect(%SnakeBridge.Session{pool: pool, object: object}, _opts) do
      "#SnakeBridge.Session<#{Kernel.inspect(pool)}, worker: #{Kernel.inspect(SnakeBridge.Object.os_pid(object))}>"
    end
  end
end
