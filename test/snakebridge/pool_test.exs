defmodule SnakeBridge.PoolTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Pool}

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  describe "start and stop" do
    test "a named pool answers calls" do
      name = unique(:pool_named)
      start_supervised!({Pool, pool_opts(name)})
      assert SnakeBridge.call("sbhelpers", "identity", [1], pool: name) == {:ok, 1}
    end

    test "stopping a pool answers its queued calls and stops cleanly" do
      name = unique(:pool_stop_queued)
      # A window of 32 calls per worker: fill it so the rest must queue.
      start_supervised!({Pool, pool_opts(name, size: 1)})
      assert SnakeBridge.call("sbhelpers", "identity", [0], pool: name) == {:ok, 0}

      running =
        for _ <- 1..32 do
          {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "sleep", [0.01], pool: name)
          ref
        end

      queued =
        for i <- 1..3 do
          {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "identity", [i], pool: name)
          ref
        end

      assert SnakeBridge.stats(name).queue_length >= 2
      log = capture_log(fn -> assert :ok = stop_supervised({Pool, name}) end)
      refute log =~ "panicked"

      replies = for ref <- running ++ queued, do: SnakeBridge.await(ref, 5_000)

      assert Enum.count(replies, &match?({:ok, _}, &1)) >= 32,
             inspect(Enum.frequencies(replies), limit: 5)

      for {:error, error} <- replies do
        assert %Error{reason: :python_unavailable} = error
        assert error.message =~ "was stopped"
      end
    end

    test "a name already in use" do
      name = unique(:pool_dup)
      start_supervised!({Pool, pool_opts(name)})

      assert {:error, {%Error{reason: :already_started}, _child}} =
               start_supervised(%{Pool.child_spec(pool_opts(name)) | id: :second})

      assert SnakeBridge.call("sbhelpers", "identity", [1], pool: name) == {:ok, 1}
    end

    test "stopping the child terminates its Python processes" do
      name = unique(:pool_stop)
      start_supervised!({Pool, pool_opts(name, size: 2)})
      %{workers: workers} = wait_for_workers(name, 2)
      os_pids = Enum.map(workers, & &1.os_pid)

      for os_pid <- os_pids do
        assert os_process_alive?(os_pid)
        assert File.read!("/proc/#{os_pid}/cmdline") =~ "snakebridge_worker"
      end

      assert :ok = stop_supervised({Pool, name})

      wait_until(fn -> not Enum.any?(os_pids, &os_process_alive?/1) end)

      assert {:error, %Error{reason: :pool_not_found}} =
               SnakeBridge.call("sbhelpers", "identity", [1], pool: name)
    end

    test "the name can be reused after a stop" do
      name = unique(:pool_reuse)
      start_supervised!({Pool, pool_opts(name)})
      assert :ok = stop_supervised({Pool, name})
      start_supervised!({Pool, pool_opts(name)})
      assert SnakeBridge.call("sbhelpers", "identity", [2], pool: name) == {:ok, 2}
    end

    test "unknown pool" do
      assert {:error, %Error{reason: :pool_not_found}} =
               SnakeBridge.call("math", "sqrt", [1.0], pool: :pool_test_no_such_pool)

      assert_raise Error, fn -> SnakeBridge.stats(:pool_test_no_such_pool) end
    end
  end

  describe "an interpreter that cannot start" do
    test "the pool starts and calls return :python_unavailable naming what was tried" do
      name = unique(:pool_nopython)
      start_supervised!({Pool, name: name, size: 1, python: "/nonexistent/python"})

      assert {:error, %Error{reason: :python_unavailable, message: message}} =
               SnakeBridge.call("math", "sqrt", [1.0], pool: name, timeout: 10_000)

      assert message =~ "/nonexistent/python"
      refute_receive {:snakebridge, _, _}, 100
    end

    test "a bare command not found in PATH is kept as given" do
      name = unique(:pool_nopython_bare)
      start_supervised!({Pool, name: name, size: 1, python: "snakebridge-no-such-python"})

      assert {:error, %Error{reason: :python_unavailable, message: message}} =
               SnakeBridge.call("math", "sqrt", [1.0], pool: name, timeout: 10_000)

      assert message =~ "snakebridge-no-such-python"
    end
  end

  describe "options" do
    test "defaults and normalization" do
      config = Pool.config!([])
      assert config.name == :default
      assert config.size == System.schedulers_online()
      assert config.max_queue > 0
      assert config.python_path == []
      assert config.env == []
      assert is_binary(config.python)

      config =
        Pool.config!(
          name: :x,
          python: "relative/python",
          python_path: ["relative/dir"],
          env: [{"A", "1"}, {:B, 2}],
          max_calls: 10,
          max_memory_mb: 100
        )

      assert config.python == Path.expand("relative/python")
      assert config.python_path == [Path.expand("relative/dir")]
      assert config.env == [{"A", "1"}, {"B", "2"}]
      assert config.max_calls == 10
      assert config.max_memory_mb == 100
    end

    test "invalid options raise" do
      assert_raise ArgumentError, fn -> Pool.config!(size: 0) end
      assert_raise ArgumentError, fn -> Pool.config!(name: "default") end
      assert_raise ArgumentError, fn -> Pool.config!(python: 1) end
      assert_raise ArgumentError, fn -> Pool.config!(env: [{"A", nil}]) end
      assert_raise ArgumentError, fn -> Pool.config!(unknown: 1) end
    end

    test ":env reaches the workers" do
      name = unique(:pool_env)
      start_supervised!({Pool, pool_opts(name, size: 1, env: [{"SNAKEBRIDGE_TEST_VAR", "hello"}])})

      assert SnakeBridge.call("os", "getenv", ["SNAKEBRIDGE_TEST_VAR"], pool: name) ==
               {:ok, "hello"}
    end

    test ":python_path reaches sys.path" do
      name = unique(:pool_path)
      start_supervised!({Pool, pool_opts(name, size: 1)})
      {:ok, sys_path} = SnakeBridge.call("sys", "path.copy", [], pool: name)
      assert python_dir() in sys_path
    end

    test ":max_queue bounds the queue with :overloaded" do
      name = unique(:pool_queue)
      start_supervised!({Pool, pool_opts(name, size: 1, max_queue: 2)})
      wait_for_workers(name, 1)

      results =
        for _ <- 1..20 do
          SnakeBridge.Native.call_async("sbhelpers", "sleep", [0.2], pool: name)
        end

      assert Enum.any?(results, &match?({:error, %Error{reason: :overloaded}}, &1))

      for {:ok, ref} <- results, do: SnakeBridge.cancel(ref)
      refute_receive {:snakebridge, _, _}, 500
    end
  end

  describe "stats/1" do
    test "has the documented shape" do
      name = unique(:pool_stats)
      start_supervised!({Pool, pool_opts(name, size: 2)})
      wait_for_workers(name, 2)

      for i <- 1..10, do: {:ok, ^i} = SnakeBridge.call("sbhelpers", "identity", [i], pool: name)
      {:error, _} = SnakeBridge.call("operator", "truediv", [1, 0], pool: name)

      stats = SnakeBridge.stats(name)
      assert is_map(stats)
      assert is_integer(stats.queue_length) and stats.queue_length >= 0
      assert [_, _] = stats.workers

      for worker <- stats.workers do
        assert is_integer(worker.os_pid) and worker.os_pid > 0
        assert is_atom(worker.state)
        assert is_integer(worker.in_flight) and worker.in_flight >= 0
        assert is_integer(worker.calls) and worker.calls >= 0
        assert is_integer(worker.errors) and worker.errors >= 0
        assert is_integer(worker.restarts) and worker.restarts >= 0
        assert is_integer(worker.rss) and worker.rss > 0
      end

      assert Enum.sum(Enum.map(stats.workers, & &1.calls)) >= 11
      assert Enum.sum(Enum.map(stats.workers, & &1.errors)) >= 1
    end

    test "the default pool" do
      assert %{workers: workers, queue_length: _} = SnakeBridge.stats()
      assert length(workers) == System.schedulers_online()
    end
  end

  describe "logging" do
    test "print() output does not break calls and is logged with metadata" do
      name = unique(:pool_print)
      start_supervised!({Pool, pool_opts(name, size: 1)})
      tag = "tag#{System.unique_integer([:positive])}"

      log =
        capture_log([metadata: [:python_worker, :pool]], fn ->
          assert SnakeBridge.call("sbhelpers", "print_and_return", [tag, [1, 2]], pool: name) ==
                   {:ok, [1, 2]}

          assert SnakeBridge.call("builtins", "print", ["plain print #{tag}"], pool: name) ==
                   {:ok, nil}

          # The lines travel pipe -> runtime thread -> pool process -> Logger.
          Process.sleep(500)
        end)

      assert log =~ "stdout says #{tag}"
      assert log =~ "plain print #{tag}"
      assert log =~ ~r/\[warn(ing)?\].*stderr says #{tag}/
      assert log =~ "pool=#{name}"
      assert log =~ "python_worker="
    end
  end
end
