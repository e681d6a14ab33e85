defmodule SnakeBridge.InitTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog
  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Pool}

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp check(name), do: SnakeBridge.call("sbinit", "check", [], pool: name, timeout: 30_000)

  describe "per-worker init" do
    test "runs its imports and code in every worker before it takes calls" do
      name = unique(:init_every)
      log = Path.join(System.tmp_dir!(), "#{name}.log")
      on_exit(fn -> File.rm(log) end)

      code = """
      import os, sbinit
      sbinit.mark('from init')
      with open(os.environ['SBINIT_LOG'], 'a') as f:
          f.write(f'{os.getpid()} {sorted(m for m in ("json", "sbinit") if m in __import__("sys").modules)}\\n')
      """

      start_supervised!(
        {Pool,
         pool_opts(name,
           size: 2,
           init: [imports: ["sbinit", :json], code: code],
           env: [{"SBINIT_LOG", log}]
         )}
      )

      stats =
        wait_until(
          fn ->
            (s = SnakeBridge.stats(name)) && Enum.all?(s.workers, &(&1.state == :ready)) && s
          end,
          30_000
        )

      pids = Enum.map(stats.workers, & &1.os_pid)

      # Each worker ran the code once, after its imports, before it was ready.
      lines = log |> File.read!() |> String.split("\n", trim: true) |> Enum.sort()
      assert lines == Enum.sort(for pid <- pids, do: "#{pid} ['json', 'sbinit']")

      assert {:ok, [pid, pid, "from init"]} = check(name)
      assert pid in pids
    end

    test "restarted and recycled workers run it too" do
      name = unique(:init_restart)

      start_supervised!(
        {Pool,
         pool_opts(name, size: 1, max_calls: 2, init: [code: "import sbinit\nsbinit.mark('again')"])}
      )

      pids =
        for _ <- 1..6 do
          assert {:ok, [pid, pid, "again"]} = check(name)
          pid
        end

      # max_calls: 2 recycles the worker after every second call.
      assert length(Enum.uniq(pids)) == 3

      # The seventh call is the fresh worker's first: it stays up to be killed.
      assert {:ok, [os_pid, os_pid, "again"]} = check(name)
      {_, 0} = System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])

      wait_until(fn ->
        match?(%{workers: [%{os_pid: pid}]} when pid not in [nil, os_pid], SnakeBridge.stats(name))
      end)

      assert {:ok, [pid, pid, "again"]} = check(name)
      assert pid != os_pid
    end

    test "a slow import in init: calls with a 1 s timeout succeed once the worker is ready" do
      name = unique(:init_slow)
      log = Path.join(System.tmp_dir!(), "#{name}.log")
      on_exit(fn -> File.rm(log) end)

      start_supervised!(
        {Pool,
         pool_opts(name,
           size: 1,
           init: [imports: ["sbslowimport"]],
           env: [{"SBSLOWIMPORT_LOG", log}]
         )}
      )

      # The import sleeps 2 s, so no worker can be ready within 1 s: the
      # call waits in the queue, times out there, and never runs. The
      # import goes on undisturbed.
      assert {:error, %Error{reason: :timeout}} =
               SnakeBridge.call("sbslowimport", "pid", [], pool: name, timeout: 1_000)

      pid =
        retry_until_ok(fn ->
          SnakeBridge.call("sbslowimport", "pid", [], pool: name, timeout: 1_000)
        end)

      for _ <- 1..5 do
        assert SnakeBridge.call("sbslowimport", "pid", [], pool: name, timeout: 1_000) == {:ok, pid}
      end

      # Imported once, by the init, in the one worker that answered.
      assert File.read!(log) == "#{pid}\n"
      assert %{workers: [%{os_pid: ^pid, restarts: 0}]} = SnakeBridge.stats(name)
    end

    test "a call made while the worker runs its init waits for it within its timeout" do
      name = unique(:init_wait)
      start_supervised!({Pool, pool_opts(name, size: 1, init: [imports: ["sbslowimport"]])})

      assert %{workers: [%{state: :starting}]} = SnakeBridge.stats(name)
      assert {:ok, pid} = SnakeBridge.call("sbslowimport", "pid", [], pool: name, timeout: 30_000)
      assert %{workers: [%{os_pid: ^pid, state: :ready}]} = SnakeBridge.stats(name)
    end
  end

  describe "a failing init" do
    test "is a failed start: calls get :python_unavailable with the traceback" do
      name = unique(:init_raises)

      log =
        capture_log(fn ->
          start_supervised!(
            {Pool,
             pool_opts(name,
               size: 1,
               init: [code: "import json\nraise ValueError('bad config: ' + json.dumps([1]))"]
             )}
          )

          # The call waits while the slot retries, and fails once it gives up.
          assert {:error, %Error{reason: :python_unavailable, message: message}} =
                   SnakeBridge.call("sbhelpers", "identity", [1], pool: name, timeout: 30_000)

          assert message =~ "Python is unavailable for pool :#{name}: "
          assert message =~ "-m snakebridge_worker failed its init (exit status 3):\n"
          assert message =~ "Traceback (most recent call last):\n"
          assert message =~ ~s(File "<snakebridge init>", line 2, in <module>)
          assert message =~ "ValueError: bad config: [1]"

          # Calls made after the slot gave up fail at once.
          assert {:error, %Error{reason: :python_unavailable, message: ^message}} =
                   SnakeBridge.Native.call_async("sbhelpers", "identity", [1], pool: name)

          assert %{workers: [%{state: :unavailable}]} = SnakeBridge.stats(name)
        end)

      assert log =~ "Python worker failed to start: "
      assert log =~ "ValueError: bad config: [1]"
    end

    test "an import that fails names the module" do
      name = unique(:init_import_fails)

      capture_log(fn ->
        start_supervised!(
          {Pool, pool_opts(name, size: 1, init: [imports: ["sbinit", "sb_no_such_module"]])}
        )

        assert {:error, %Error{reason: :python_unavailable, message: message}} =
                 SnakeBridge.call("sbhelpers", "identity", [1], pool: name, timeout: 30_000)

        assert message =~ "ModuleNotFoundError: No module named 'sb_no_such_module'"
      end)
    end

    test "an init that outlasts its :timeout is a failed start" do
      name = unique(:init_hangs)

      capture_log(fn ->
        start_supervised!(
          {Pool,
           pool_opts(name, size: 1, init: [code: "import time\ntime.sleep(60)", timeout: 300])}
        )

        assert {:error, %Error{reason: :python_unavailable, message: message}} =
                 SnakeBridge.call("sbhelpers", "identity", [1], pool: name, timeout: 30_000)

        assert message =~ "-m snakebridge_worker did not start within 300ms"
      end)
    end
  end

  describe "options" do
    test "bad :init options raise ArgumentError naming them" do
      for {init, expected} <- [
            {:yes, "expected :init to be a keyword list"},
            {[import: ["x"]], "invalid :init option: unknown keys [:import]"},
            {[imports: "numpy"], "expected :init's :imports to be a list of module names"},
            {[imports: ["numpy; import os"]],
             ~s(module names like "numpy.linalg", got: "numpy; import os")},
            {[imports: [1]], "expected :init's :imports to be module names (strings), got: 1"},
            {[code: 1], "expected :init's :code to be a string"},
            {[code: String.duplicate("x", 100_001)], "at most 100000 bytes"},
            {[code: "a\0b"], "expected :init's :code to contain no NUL byte"},
            {[timeout: 0], "expected :init's :timeout to be a positive integer, got: 0"}
          ] do
        error =
          assert_raise ArgumentError, fn -> Pool.start_link(pool_opts(:init_bad, init: init)) end

        assert Exception.message(error) =~ expected
      end
    end
  end

  defp retry_until_ok(fun, attempts \\ 60) do
    case fun.() do
      {:ok, value} ->
        value

      {:error, %Error{reason: :timeout}} when attempts > 1 ->
        retry_until_ok(fun, attempts - 1)
    end
  end
end
