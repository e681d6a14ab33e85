defmodule SnakeBridge.RestartTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Object, Pool}

  defp start_pool(size) do
    name = :"restart_#{size}_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, pool_opts(name, size: size)}, id: name)
    wait_until(fn -> Enum.all?(SnakeBridge.stats(name).workers, &(&1.state == :ready)) end, 30_000)
    name
  end

  defp os_pids(pool), do: SnakeBridge.stats(pool).workers |> Enum.map(& &1.os_pid) |> Enum.sort()

  # Callers that keep calling (some calls short, some taking a while, some
  # async def) until told to stop, and report every result.
  defp start_callers(pool, count) do
    for i <- 1..count do
      Task.async(fn -> call_until_stopped(pool, i, []) end)
    end
  end

  defp call_until_stopped(pool, i, results) do
    receive do
      :stop -> results
    after
      0 ->
        result =
          case rem(length(results), 3) do
            0 ->
              SnakeBridge.call("operator", "add", [i, 1], pool: pool, timeout: 30_000)

            1 ->
              SnakeBridge.call("sbhelpers", "sleep", [0.02, i + 1], pool: pool, timeout: 30_000)

            2 ->
              SnakeBridge.eval("import asyncio\nawait asyncio.sleep(0.01)\nx + 1", %{"x" => i},
                pool: pool,
                timeout: 30_000
              )
          end

        call_until_stopped(pool, i, [result | results])
    end
  end

  defp stop_callers(tasks) do
    Enum.each(tasks, &send(&1.pid, :stop))
    Task.await_many(tasks, 60_000)
  end

  for size <- [1, 2, 4] do
    @tag :slow
    test "with #{size} workers, every worker is replaced one by one and no call fails" do
      pool = start_pool(unquote(size))
      before = os_pids(pool)
      callers = start_callers(pool, 6)
      Process.sleep(200)

      assert Pool.restart(pool) == :ok

      after_restart = os_pids(pool)
      assert length(after_restart) == unquote(size)
      assert MapSet.disjoint?(MapSet.new(before), MapSet.new(after_restart))
      Process.sleep(200)
      results = stop_callers(callers)

      for {results, i} <- Enum.with_index(results, 1) do
        assert results != []

        assert Enum.all?(results, &(&1 == {:ok, i + 1})),
               inspect(Enum.reject(results, &(&1 == {:ok, i + 1})))
      end

      assert Enum.all?(SnakeBridge.stats(pool).workers, &(&1.restarts == 1))
    end
  end

  @tag :slow
  test "callers that hold objects of the old workers keep calling through it" do
    pool = start_pool(2)

    callers =
      for i <- 1..4 do
        Task.async(fn ->
          # Their plain calls follow this object to its worker, until it drains.
          {:ok, held} = SnakeBridge.call("builtins", "object", [], pool: pool)
          results = call_until_stopped(pool, i, [])
          {held, results}
        end)
      end

    Process.sleep(200)
    assert Pool.restart(pool) == :ok
    Process.sleep(200)

    for {{held, results}, i} <- Enum.with_index(stop_callers(callers), 1) do
      assert Object.os_pid(held) == nil
      assert results != []

      assert Enum.all?(results, &(&1 == {:ok, i + 1})),
             inspect(Enum.reject(results, &(&1 == {:ok, i + 1})))
    end
  end

  test "objects of the old workers are gone; their holders' plain calls go on" do
    pool = start_pool(2)
    {:ok, held} = SnakeBridge.call("builtins", "object", [], pool: pool)
    assert Pool.restart(pool) == :ok
    assert Object.os_pid(held) == nil

    assert {:error, %Error{reason: :stale_handle}} =
             SnakeBridge.call("builtins", "id", [held], pool: pool)

    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
  end

  test "a pool that does not run, and a bad name" do
    assert {:error, %Error{reason: :pool_not_found}} = Pool.restart(:no_such_pool_to_restart)

    assert_raise ArgumentError, ~r/expected the pool name to be an atom/, fn ->
      Pool.restart("default")
    end
  end
end
