defmodule SnakeBridge.BreakerTest do
  @moduledoc """
  A pool's circuit breaker (`:circuit_breaker`) end to end, with real Python
  workers that crash, hang, raise and fail to start.
  """

  # Each test has its own pool and its own circuit: nothing is shared.
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Native, Pool, PythonError}

  @moduletag timeout: 60_000

  defp start_pool!(breaker, opts \\ []) do
    name = :"breaker_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, pool_opts(name, [size: 1, circuit_breaker: breaker] ++ opts)})
    name
  end

  defp circuit(pool), do: SnakeBridge.stats(pool).circuit

  defp crash(pool) do
    assert {:error, %Error{reason: :worker_exited}} =
             SnakeBridge.call("sbfaults", "exit_now", [1], pool: pool, timeout: 30_000)
  end

  test "crashes open the circuit: calls then fail at once, before reaching a worker" do
    pool = start_pool!(failures: 2, window: 60_000, cooldown: 60_000)
    crash(pool)
    assert %{state: :closed, failures: 1, opened: 0} = circuit(pool)
    crash(pool)

    # call_async answers at submission, so this error never went to a worker.
    assert {:error, %Error{reason: :circuit_open, message: message}} =
             Native.call_async("operator", "add", [1, 2], pool: pool)

    assert message =~ "2 failures"
    assert message =~ "exited"

    assert {:error, %Error{reason: :circuit_open}} =
             SnakeBridge.call("operator", "add", [1, 2], pool: pool)

    assert %{state: :open, failures: 0, opened: 1, retry_in_ms: retry_in_ms} = circuit(pool)
    assert retry_in_ms > 0 and retry_in_ms <= 60_000
  end

  test "Python exceptions and cancelled calls never count" do
    pool = start_pool!(failures: 1, window: 60_000, cooldown: 60_000)

    for _ <- 1..5 do
      assert {:error, %PythonError{type: "ValueError"}} =
               SnakeBridge.call("sbhelpers", "raise_value_error", ["no"], pool: pool)
    end

    {:ok, ref} = Native.call_async("sbfaults", "sleep_forever", [], pool: pool)
    wait_until(fn -> hd(SnakeBridge.stats(pool).workers).in_flight == 1 end)
    :ok = SnakeBridge.cancel(ref)

    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
    assert %{state: :closed, failures: 0, opened: 0} = circuit(pool)
  end

  test "a call that times out in a worker counts" do
    pool = start_pool!(failures: 1, window: 60_000, cooldown: 60_000)
    wait_for_workers(pool, 1)

    {:ok, ref} = Native.call_async("sbfaults", "sleep_forever", [], pool: pool)
    wait_until(fn -> hd(SnakeBridge.stats(pool).workers).in_flight == 1 end)
    assert {:error, %Error{reason: :timeout}} = SnakeBridge.await(ref, 0)

    assert %{state: :open, opened: 1} = circuit(pool)

    assert {:error, %Error{reason: :circuit_open, message: message}} =
             SnakeBridge.call("operator", "add", [1, 2], pool: pool)

    assert message =~ "timed out"
  end

  test "workers that fail to start count" do
    dir = Path.join(System.tmp_dir!(), "sb_breaker_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    # Python imports sitecustomize from sys.path at startup, before the worker.
    File.write!(Path.join(dir, "sitecustomize.py"), "import os\nos._exit(3)\n")
    pool = start_pool!([failures: 1, window: 60_000, cooldown: 60_000], python_path: [dir])

    wait_until(fn -> circuit(pool).state == :open end, 20_000)
    assert %{opened: 1} = circuit(pool)
  end

  test "after the cool-down a trial call that answers closes the circuit" do
    pool = start_pool!(failures: 1, window: 60_000, cooldown: 200)
    crash(pool)
    assert %{state: :open} = circuit(pool)

    wait_until(fn -> circuit(pool).retry_in_ms == 0 end)
    # A Python exception is an answer: the worker is healthy.
    assert {:error, %PythonError{}} =
             SnakeBridge.call("sbhelpers", "raise_value_error", ["trial"], pool: pool)

    assert %{state: :closed, failures: 0, opened: 1, retry_in_ms: 0} = circuit(pool)
    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
  end

  test "a trial call that crashes opens the circuit again" do
    pool = start_pool!(failures: 1, window: 60_000, cooldown: 200)
    crash(pool)
    wait_until(fn -> circuit(pool).retry_in_ms == 0 end)
    crash(pool)

    assert %{state: :open, opened: 2} = circuit(pool)

    assert {:error, %Error{reason: :circuit_open, message: message}} =
             SnakeBridge.call("operator", "add", [1, 2], pool: pool)

    assert message =~ "trial call"
  end

  test "without :circuit_breaker the circuit never opens" do
    pool = start_pool!(false)
    for _ <- 1..3, do: crash(pool)
    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
    assert %{state: :disabled, failures: 0, opened: 0, retry_in_ms: 0} = circuit(pool)
  end

  test "circuit_breaker: true uses the defaults" do
    pool = start_pool!(true)
    assert %{state: :closed, failures: 0, opened: 0, retry_in_ms: 0} = circuit(pool)

    assert %{circuit_breaker: %{failures: 10, window: 10_000, cooldown: 5_000}} =
             Pool.config!(name: :x, circuit_breaker: true)
  end

  test "invalid :circuit_breaker options raise ArgumentError" do
    for bad <- [[failures: 0], [window: -1], [cooldown: :soon], [bogus: 1], "yes", nil] do
      assert_raise ArgumentError, ~r/circuit_breaker/, fn ->
        Pool.config!(name: :x, circuit_breaker: bad)
      end
    end
  end
end
