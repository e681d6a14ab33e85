defmodule SnakeBridge.Telemetry do
  @moduledoc """
  `:telemetry` events of SnakeBridge.

  SnakeBridge has no Hex dependencies: the events are emitted when the
  `:telemetry` library is loaded (add `{:telemetry, "~> 1.0"}` to your own
  project). Without it, or with no handler attached to
  `[:snakebridge, :call, ...]`, calls take the same path as before.

  ## Calls

  `SnakeBridge.call/4` and everything built on it (`call!/4`, `method/4`,
  `getattr/3`, `setattr/4`, `eval/3` and their bang variants) emit, in the
  calling process:

    * `[:snakebridge, :call, :start]`: measurements `:system_time`,
      `:monotonic_time`; metadata `:pool`, `:module`, `:function`.
    * `[:snakebridge, :call, :stop]` when the call returns `{:ok, value}`, and
      `[:snakebridge, :call, :exception]` when it returns `{:error, error}`.
      Measurements: `:duration` (from start to return), and, when the worker
      answered the call itself, `:queue_time` (from the call's submission
      until its worker started it: the pool's queue and the worker's
      pipeline) and `:python_time` (from the start of the call in the worker,
      imports included, until its function returned), both as reported by
      the worker. All in `:native` time units, like `:telemetry.span/3`.
      Metadata: `:pool`, `:module`, `:function`, `:os_pid` (the worker that
      ran the call, or `nil`), `:result` (`:ok`, `:python_error` or
      `:error`); `:exception` adds `:kind` (`:error`), `:reason` (the
      `SnakeBridge.Error` reason, or the Python exception's type) and
      `:error` (the struct).

  For a call on an object, `:module` is the object's type and `:function`
  the method (`nil` when the object itself is called). Streams and
  `SnakeBridge.Native.call_async/4` emit no call events. `:queue_time` and
  `:python_time` are absent for calls that no worker answered (a timeout,
  a dead worker, `:overloaded`...), for `async def` functions, and for
  calls that ran on another node (whose `:os_pid` is `nil` too, unless
  their worker died).

  ## Pools and workers

  From the pool's process:

    * `[:snakebridge, :worker, :start]`: a worker completed its handshake.
      Measurements `:system_time`; metadata `:pool`, `:os_pid`, `:python`
      (its version).
    * `[:snakebridge, :worker, :exit]`: a worker process ended. Metadata
      `:pool`, `:os_pid`, `:exit_status` or `:signal` (the other is `nil`),
      `:error` (the `SnakeBridge.Error` its calls got).
    * `[:snakebridge, :worker, :recycle]`: a worker reached `:max_calls` or
      `:max_memory_mb`; it takes no new calls, answers those it has, exits
      and is replaced. Metadata `:pool`, `:os_pid`, `:reason` (`:max_calls`
      or `:max_memory`).
    * `[:snakebridge, :worker, :start_failed]`: a worker could not start
      Python. Metadata `:pool`, `:message`.
    * `[:snakebridge, :circuit_breaker, :state_change]`: the pool's circuit
      breaker changed state. Metadata `:pool`, `:from` and `:to` (`:closed`,
      `:open` or `:half_open`), `:reason` (what opened it, when `:to` is
      `:open`, else `nil`).

  All of them have measurements `%{system_time: System.system_time()}`.

  And from the calling process:

    * `[:snakebridge, :pool, :overloaded]`: a call was refused because the
      pool's queue was full. Measurements `:system_time`; metadata `:pool`,
      `:module`, `:function`.
  """

  alias SnakeBridge.{Error, Native, Object, PythonError}

  # An optional library: called only once it is loaded.
  @compile {:no_warn_undefined, :telemetry}

  @doc """
  Whether call events are emitted now: `:telemetry` is loaded and a handler
  is attached to an event under `[:snakebridge, :call]`.
  """
  @spec calls?() :: boolean()
  def calls? do
    # A BIF, not the code server: `:telemetry` is loaded by then if anyone
    # attached a handler.
    :erlang.function_exported(:telemetry, :list_handlers, 1) and
      :telemetry.list_handlers([:snakebridge, :call]) != []
  end

  @doc false
  # SnakeBridge.call/4 when calls?/0: the same call, timed by its worker.
  @spec call(term(), term(), list(), keyword(), SnakeBridge.Types.timeout_ms()) ::
          SnakeBridge.Types.result()
  def call(target, function, args, opts, timeout) do
    # Checked before the start event: a bad argument raises, and no call
    # starts.
    {pool, target, function, _, _, _, _} =
      request = Native.timed_request!(target, function, args, opts)

    metadata = %{pool: pool, module: module_name(target), function: function}

    start = System.monotonic_time()

    execute(
      [:snakebridge, :call, :start],
      %{system_time: System.system_time(), monotonic_time: start},
      metadata
    )

    {result, timing} =
      case Native.submit(request, timeout) do
        {:ok, ref} -> await(ref, timeout)
        {:error, _} = error -> {error, nil}
      end

    measurements =
      Map.merge(%{duration: System.monotonic_time() - start}, timing_measurements(timing))

    metadata = Map.merge(metadata, %{os_pid: os_pid(result, timing), result: result_kind(result)})

    case result do
      {:ok, _} ->
        execute([:snakebridge, :call, :stop], measurements, metadata)

      {:error, error} ->
        metadata = Map.merge(metadata, %{kind: :error, reason: reason(error), error: error})
        execute([:snakebridge, :call, :exception], measurements, metadata)
    end

    result
  end

  @doc false
  # Called by the pool process with the runtime's worker events.
  def worker_event(pool, _os_pid, {:start_failed, message}) do
    execute([:snakebridge, :worker, :start_failed], now(), %{pool: pool, message: message})
  end

  def worker_event(pool, os_pid, {:started, python}) do
    execute([:snakebridge, :worker, :start], now(), %{pool: pool, os_pid: os_pid, python: python})
  end

  def worker_event(pool, os_pid, {:exited, %Error{details: details} = error}) do
    metadata = %{
      pool: pool,
      os_pid: os_pid,
      exit_status: Map.get(details, :exit_status),
      signal: Map.get(details, :signal),
      error: error
    }

    execute([:snakebridge, :worker, :exit], now(), metadata)
  end

  def worker_event(pool, os_pid, {:recycling, reason}) do
    execute([:snakebridge, :worker, :recycle], now(), %{pool: pool, os_pid: os_pid, reason: reason})
  end

  def worker_event(_pool, _os_pid, _event), do: :ok

  @doc false
  def circuit_change(pool, from, to, reason) do
    metadata = %{pool: pool, from: from, to: to, reason: reason}
    execute([:snakebridge, :circuit_breaker, :state_change], now(), metadata)
  end

  @doc false
  def overloaded(pool, target, function) do
    metadata = %{pool: pool, module: module_name(target), function: function_name(function)}
    execute([:snakebridge, :pool, :overloaded], now(), metadata)
  end

  defp execute(event, measurements, metadata) do
    if :erlang.function_exported(:telemetry, :execute, 3) do
      :telemetry.execute(event, measurements, metadata)
    end

    :ok
  end

  defp now, do: %{system_time: System.system_time()}

  # SnakeBridge.await/2 for a timed call, whose reply may carry the worker's
  # timing: {os_pid, queue µs, python µs}.
  defp await(ref, timeout) do
    case SnakeBridge.await_reply(ref, timeout) do
      {:timed, result, timing} -> {result, timing}
      result -> {result, nil}
    end
  end

  defp timing_measurements({_os_pid, queue_us, python_us}) do
    %{
      queue_time: System.convert_time_unit(queue_us, :microsecond, :native),
      python_time: System.convert_time_unit(python_us, :microsecond, :native)
    }
  end

  defp timing_measurements(nil), do: %{}

  defp os_pid(_result, {os_pid, _, _}), do: os_pid
  defp os_pid({:error, %Error{details: %{os_pid: os_pid}}}, nil), do: os_pid
  defp os_pid(_result, nil), do: nil

  defp result_kind({:ok, _}), do: :ok
  defp result_kind({:error, %PythonError{}}), do: :python_error
  defp result_kind({:error, _}), do: :error

  defp reason(%Error{reason: reason}), do: reason
  defp reason(%PythonError{type: type}), do: type

  defp module_name(%Object{type: type}), do: type
  defp module_name(module) when is_atom(module), do: Atom.to_string(module)
  defp module_name(module), do: module

  defp function_name(nil), do: nil
  defp function_name(function) when is_atom(function), do: Atom.to_string(function)
  defp function_name(function), do: function
end
