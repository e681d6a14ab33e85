defmodule SnakeBridge.AsyncTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, PythonError}

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  setup do
    # One worker, so every call below shares its event loop.
    pool = unique(:async)
    start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})
    # Started, and sbobjects imported (asyncio makes that slow), so that a
    # short timeout hits a running coroutine, not a call still being set up.
    wait_for_workers(pool, 1)
    {:ok, _} = SnakeBridge.call("sbobjects", "async_sleep", [0], pool: pool)
    %{pool: pool}
  end

  test "an async def function is awaited", %{pool: pool} do
    assert SnakeBridge.call("sbobjects", "async_sleep", [0.01, "done"], pool: pool) == {:ok, "done"}
  end

  test "async calls on one worker run concurrently", %{pool: pool} do
    {elapsed_us, replies} =
      :timer.tc(fn ->
        refs =
          for i <- 1..100 do
            {:ok, ref} =
              SnakeBridge.Native.call_async("sbobjects", "async_sleep", [0.1, i], pool: pool)

            ref
          end

        Enum.map(refs, &SnakeBridge.await(&1, 10_000))
      end)

    assert replies == Enum.map(1..100, &{:ok, &1})
    # One after another they would take 10 s; together, about 0.1 s.
    assert elapsed_us < 5_000_000, "100 concurrent sleeps of 0.1 s took #{elapsed_us} µs"
  end

  test "sync calls are served while async calls wait", %{pool: pool} do
    {:ok, slow} =
      SnakeBridge.Native.call_async("sbobjects", "async_sleep", [0.5, :slow], pool: pool)

    assert SnakeBridge.call("sbhelpers", "identity", [1], pool: pool) == {:ok, 1}
    refute_received {:snakebridge, ^slow, _}
    assert SnakeBridge.await(slow) == {:ok, "slow"}
  end

  test "an exception in a coroutine is a PythonError", %{pool: pool} do
    assert {:error, %PythonError{type: "RuntimeError", message: "boom"}} =
             SnakeBridge.call("sbobjects", "async_fail", ["boom"], pool: pool)
  end

  test "a timeout cancels the coroutine: its finally runs", %{pool: pool} do
    path = Path.join(System.tmp_dir!(), "sb_async_#{System.unique_integer([:positive])}")

    assert {:error, %Error{reason: :timeout}} =
             SnakeBridge.call("sbobjects", "async_guarded", [path], pool: pool, timeout: 200)

    wait_until(fn -> File.read(path) == {:ok, "cancelled"} end)
    assert SnakeBridge.call("sbhelpers", "identity", [2], pool: pool) == {:ok, 2}
    File.rm(path)
  end

  test "a worker recycled by :max_calls lets its tasks answer first" do
    pool = unique(:async_recycle)
    start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1, max_calls: 3)})
    [%{os_pid: os_pid}] = wait_for_workers(pool, 1).workers
    {:ok, _} = SnakeBridge.call("sbobjects", "async_sleep", [0], pool: pool)

    {:ok, ref} =
      SnakeBridge.Native.call_async("sbobjects", "async_sleep", [0.3, "late"], pool: pool)

    assert SnakeBridge.call("sbhelpers", "identity", [1], pool: pool) == {:ok, 1}
    # The third reply: the worker is recycled while the task still waits.
    assert SnakeBridge.call("sbhelpers", "identity", [2], pool: pool) == {:ok, 2}
    assert SnakeBridge.await(ref) == {:ok, "late"}

    wait_until(fn ->
      match?([%{os_pid: new}] when new not in [nil, os_pid], SnakeBridge.stats(pool).workers)
    end)
  end

  test "a coroutine's result may be an object", %{pool: pool} do
    assert {:ok, %SnakeBridge.Object{type: "list"}} =
             SnakeBridge.call("sbobjects", "async_sleep", [0, [1]], pool: pool, as: :handle)
  end
end
