# Soak: a long run of mixed calls that shows whether memory grows.
#
#     make soak                        # 1,000,000 calls
#     SOAK_CALLS=200000 mix run soak/soak.exs
#
# 32 callers share a 2-worker pool and make SOAK_CALLS calls in all: small
# integers, 1 KiB strings, 100-key maps and 64 KiB binaries that come back
# unchanged (each is checked), and about 5% that raise ZeroDivisionError in
# Python. After a warm-up it prints the BEAM's resident memory (VmRSS) and
# :erlang.memory(:total), and each worker's RSS from SnakeBridge.stats/1;
# again at the end, with the growth, the throughput and the error counts.
#
# Exits 1 when a call fails other than as expected, a result is wrong, a
# worker restarted, or either side grew by more than SOAK_MAX_GROWTH_MB
# (default 5).
#
# Environment: SOAK_CALLS (default 1_000_000), SOAK_CALLERS (32),
# SOAK_WORKERS (2), SOAK_WARMUP (20_000), SOAK_MAX_GROWTH_MB (5).

Code.require_file("support.ex", __DIR__)

defmodule SnakeBridge.Soak do
  import SnakeBridge.SoakSupport

  @pool :soak

  def main do
    calls = env_int("SOAK_CALLS", 1_000_000)
    callers = env_int("SOAK_CALLERS", 32)
    workers = env_int("SOAK_WORKERS", 2)
    warmup = env_int("SOAK_WARMUP", 20_000)
    max_growth = env_int("SOAK_MAX_GROWTH_MB", 5) * 1024 * 1024

    {:ok, _} = SnakeBridge.Pool.start_link(name: @pool, size: workers)
    wait_for_workers(@pool, workers)
    payloads = payloads()

    IO.puts(
      "SnakeBridge soak: #{calls} calls from #{callers} callers on #{workers} workers " <>
        "(#{warmup} warm-up calls first)"
    )

    run(warmup, callers, payloads, nil)
    start = snapshot(@pool)
    print_snapshot("start", start)

    started = System.monotonic_time(:millisecond)
    counts = run(calls, callers, payloads, calls)
    seconds = (System.monotonic_time(:millisecond) - started) / 1000

    finish = snapshot(@pool)
    print_snapshot("end", finish)
    report(start, finish, counts, calls, seconds, max_growth)
  end

  ## The calls

  # The call for number i: mostly round trips of values of four sizes, and
  # about one in twenty raising in Python.
  defp request(i, payloads) do
    case rem(i, 20) do
      r when r in 0..7 -> {:echo, i}
      r when r in 8..12 -> {:echo, elem(payloads.strings, rem(i, 16))}
      r when r in 13..16 -> {:echo, elem(payloads.maps, rem(i, 16))}
      r when r in 17..18 -> {:echo, elem(payloads.binaries, rem(i, 16))}
      19 -> {:raise, i}
    end
  end

  defp payloads do
    strings = for n <- 1..16, do: String.duplicate(<<?a + n>>, 1024)
    maps = for n <- 1..16, do: Map.new(1..100, &{"key #{&1}", &1 * n})
    # A leading 0xFF makes them invalid UTF-8: Python sees bytes.
    binaries = for _ <- 1..16, do: <<255>> <> :rand.bytes(64 * 1024 - 1)

    %{
      strings: List.to_tuple(strings),
      maps: List.to_tuple(maps),
      binaries: List.to_tuple(binaries)
    }
  end

  defp one_call({:echo, value}) do
    # copy.copy returns ints, str and bytes themselves and a dict as a new
    # dict with the same items: the reply must equal what was sent.
    case SnakeBridge.call("copy", "copy", [value], pool: @pool, timeout: 30_000) do
      {:ok, ^value} -> :ok
      {:ok, _other} -> :wrong
      {:error, %SnakeBridge.PythonError{}} -> :unexpected_python_error
      {:error, %SnakeBridge.Error{reason: reason}} -> reason
    end
  end

  defp one_call({:raise, i}) do
    case SnakeBridge.call("operator", "truediv", [i, 0], pool: @pool, timeout: 30_000) do
      {:error, %SnakeBridge.PythonError{type: "ZeroDivisionError"}} -> :python_error
      {:ok, _} -> :wrong
      {:error, %SnakeBridge.PythonError{}} -> :wrong
      {:error, %SnakeBridge.Error{reason: reason}} -> reason
    end
  end

  # Runs `total` calls from `callers` processes; returns the outcome counts.
  # With `progress` set, prints the rate every tenth of the way.
  defp run(total, callers, payloads, progress) do
    counter = :counters.new(1, [:write_concurrency])
    started = System.monotonic_time(:millisecond)

    progress_pid =
      if progress do
        spawn_link(fn -> progress_loop(counter, total, started, 0) end)
      end

    tasks =
      for c <- 0..(callers - 1) do
        Task.async(fn ->
          Enum.reduce(c..(total - 1)//callers, %{}, fn i, counts ->
            outcome = one_call(request(i, payloads))
            :counters.add(counter, 1, 1)
            Map.update(counts, outcome, 1, &(&1 + 1))
          end)
        end)
      end

    counts =
      tasks
      |> Task.await_many(:infinity)
      |> Enum.reduce(%{}, &Map.merge(&1, &2, fn _k, a, b -> a + b end))

    if progress_pid do
      Process.unlink(progress_pid)
      Process.exit(progress_pid, :kill)
    end

    counts
  end

  defp progress_loop(counter, total, started, last_tenth) do
    Process.sleep(250)
    done = :counters.get(counter, 1)
    tenth = div(done * 10, max(total, 1))

    if tenth > last_tenth and tenth < 10 do
      seconds = (System.monotonic_time(:millisecond) - started) / 1000
      rate = round(done / max(seconds, 0.001))

      IO.puts(
        "  #{tenth * 10}%: #{done} calls, #{rate} calls/s, BEAM RSS #{mb(beam_rss())}, " <>
          "workers #{Enum.map_join(SnakeBridge.stats(@pool).workers, ", ", &mb(&1.rss))}"
      )
    end

    progress_loop(counter, total, started, max(tenth, last_tenth))
  end

  ## Report

  defp report(start, finish, counts, calls, seconds, max_growth) do
    beam_growth = finish.beam_rss - start.beam_rss
    erlang_growth = finish.erlang_total - start.erlang_total
    ok = Map.get(counts, :ok, 0)
    python_errors = Map.get(counts, :python_error, 0)
    expected_python_errors = div(calls, 20)
    other = Map.drop(counts, [:ok, :python_error])

    worker_lines =
      for {s, f} <- Enum.zip(start.workers, finish.workers) do
        if s.os_pid == f.os_pid do
          {f.rss - s.rss,
           "worker #{f.os_pid} #{signed_mb(f.rss - s.rss)} (#{f.calls} calls served)"}
        else
          {:restarted, "worker #{s.os_pid} was replaced by #{f.os_pid}: no growth to compare"}
        end
      end

    IO.puts(
      "growth: BEAM RSS #{signed_mb(beam_growth)} (erlang total #{signed_mb(erlang_growth)}); " <>
        Enum.map_join(worker_lines, "; ", &elem(&1, 1))
    )

    IO.puts(
      "calls: #{calls} in #{Float.round(seconds, 1)} s, #{round(calls / max(seconds, 0.001))} calls/s; " <>
        "ok #{ok}, Python exceptions #{python_errors} (expected #{expected_python_errors}), " <>
        "other outcomes #{inspect(other)}"
    )

    restarts =
      Enum.sum(Enum.map(finish.workers, & &1.restarts)) -
        Enum.sum(Enum.map(start.workers, & &1.restarts))

    problems =
      [
        other != %{} && "calls failed or answered wrongly: #{inspect(other)}",
        python_errors != expected_python_errors &&
          "#{python_errors} Python exceptions, expected #{expected_python_errors}",
        restarts != 0 && "#{restarts} worker restarts",
        beam_growth > max_growth && "BEAM RSS grew by #{signed_mb(beam_growth)}",
        Enum.any?(worker_lines, fn {g, _} -> is_integer(g) and g > max_growth end) &&
          "a worker's RSS grew by more than #{mb(max_growth)}"
      ]
      |> Enum.filter(& &1)

    if problems == [] do
      IO.puts(
        "result: PASS (growth under #{mb(max_growth)} on each side, every call answered as expected)"
      )
    else
      IO.puts("result: FAIL: " <> Enum.join(problems, "; "))
      System.halt(1)
    end
  end
end

SnakeBridge.Soak.main()
