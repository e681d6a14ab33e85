defmodule SnakeBridge.TelemetryTest do
  @moduledoc """
  `:telemetry` events, recorded through the stand-in `:telemetry` module in
  test/support, with real Python workers.
  """

  # Handlers are global: other suites' calls would go through them.
  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Native, Pool, PythonError}

  @moduletag timeout: 60_000

  @events [
    [:snakebridge, :call, :start],
    [:snakebridge, :call, :stop],
    [:snakebridge, :call, :exception],
    [:snakebridge, :worker, :start],
    [:snakebridge, :worker, :exit],
    [:snakebridge, :worker, :recycle],
    [:snakebridge, :worker, :start_failed],
    [:snakebridge, :pool, :overloaded],
    [:snakebridge, :circuit_breaker, :state_change]
  ]

  setup do
    test = self()
    id = {__MODULE__, make_ref()}

    :ok =
      :telemetry.attach_many(
        id,
        @events,
        fn event, measurements, metadata, _ ->
          send(test, {:event, event, measurements, metadata})
        end,
        nil
      )

    on_exit(fn -> :telemetry.detach(id) end)
    :ok
  end

  defp start_pool!(opts \\ []) do
    name = :"telemetry_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, pool_opts(name, [size: 1] ++ opts)})
    name
  end

  defp ms(native), do: System.convert_time_unit(native, :native, :microsecond) / 1000

  describe "call events" do
    test "start and stop, with the worker's own timing" do
      pool = start_pool!()
      %{workers: [%{os_pid: os_pid}]} = wait_for_workers(pool, 1)

      assert {:ok, 7} = SnakeBridge.call("sbhelpers", "sleep", [0.05, 7], pool: pool)

      assert_received {:event, [:snakebridge, :call, :start], %{system_time: _, monotonic_time: _},
                       %{pool: ^pool, module: "sbhelpers", function: "sleep"}}

      assert_received {:event, [:snakebridge, :call, :stop], measurements, metadata}

      assert %{pool: ^pool, module: "sbhelpers", function: "sleep", os_pid: ^os_pid, result: :ok} =
               metadata

      assert %{duration: duration, queue_time: queue_time, python_time: python_time} = measurements
      assert ms(python_time) >= 50
      assert queue_time >= 0
      assert duration >= python_time + queue_time
      refute_received {:snakebridge, _, _, _}
    end

    test "queue_time counts the wait behind another call" do
      pool = start_pool!()
      wait_for_workers(pool, 1)
      {:ok, blocker} = Native.call_async("sbfaults", "sleep_forever", [], pool: pool)
      wait_until(fn -> hd(SnakeBridge.stats(pool).workers).in_flight == 1 end)

      waiting = Task.async(fn -> SnakeBridge.call("operator", "add", [1, 2], pool: pool) end)
      Process.sleep(100)
      :ok = SnakeBridge.cancel(blocker)
      assert {:ok, 3} = Task.await(waiting)

      assert_receive {:event, [:snakebridge, :call, :stop], %{queue_time: queue_time},
                      %{pool: ^pool, function: "add"}}

      # Submitted at least 100 ms before the call ahead of it was cancelled.
      assert ms(queue_time) >= 100
    end

    test "a Python exception is an :exception event with the worker's timing" do
      pool = start_pool!()
      %{workers: [%{os_pid: os_pid}]} = wait_for_workers(pool, 1)

      assert {:error, %PythonError{type: "ValueError"} = error} =
               SnakeBridge.call("sbhelpers", "raise_value_error", ["no"], pool: pool)

      assert_received {:event, [:snakebridge, :call, :exception], measurements, metadata}

      assert %{
               os_pid: ^os_pid,
               result: :python_error,
               kind: :error,
               reason: "ValueError",
               error: ^error
             } = metadata

      assert %{duration: _, queue_time: _, python_time: _} = measurements
    end

    test "a call no worker answered: no worker timing, the reason in the metadata" do
      assert {:error, %Error{reason: :pool_not_found}} =
               SnakeBridge.call("operator", "add", [1, 2], pool: :telemetry_no_such_pool)

      assert_received {:event, [:snakebridge, :call, :exception], measurements,
                       %{
                         pool: :telemetry_no_such_pool,
                         result: :error,
                         reason: :pool_not_found,
                         os_pid: nil
                       }}

      assert Map.keys(measurements) == [:duration]
    end

    test "a worker that dies with the call: its os_pid" do
      pool = start_pool!()
      %{workers: [%{os_pid: os_pid}]} = wait_for_workers(pool, 1)

      assert {:error, %Error{reason: :worker_exited}} =
               SnakeBridge.call("sbfaults", "exit_now", [3], pool: pool, timeout: 30_000)

      assert_received {:event, [:snakebridge, :call, :exception], _,
                       %{reason: :worker_exited, os_pid: ^os_pid, result: :error}}
    end

    test "a timeout leaves no message behind" do
      pool = start_pool!()
      wait_for_workers(pool, 1)

      assert {:error, %Error{reason: :timeout}} =
               SnakeBridge.call("sbhelpers", "sleep", [1.0], pool: pool, timeout: 50)

      assert_received {:event, [:snakebridge, :call, :exception], _,
                       %{reason: :timeout, pool: ^pool}}

      # The cancelled call's worker answers the next call as usual.
      assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
      Process.sleep(50)
      refute_received {:snakebridge, _, _, _}
      refute_received {:snakebridge, _, _}
    end

    test "methods name the object's type; eval names the evaluator" do
      pool = start_pool!()
      {:ok, date} = SnakeBridge.call("datetime", "date", [2024, 2, 29], pool: pool, as: :handle)
      assert {:ok, 3} = SnakeBridge.method(date, "weekday")

      assert_received {:event, [:snakebridge, :call, :stop], _,
                       %{pool: ^pool, module: "datetime.date", function: "weekday", result: :ok}}

      assert {:ok, 42} = SnakeBridge.eval("x * 2", %{"x" => 21}, pool: pool)

      assert_received {:event, [:snakebridge, :call, :stop], %{python_time: _},
                       %{module: "snakebridge_worker.evaluate", function: "evaluate"}}
    end

    test "a bad argument raises before the start event" do
      assert_raise ArgumentError, ~r/kwargs/, fn ->
        SnakeBridge.call("operator", "add", [1, 2], kwargs: [{"not an atom", 1}, :bad])
      end

      assert_raise ArgumentError, ~r/args/, fn ->
        SnakeBridge.call("operator", "add", :not_a_list)
      end

      refute_received {:event, [:snakebridge, :call, _], _, _}
    end

    test "with no handler on call events, calls take the untimed path" do
      id = {__MODULE__, :workers_only}
      :ok = :telemetry.attach(id, [:snakebridge, :worker, :start], fn _, _, _, _ -> :ok end, nil)
      on_exit(fn -> :telemetry.detach(id) end)
      assert SnakeBridge.Telemetry.calls?()

      for %{id: handler_id} <- :telemetry.list_handlers([:snakebridge, :call]),
          do: :telemetry.detach(handler_id)

      refute SnakeBridge.Telemetry.calls?()
      assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2])
      refute_received {:event, [:snakebridge, :call, _], _, _}
    end
  end

  describe "pool and worker events" do
    test "a full queue: :overloaded" do
      pool = start_pool!(max_queue: 1)
      wait_for_workers(pool, 1)
      {:ok, blocker} = Native.call_async("sbfaults", "sleep_forever", [], pool: pool)
      on_exit(fn -> SnakeBridge.cancel(blocker) end)

      refused =
        Enum.find(1..200, fn i ->
          match?(
            {:error, %Error{reason: :overloaded}},
            Native.call_async("operator", "add", [i, 1], pool: pool)
          )
        end)

      assert refused

      assert_received {:event, [:snakebridge, :pool, :overloaded], %{system_time: _},
                       %{pool: ^pool, module: "operator", function: "add"}}
    end

    test "start, recycle (max_calls), exit and the replacement's start" do
      pool = start_pool!(max_calls: 2)

      assert_receive {:event, [:snakebridge, :worker, :start], %{system_time: _},
                      %{pool: ^pool, os_pid: first, python: "3." <> _}},
                     10_000

      assert {:ok, 2} = SnakeBridge.call("operator", "add", [1, 1], pool: pool)
      assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)

      assert_receive {:event, [:snakebridge, :worker, :recycle], _,
                      %{pool: ^pool, os_pid: ^first, reason: :max_calls}},
                     5_000

      assert_receive {:event, [:snakebridge, :worker, :exit], _,
                      %{pool: ^pool, os_pid: ^first, exit_status: 0, signal: nil, error: %Error{}}},
                     5_000

      assert_receive {:event, [:snakebridge, :worker, :start], _, %{pool: ^pool, os_pid: second}},
                     10_000

      assert second != first
    end

    test "an interpreter that cannot start: :start_failed" do
      pool = start_pool!(python: "/nonexistent/python")

      assert_receive {:event, [:snakebridge, :worker, :start_failed], _,
                      %{pool: ^pool, message: message}},
                     5_000

      assert message =~ "/nonexistent/python"
    end

    test "circuit breaker: open, half_open, closed" do
      pool = start_pool!(circuit_breaker: [failures: 1, window: 60_000, cooldown: 200])
      wait_for_workers(pool, 1)

      assert {:error, %Error{reason: :worker_exited}} =
               SnakeBridge.call("sbfaults", "exit_now", [1], pool: pool, timeout: 30_000)

      assert_receive {:event, [:snakebridge, :circuit_breaker, :state_change], _,
                      %{pool: ^pool, from: :closed, to: :open, reason: reason}},
                     5_000

      assert reason =~ "exited"
      wait_for_workers(pool, 1)
      Process.sleep(250)
      assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)

      assert_receive {:event, [:snakebridge, :circuit_breaker, :state_change], _,
                      %{pool: ^pool, from: :open, to: :half_open, reason: nil}},
                     5_000

      assert_receive {:event, [:snakebridge, :circuit_breaker, :state_change], _,
                      %{pool: ^pool, from: :half_open, to: :closed}},
                     5_000
    end
  end
end
