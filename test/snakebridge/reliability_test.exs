defmodule SnakeBridge.ReliabilityTest do
  @moduledoc """
  The failure model, proven end to end: real Python workers hurt on purpose
  (`test/support/python/sbfaults.py`), from outside with signals or from
  inside, while real callers wait. Each test says what a caller sees and
  checks that the pool heals and that the BEAM does not notice.
  """

  # Not async: these tests kill processes, time cancellations and keep up to
  # 1,000 callers busy on a 2-core machine. Beside other suites, scheduling
  # noise would turn their timing bounds into flakes.
  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Native, Pool}

  @moduletag timeout: 120_000

  ## Helpers

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp start_pool!(prefix, opts) do
    name = unique(prefix)
    start_supervised!({Pool, pool_opts(name, opts)})
    name
  end

  # The os pids of the pool's workers, in slot order, when all of them are
  # ready; nil otherwise.
  defp ready_now(pool) do
    workers = SnakeBridge.stats(pool).workers

    if Enum.all?(workers, &(&1.state == :ready and is_integer(&1.os_pid))) do
      Enum.map(workers, & &1.os_pid)
    end
  end

  defp ready_pids(pool, timeout \\ 10_000), do: wait_until(fn -> ready_now(pool) end, timeout)

  defp restarts(pool), do: SnakeBridge.stats(pool).workers |> Enum.map(& &1.restarts) |> Enum.sum()

  defp kill!(os_pid, signal) do
    {_, 0} = System.cmd("kill", ["-#{signal}", Integer.to_string(os_pid)], stderr_to_stdout: true)
    :ok
  end

  # {state, parent pid} of an OS process, or nil when there is none.
  defp proc_status(os_pid) do
    case File.read("/proc/#{os_pid}/stat") do
      {:ok, stat} ->
        # The fields after the command name, which ends with the last ")".
        [state, ppid | _] = stat |> String.split(")") |> List.last() |> String.split()
        {state, String.to_integer(ppid)}

      {:error, _} ->
        nil
    end
  end

  # Exited and reaped by this BEAM: no process, and no zombie of ours. (A
  # zombie whose parent is someone else is not ours to reap; a pid reused by
  # an unrelated process is not ours either.)
  defp reaped?(os_pid) do
    case proc_status(os_pid) do
      nil -> true
      {_state, ppid} -> ppid != String.to_integer(System.pid()) and not worker?(os_pid)
    end
  end

  defp worker?(os_pid), do: cmdline(os_pid) =~ "snakebridge_worker"
  defp beam?(os_pid), do: cmdline(os_pid) =~ "beam"

  defp cmdline(os_pid) do
    case File.read("/proc/#{os_pid}/cmdline") do
      {:ok, cmdline} -> cmdline
      {:error, _} -> ""
    end
  end

  # The {:snakebridge, _, _} messages in the mailbox, without waiting.
  defp snakebridge_messages(acc \\ []) do
    receive do
      {:snakebridge, _, _} = message -> snakebridge_messages([message | acc])
    after
      0 -> Enum.reverse(acc)
    end
  end

  defp tmp_dir!(label) do
    dir = Path.join(System.tmp_dir!(), "sb_#{label}_#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf(dir) end)
    dir
  end

  defp lines(path) do
    case File.read(path) do
      {:ok, text} -> String.split(text, "\n", trim: true)
      {:error, :enoent} -> []
    end
  end

  defp elapsed_ms(since), do: System.monotonic_time(:millisecond) - since

  ## 1. A worker dies under load

  describe "a worker dies while 1,000 callers are in flight" do
    @describetag :slow

    @callers 1_000
    # The caller whose call crashes the worker from inside.
    @crash_at 300

    # Each round: how the worker dies, and the exit the callers must be told.
    @rounds [
      {"SIGKILL from outside (worker 0)", {:outside, 0, 9}, %{signal: 9}},
      {"os._exit(3) from inside", {:inside, {"sbfaults", "exit_now", [3]}}, %{exit_status: 3}},
      {"SIGSEGV via ctypes", {:inside, {"sbfaults", "segfault", []}}, %{signal: 11}},
      {"SIGKILL from inside", {:inside, {"sbfaults", "kill_self", [9]}}, %{signal: 9}},
      {"SIGKILL from outside (worker 2)", {:outside, 2, 9}, %{signal: 9}}
    ]

    test "every caller gets exactly one reply and the pool returns to full size, every time" do
      pool = start_pool!(:storm, size: 3)

      for {label, fault, exit} <- @rounds, do: storm_round(pool, label, fault, exit)

      refute_received {:snakebridge, _, _}
    end

    defp storm_round(pool, label, fault, exit) do
      before = ready_pids(pool)
      restarts_before = restarts(pool)
      parent = self()

      tasks =
        for i <- 1..@callers do
          {module, function, args} = storm_request(i, fault)

          Task.async(fn ->
            result =
              if rem(i, 2) == 0 do
                # The mailbox-level form: the one message, and nothing else.
                {:ok, ref} = Native.call_async(module, function, args, pool: pool)

                receive do
                  {:snakebridge, ^ref, result} -> result
                after
                  30_000 -> :no_reply
                end
              else
                SnakeBridge.call(module, function, args, pool: pool, timeout: 30_000)
              end

            send(parent, {:replied, i, result})

            # Stay alive until the pool has healed: a second reply, or a late
            # one for a failed call, would land here by then.
            receive do
              :finish -> snakebridge_messages()
            end
          end)
        end

      victim =
        case fault do
          {:outside, index, signal} ->
            victim = Enum.at(before, index)

            # Kill it while it has calls written to it.
            wait_until(
              fn ->
                Enum.any?(
                  SnakeBridge.stats(pool).workers,
                  &(&1.os_pid == victim and &1.in_flight >= 2)
                )
              end,
              10_000,
              1
            )

            kill!(victim, signal)
            victim

          {:inside, _} ->
            nil
        end

      results = collect_replies(@callers, System.monotonic_time(:millisecond) + 40_000, %{})
      missing = Enum.reject(1..@callers, &Map.has_key?(results, &1))

      assert missing == [],
             "#{label}: #{length(missing)} callers got no reply (#{inspect(Enum.take(missing, 10))})"

      victim =
        case fault do
          {:inside, _} ->
            assert {:error, %Error{reason: :worker_exited, details: %{os_pid: victim}}} =
                     results[@crash_at],
                   "#{label}: the crashing call got #{inspect(results[@crash_at])}"

            victim

          _ ->
            victim
        end

      assert victim in before

      failed =
        for {i, result} <- results, reduce: 0 do
          failed ->
            case result do
              {:ok, [^i, os_pid]} when is_integer(os_pid) ->
                failed

              {:error, %Error{reason: :worker_exited, message: message, details: details}} ->
                # Only calls written to the dead worker fail, each told which
                # process died and how.
                assert Map.take(details, [:os_pid, :signal, :exit_status]) ==
                         Map.put(exit, :os_pid, victim),
                       "#{label}: caller #{i} got #{inspect(details)}"

                assert message =~ Integer.to_string(victim)
                failed + 1

              other ->
                flunk("#{label}: caller #{i} got #{inspect(other)}")
            end
        end

      assert failed >= 1

      # The calls still queued ran on the other workers: only the dead
      # worker's in-flight window failed, never the bulk of the 1,000.
      assert failed < 100, "#{label}: #{failed} callers failed"

      # Back to full size: the dead worker alone was replaced.
      now = wait_until(fn -> (pids = ready_now(pool)) && victim not in pids && pids end, 15_000)
      assert length(now) == length(before)
      assert [new] = now -- before
      assert Enum.sort(now -- [new]) == Enum.sort(before -- [victim])
      assert reaped?(victim), "#{label}: worker #{victim} was not reaped"
      assert restarts(pool) == restarts_before + 1

      # Exactly one reply each: nothing more arrived while the pool healed.
      for task <- tasks, do: send(task.pid, :finish)
      strays = tasks |> Task.await_many(10_000) |> List.flatten()
      assert strays == [], "#{label}: stray replies #{inspect(Enum.take(strays, 5))}"

      assert {:ok, [0, pid]} =
               SnakeBridge.call("sbfaults", "tagged", [0], pool: pool, timeout: 5_000)

      assert pid in now
    end

    defp storm_request(@crash_at, {:inside, mfa}), do: mfa
    # A quarter sleep a little so that the workers hold calls in flight.
    defp storm_request(i, _fault) when rem(i, 4) == 0, do: {"sbfaults", "tagged", [i, 0.004]}
    defp storm_request(i, _fault), do: {"sbfaults", "tagged", [i]}

    defp collect_replies(0, _deadline, acc), do: acc

    defp collect_replies(left, deadline, acc) do
      remaining = max(deadline - System.monotonic_time(:millisecond), 0)

      receive do
        {:replied, i, result} ->
          refute Map.has_key?(acc, i), "caller #{i} replied twice"
          collect_replies(left - 1, deadline, Map.put(acc, i, result))
      after
        remaining -> acc
      end
    end
  end

  ## 2. Cancellation stops Python

  describe "cancellation" do
    test "a timeout interrupts the Python call and the same worker serves the next one" do
      pool = start_pool!(:cancel, size: 1)
      [os_pid] = ready_pids(pool)

      {us, result} =
        :timer.tc(fn ->
          SnakeBridge.call("sbfaults", "sleep_forever", [], pool: pool, timeout: 100)
        end)

      assert {:error, %Error{reason: :timeout}} = result
      assert us < 500_000, "the timeout took #{div(us, 1000)} ms"

      # Had time.sleep(1000) gone on, this call would wait behind it.
      {us, result} =
        :timer.tc(fn -> SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 2_000) end)

      assert result == {:ok, os_pid}
      assert us < 500_000, "the next call took #{div(us, 1000)} ms"

      # SnakeBridge.cancel/1 does the same for an asynchronous call.
      {:ok, ref} = Native.call_async("sbfaults", "sleep_forever", [], pool: pool)
      Process.sleep(100)
      assert :ok = SnakeBridge.cancel(ref)

      {us, result} =
        :timer.tc(fn -> SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 2_000) end)

      assert result == {:ok, os_pid}
      assert us < 500_000

      assert [%{os_pid: ^os_pid, state: :ready, restarts: 0}] = SnakeBridge.stats(pool).workers
      refute_receive {:snakebridge, _, _}, 200
    end

    test "a call that swallows the interruption gets its worker replaced, and only it fails" do
      pool = start_pool!(:stubborn, size: 2, cancel_grace: 300)
      before = ready_pids(pool)
      parent = self()

      stuck =
        Task.async(fn ->
          result =
            :timer.tc(fn ->
              SnakeBridge.call("sbfaults", "stubborn_sleep", [], pool: pool, timeout: 100)
            end)

          send(parent, {:stuck, result})

          receive do
            :finish -> snakebridge_messages()
          end
        end)

      assert_receive {:stuck, {us, {:error, %Error{reason: :timeout}}}}, 2_000
      assert us < 500_000
      timed_out_at = System.monotonic_time(:millisecond)

      # The cancelled call is still running (it ignored the interruption).
      assert [victim] =
               for(%{in_flight: 1, os_pid: pid} <- SnakeBridge.stats(pool).workers, do: pid)

      [other] = before -- [victim]

      # Meanwhile calls keep succeeding, never on the stuck worker, until it
      # has been killed and replaced.
      served =
        Stream.iterate(1, &(&1 + 1))
        |> Enum.reduce_while([], fn i, served ->
          assert {:ok, [^i, pid]} =
                   SnakeBridge.call("sbfaults", "tagged", [i], pool: pool, timeout: 2_000)

          assert pid != victim

          cond do
            (pids = ready_now(pool)) && victim not in pids -> {:halt, [pid | served]}
            elapsed_ms(timed_out_at) > 5_000 -> flunk("the stuck worker #{victim} was not replaced")
            true -> {:cont, [pid | served]}
          end
        end)

      assert other in served
      # cancel_grace (300 ms) plus the watchdog's tick, not seconds.
      assert elapsed_ms(timed_out_at) < 2_000

      now = ready_pids(pool)
      assert other in now and victim not in now
      assert reaped?(victim)

      # The timed-out caller heard nothing more when its worker was killed.
      send(stuck.pid, :finish)
      assert Task.await(stuck) == []
    end
  end

  ## 3. A Python that cannot start

  describe "an interpreter that exits at start" do
    @describetag :slow

    test "answers :python_unavailable saying what was tried, backs off, and recovers" do
      dir = tmp_dir!("crashloop")
      counter = Path.join(dir, "starts")
      ok = Path.join(dir, "ok")
      wrapper = Path.join(dir, "python")

      {real_python, 0} =
        System.cmd(Pool.config!([]).python, ["-c", "import sys; print(sys.executable)"])

      # Stands in for python: it logs each start (time, pid), and fails until
      # `ok` exists.
      File.write!(wrapper, """
      #!/bin/sh
      echo "$(date +%s.%N) $$" >> '#{counter}'
      if [ -e '#{ok}' ]; then exec '#{String.trim(real_python)}' "$@"; fi
      echo "sbfaults wrapper: refusing to start python" >&2
      exit 1
      """)

      File.chmod!(wrapper, 0o755)

      {pool, message} =
        assert_unavailable_without_storm(counter, python: wrapper, python_path: [python_dir()])

      assert message =~ wrapper
      assert message =~ "refusing to start python"

      # The slots keep retrying: once Python can start, the pool recovers
      # within the backoff cap (5 s, plus jitter and a start), without being
      # restarted.
      File.write!(ok, "")
      fixed = System.monotonic_time(:millisecond)

      wait_until(
        fn ->
          match?({:ok, _}, SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 2_000))
        end,
        10_000,
        50
      )

      ready_pids(pool, max(10_000 - elapsed_ms(fixed), 100))
      assert elapsed_ms(fixed) <= 10_000
      assert {:ok, [1, _]} = SnakeBridge.call("sbfaults", "tagged", [1], pool: pool)
    end

    test "a python_path module that exits at import (sitecustomize)" do
      dir = tmp_dir!("sitecustomize")
      counter = Path.join(dir, "starts")

      File.write!(Path.join(dir, "sitecustomize.py"), """
      import os
      import sys
      import time

      with open(#{inspect(counter)}, "a") as f:
          f.write(f"{time.time():.6f} {os.getpid()}\\n")
      print("sitecustomize refuses to let python start", file=sys.stderr)
      sys.exit(1)
      """)

      {_pool, message} = assert_unavailable_without_storm(counter, python_path: [dir, python_dir()])
      assert message =~ "sitecustomize refuses to let python start"
    end

    # Starts a pool of 2 whose workers cannot start (each start appends a
    # line "<unix time> <pid>" to `counter`) and checks what a caller sees and
    # that the slots back off instead of storming. Returns the pool and the
    # error message.
    defp assert_unavailable_without_storm(counter, opts) do
      started = System.os_time(:microsecond) / 1_000_000
      pool = start_pool!(:cannot_start, Keyword.put(opts, :size, 2))

      # A call waits while the slots retry, then is told Python is
      # unavailable, and what was tried. (Slow starts on a loaded machine
      # delay that, hence the long timeout.)
      result = SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 15_000)

      assert {:error, %Error{reason: :python_unavailable, message: message}} = result,
             start_failure_report(result, counter, pool)

      assert message =~ "snakebridge_worker"
      assert message =~ "exit status 1"

      # A pool is unavailable only once every slot has failed 3 starts in a
      # row: they did retry.
      assert length(lines(counter)) >= 2 * 3, start_failure_report(result, counter, pool)

      for worker <- SnakeBridge.stats(pool).workers do
        assert worker.state in [:unavailable, :restarting, :starting]
      end

      # No restart storm: each slot backs off exponentially (100 ms doubling,
      # capped at 5 s), so it starts Python about 5 times in the first 2 s; a
      # tight loop would have started it hundreds of times.
      Process.sleep(
        max(round((started + 2.5 - System.os_time(:microsecond) / 1_000_000) * 1000), 0)
      )

      early =
        counter
        |> lines()
        |> Enum.count(fn line ->
          [time, _pid] = String.split(line)
          String.to_float(time) < started + 2.0
        end)

      assert early <= 2 * 6, "#{early} starts in 2 s: #{inspect(lines(counter))}"
      {pool, message}
    end

    # What the starts looked like, for a failure message.
    defp start_failure_report(result, counter, pool) do
      "got #{inspect(result)} at #{System.os_time(:millisecond) / 1000}; " <>
        "starts (time, pid): #{inspect(lines(counter))}; stats: #{inspect(SnakeBridge.stats(pool))}"
    end

    test "an interpreter that is not python at all (/bin/false)" do
      pool = start_pool!(:binfalse, size: 1, python: "/bin/false")

      assert {:error, %Error{reason: :python_unavailable, message: message}} =
               SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 5_000)

      assert message =~ "/bin/false"
      refute_receive {:snakebridge, _, _}, 100
    end
  end

  ## 4. No orphans

  describe "the BEAM is killed with SIGKILL" do
    @describetag :slow

    test "every Python worker of it exits within 2 seconds" do
      dir = tmp_dir!("orphans")
      out = Path.join(dir, "pids")
      elixir = System.find_executable("elixir") || flunk("elixir is not on PATH")

      # The external BEAM loads this build's compiled code (no Mix, so nothing
      # is compiled under the running suite), starts the application (whose
      # default pool runs too) and a pool of its own, keeps one worker busy in
      # a long call (its main thread is not reading the socket), and writes
      # its own pid and its workers' pids. Workers must go however they learn
      # of the death: PR_SET_PDEATHSIG, or EOF on their socket.
      script = """
      {:ok, _} = Application.ensure_all_started(:snakebridge)
      {:ok, _} = SnakeBridge.Pool.start_link(name: :orphans, size: 2)

      pids = fn pool ->
        for %{os_pid: pid, state: :ready} <- SnakeBridge.stats(pool).workers, do: pid
      end

      wait = fn wait ->
        if length(pids.(:orphans)) == 2 and length(pids.(:default)) == System.schedulers_online() do
          :ok
        else
          Process.sleep(20)
          wait.(wait)
        end
      end

      wait.(wait)
      {:ok, _ref} = SnakeBridge.Native.call_async("time", "sleep", [60], pool: :orphans)
      Process.sleep(200)
      all = [System.pid() | Enum.map(pids.(:orphans) ++ pids.(:default), &Integer.to_string/1)]
      File.write!(#{inspect(out <> ".tmp")}, Enum.join(all, "\\n"))
      File.rename!(#{inspect(out <> ".tmp")}, #{inspect(out)})
      Process.sleep(:infinity)
      """

      port =
        Port.open({:spawn_executable, elixir}, [
          :binary,
          :exit_status,
          :stderr_to_stdout,
          args: ["-pa", Application.app_dir(:snakebridge, "ebin"), "-e", script]
        ])

      on_exit(fn ->
        # Should the test fail half-way, leave nothing of it running.
        for pid <- lines(out), pid = String.to_integer(pid), worker?(pid) or beam?(pid) do
          System.cmd("kill", ["-9", Integer.to_string(pid)], stderr_to_stdout: true)
        end
      end)

      wait_until(fn -> File.exists?(out) end, 30_000, 50)
      [beam | workers] = out |> lines() |> Enum.map(&String.to_integer/1)
      assert length(workers) == 2 + System.schedulers_online()

      for worker <- workers do
        assert worker?(worker)
        assert {_state, ^beam} = proc_status(worker)
      end

      killed_at = System.monotonic_time(:millisecond)
      kill!(beam, 9)
      assert_receive {^port, {:exit_status, 137}}, 5_000

      wait_until(fn -> Enum.all?(workers, &reaped?/1) end, 2_000, 10)
      survivors = Enum.reject(workers, &reaped?/1)
      assert survivors == []
      assert elapsed_ms(killed_at) <= 2_000
    end
  end

  ## 5. A worker that breaks the protocol

  describe "a rogue worker writes bad bytes to its socket" do
    for kind <- ~w(garbage text truncated oversize) do
      test "#{kind}: its call fails with :worker_exited, the worker is replaced" do
        pool = start_pool!(:rogue, size: 1)
        [os_pid] = ready_pids(pool)

        assert {:error, %Error{reason: :worker_exited, message: message, details: details}} =
                 SnakeBridge.call("sbfaults", "rogue_write", [unquote(kind)],
                   pool: pool,
                   timeout: 5_000
                 )

        assert details.os_pid == os_pid
        assert message =~ "Python worker #{os_pid} was replaced"
        assert message =~ ~r/worker sent a bad (frame|message)/

        # The BEAM is fine and so is the pool: a new worker answers.
        assert {:ok, new_pid} = SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 5_000)
        assert new_pid != os_pid
        assert [^new_pid] = ready_pids(pool)
        assert reaped?(os_pid)
        refute_receive {:snakebridge, _, _}, 100
      end
    end
  end

  ## 6. Backpressure and callers that die

  describe "backpressure" do
    test "a full queue answers :overloaded at once" do
      pool = start_pool!(:overload, size: 1, max_queue: 5)
      [os_pid] = ready_pids(pool)

      {:ok, blocker} = Native.call_async("sbfaults", "sleep_forever", [], pool: pool)

      {us, submitted} =
        :timer.tc(fn ->
          for i <- 1..200, do: Native.call_async("sbfaults", "tagged", [i], pool: pool)
        end)

      {accepted, refused} = Enum.split_with(submitted, &match?({:ok, _}, &1))
      assert refused != []
      assert Enum.all?(refused, &match?({:error, %Error{reason: :overloaded}}, &1))
      # The worker's window took some, the queue the rest up to max_queue
      # (which a writer taking a call just as a caller queues one may exceed
      # by that call).
      assert length(accepted) < 200
      assert SnakeBridge.stats(pool).queue_length in 5..6
      assert us < 200_000, "200 submissions took #{div(us, 1000)} ms"

      {us, result} =
        :timer.tc(fn -> SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 5_000) end)

      assert {:error, %Error{reason: :overloaded, message: message}} = result
      assert message =~ "max_queue"
      assert us < 50_000, ":overloaded took #{div(us, 1000)} ms"

      # Once the waiting calls are cancelled the pool takes calls again (the
      # queue frees their places as the writer sweeps them out, not at once).
      for {:ok, ref} <- [{:ok, blocker} | accepted], do: SnakeBridge.cancel(ref)

      wait_until(
        fn ->
          SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 5_000) == {:ok, os_pid}
        end,
        3_000
      )

      refute_receive {:snakebridge, _, _}, 200
    end

    test "a call that timed out while waiting for a worker never runs" do
      pool = start_pool!(:late, size: 1)
      ready_pids(pool)
      file = Path.join(tmp_dir!("late"), "ran")

      {:ok, blocker} = Native.call_async("sbhelpers", "sleep", [0.5, "blocker"], pool: pool)

      assert {:error, %Error{reason: :timeout}} =
               SnakeBridge.call("sbfaults", "append_line", [file, "late"], pool: pool, timeout: 100)

      assert SnakeBridge.await(blocker, 5_000) == {:ok, "blocker"}

      assert {:ok, "after"} =
               SnakeBridge.call("sbfaults", "append_line", [file, "after"], pool: pool)

      assert lines(file) == ["after"]
    end
  end

  describe "a caller that dies" do
    test "its calls still queued in the pool are dropped" do
      pool = start_pool!(:dead_queued, size: 1)
      ready_pids(pool)
      file = Path.join(tmp_dir!("dead_queued"), "ran")
      parent = self()

      # Fill the worker's window, so that later calls wait in the pool's queue.
      {:ok, blocker} = Native.call_async("sbhelpers", "sleep", [0.5, "blocker"], pool: pool)

      fillers =
        for i <- 1..40 do
          {:ok, ref} =
            Native.call_async("sbfaults", "append_line", [file, "filler #{i}"], pool: pool)

          ref
        end

      victim =
        spawn(fn ->
          for i <- 1..20 do
            {:ok, _} = Native.call_async("sbfaults", "append_line", [file, "dead #{i}"], pool: pool)
          end

          send(parent, :queued)
          Process.sleep(:infinity)
        end)

      assert_receive :queued, 5_000
      assert SnakeBridge.stats(pool).queue_length >= 20
      Process.exit(victim, :kill)

      assert SnakeBridge.await(blocker, 5_000) == {:ok, "blocker"}
      for ref <- fillers, do: assert({:ok, _} = SnakeBridge.await(ref, 5_000))

      # Calls run in order: had the dead caller's run, they would be in the
      # file before this one.
      assert {:ok, "after"} =
               SnakeBridge.call("sbfaults", "append_line", [file, "after"], pool: pool)

      ran = lines(file)
      assert Enum.count(ran, &String.starts_with?(&1, "filler ")) == 40
      assert List.last(ran) == "after"
      assert Enum.filter(ran, &String.starts_with?(&1, "dead ")) == []
    end

    test "its calls already sent to the worker but not started never run" do
      pool = start_pool!(:dead_sent, size: 1)
      ready_pids(pool)
      file = Path.join(tmp_dir!("dead_sent"), "ran")
      parent = self()

      # Long enough for the runtime's periodic scan for dead callers (1 s).
      {:ok, blocker} = Native.call_async("sbhelpers", "sleep", [2.0, "blocker"], pool: pool)

      victim =
        spawn(fn ->
          for i <- 1..5 do
            {:ok, _} = Native.call_async("sbfaults", "append_line", [file, "dead #{i}"], pool: pool)
          end

          send(parent, :sent)
          Process.sleep(:infinity)
        end)

      assert_receive :sent, 5_000
      # In the worker's window, not the pool's queue.
      assert %{queue_length: 0, workers: [%{in_flight: 6}]} = SnakeBridge.stats(pool)
      Process.exit(victim, :kill)

      assert SnakeBridge.await(blocker, 5_000) == {:ok, "blocker"}

      assert {:ok, "after"} =
               SnakeBridge.call("sbfaults", "append_line", [file, "after"], pool: pool)

      assert lines(file) == ["after"]
    end

    test "its running call is interrupted and the worker serves the next call" do
      pool = start_pool!(:dead_running, size: 1)
      [os_pid] = ready_pids(pool)
      parent = self()

      victim =
        spawn(fn ->
          {:ok, _} = Native.call_async("sbfaults", "sleep_forever", [], pool: pool)
          send(parent, :running)
          Process.sleep(:infinity)
        end)

      assert_receive :running, 5_000
      wait_until(fn -> match?(%{workers: [%{in_flight: 1}]}, SnakeBridge.stats(pool)) end)
      Process.exit(victim, :kill)

      # Without the cancellation this call would wait behind time.sleep(1000).
      {us, result} =
        :timer.tc(fn -> SnakeBridge.call("sbfaults", "pid", [], pool: pool, timeout: 5_000) end)

      assert result == {:ok, os_pid}
      # The runtime scans for dead callers every second.
      assert us < 2_500_000, "the dead caller's call ran on for #{div(us, 1000)} ms"
      assert [%{os_pid: ^os_pid, restarts: 0}] = SnakeBridge.stats(pool).workers
    end
  end

  ## 7. Recycling and health checks

  describe "recycling" do
    test "max_calls: a worker is replaced after that many calls, and no call fails" do
      pool = start_pool!(:max_calls, size: 1, max_calls: 5)
      [first] = ready_pids(pool)

      served =
        for i <- 1..20 do
          assert {:ok, [^i, os_pid]} =
                   SnakeBridge.call("sbfaults", "tagged", [i], pool: pool, timeout: 5_000)

          os_pid
        end

      # One caller, one call at a time: each worker served exactly max_calls.
      by_worker = served |> Enum.chunk_by(& &1) |> Enum.map(&length/1)
      assert by_worker == [5, 5, 5, 5]
      assert served |> Enum.uniq() |> length() == 4

      wait_until(fn -> restarts(pool) >= 3 end)
      [now] = ready_pids(pool)
      assert now != first
      assert reaped?(first)
    end

    test "max_calls under concurrent load: recycling drains, it never fails a call" do
      pool = start_pool!(:max_calls_load, size: 2, max_calls: 5)
      ready_pids(pool)

      results =
        1..300
        |> Task.async_stream(
          fn i -> SnakeBridge.call("sbfaults", "tagged", [i], pool: pool, timeout: 20_000) end,
          max_concurrency: 50,
          timeout: 30_000
        )
        |> Enum.map(fn {:ok, result} -> result end)

      for {result, i} <- Enum.with_index(results, 1), do: assert({:ok, [^i, _]} = result)
      assert restarts(pool) >= 2
    end

    test "max_memory_mb: a worker that grows past it is replaced" do
      pool = start_pool!(:max_memory, size: 1, max_memory_mb: 64)
      [first] = ready_pids(pool)

      assert {:ok, held} = SnakeBridge.call("sbfaults", "hold_memory", [100], pool: pool)
      assert held == 100 * 1024 * 1024

      # RSS is checked every second; the worker is drained, then replaced.
      [now] = wait_until(fn -> (pids = ready_now(pool)) && first not in pids && pids end, 5_000)
      assert SnakeBridge.call("sbfaults", "pid", [], pool: pool) == {:ok, now}
      assert [%{rss: rss}] = SnakeBridge.stats(pool).workers
      assert rss < 64 * 1024 * 1024
      assert reaped?(first)
    end
  end

  describe "health checks" do
    test "a worker that stops answering pings (SIGSTOP) is killed and replaced" do
      pool = start_pool!(:health, size: 1, health_check_interval: 100, health_check_timeout: 300)
      [frozen] = ready_pids(pool)

      on_exit(fn ->
        # Should the test fail before the pool kills it, do not leave it frozen.
        if worker?(frozen),
          do: System.cmd("kill", ["-9", Integer.to_string(frozen)], stderr_to_stdout: true)
      end)

      stopped_at = System.monotonic_time(:millisecond)
      kill!(frozen, "STOP")

      [now] = wait_until(fn -> (pids = ready_now(pool)) && frozen not in pids && pids end, 5_000)
      # Idle 100 ms, then 300 ms without a pong, plus the watchdog's tick.
      assert elapsed_ms(stopped_at) < 2_000
      assert reaped?(frozen)
      assert SnakeBridge.call("sbfaults", "pid", [], pool: pool) == {:ok, now}
    end
  end

  ## 8. Graceful shutdown

  describe "stopping a pool" do
    test "waits for the call in flight, then reaps its workers" do
      pool = unique(:graceful)
      start_supervised!({Pool, pool_opts(pool, size: 2)})
      workers = ready_pids(pool)

      task =
        Task.async(fn ->
          SnakeBridge.call("sbhelpers", "sleep", [0.3, "finished"], pool: pool, timeout: 5_000)
        end)

      wait_until(
        fn -> Enum.any?(SnakeBridge.stats(pool).workers, &(&1.in_flight == 1)) end,
        5_000,
        5
      )

      {us, :ok} = :timer.tc(fn -> stop_supervised({Pool, pool}) end)
      assert Task.await(task, 1_000) == {:ok, "finished"}
      # Bounded: it waited for the call, not for the 10 s shutdown timeout.
      assert us < 2_000_000

      # Every worker exited and was reaped before stop returned: no process,
      # no zombie.
      for os_pid <- workers, do: refute(File.exists?("/proc/#{os_pid}"), "worker #{os_pid} is left")

      assert_raise Error, fn -> SnakeBridge.stats(pool) end

      assert {:error, %Error{reason: :pool_not_found}} =
               SnakeBridge.call("sbfaults", "pid", [], pool: pool)
    end
  end
end
