# Chaos soak: mixed calls while the workers are killed and frozen.
#
#     make soak-chaos                  # 200,000 calls
#     SOAK_CALLS=50000 mix run soak/chaos.exs
#
# 32 callers share a 2-worker pool and make SOAK_CALLS calls in all, while a
# chaos process SIGKILLs a random worker every SOAK_KILL_EVERY ms (200) and,
# half-way between two kills, freezes another with SIGSTOP for
# SOAK_STOP_FOR ms (50) before SIGCONT.
#
# The calls: echoes of small integers, strings and 100-key maps (sent with
# `Native.call_async/4` and awaited without a timeout of their own, so a
# reply lost in the chaos shows as a hung caller), Python exceptions, slow
# calls that time out, calls cancelled 0-200 µs after they are sent,
# streams, and calls on Python objects.
#
# Every call must end exactly once: with the right value or a typed error
# (`SnakeBridge.Error`; `:python_unavailable` and `:protocol_error` are
# counted as problems, since the interpreter and the wire are fine). When
# the calls are done, each caller waits a second and then looks for stray
# messages: a second reply, or one after a cancel or a timeout.
#
# It prints the BEAM's resident memory and the workers' after a warm-up and
# at the end, and exits 1 on a wrong value, a hung caller, a stray message,
# an unexpected outcome, or BEAM growth above SOAK_MAX_GROWTH_MB (10).
#
# Environment: SOAK_CALLS (200_000), SOAK_CALLERS (32), SOAK_WORKERS (2),
# SOAK_WARMUP (5_000), SOAK_KILL_EVERY (200), SOAK_STOP_FOR (50),
# SOAK_MAX_GROWTH_MB (10), SOAK_HANG_MS (30_000).

Code.require_file("support.ex", __DIR__)

defmodule SnakeBridge.ChaosSoak do
  import SnakeBridge.SoakSupport

  alias SnakeBridge.Native

  @pool :chaos

  # Outcomes that are a correct answer under chaos: a call whose worker was
  # killed or frozen may fail, but only in one of these ways.
  @typed_errors [
    :worker_exited,
    :timeout,
    :cancelled,
    :stale_handle,
    :overloaded,
    :circuit_open
  ]

  def main do
    calls = env_int("SOAK_CALLS", 200_000)
    callers = env_int("SOAK_CALLERS", 32)
    workers = env_int("SOAK_WORKERS", 2)
    warmup = env_int("SOAK_WARMUP", 5_000)
    kill_every = env_int("SOAK_KILL_EVERY", 200)
    stop_for = env_int("SOAK_STOP_FOR", 50)
    max_growth = env_int("SOAK_MAX_GROWTH_MB", 10) * 1024 * 1024
    hang_ms = env_int("SOAK_HANG_MS", 30_000)

    {:ok, _} = SnakeBridge.Pool.start_link(name: @pool, size: workers)
    wait_for_workers(@pool, workers)
    payloads = payloads()

    IO.puts(
      "SnakeBridge chaos soak: #{calls} calls from #{callers} callers on #{workers} workers; " <>
        "a worker SIGKILLed every #{kill_every} ms, another SIGSTOPped for #{stop_for} ms in between"
    )

    run(warmup, callers, payloads, hang_ms)
    start = snapshot(@pool)
    print_snapshot("start", start)

    chaos = spawn_link(fn -> chaos_loop(kill_every, stop_for, %{kills: 0, stops: 0}) end)
    started = System.monotonic_time(:millisecond)
    results = run(calls, callers, payloads, hang_ms)
    seconds = (System.monotonic_time(:millisecond) - started) / 1000
    send(chaos, {:stop, self()})
    chaos_counts = receive do: ({:chaos, counts} -> counts)

    wait_for_workers(@pool, workers)
    finish = snapshot(@pool)
    print_snapshot("end", finish)
    report(start, finish, results, chaos_counts, calls, seconds, max_growth)
  end

  ## Chaos

  defp chaos_loop(kill_every, stop_for, counts) do
    half = div(kill_every, 2)

    receive do
      {:stop, from} ->
        # Leave no worker frozen.
        for pid <- worker_pids(), do: signal(pid, "CONT")
        send(from, {:chaos, counts})
    after
      half ->
        counts =
          case Enum.shuffle(worker_pids()) do
            [pid | _] ->
              signal(pid, "STOP")
              Process.sleep(stop_for)
              signal(pid, "CONT")
              %{counts | stops: counts.stops + 1}

            [] ->
              counts
          end

        Process.sleep(max(half - stop_for, 0))

        counts =
          case Enum.shuffle(worker_pids()) do
            [pid | _] ->
              signal(pid, "KILL")
              %{counts | kills: counts.kills + 1}

            [] ->
              counts
          end

        chaos_loop(kill_every, stop_for, counts)
    end
  end

  defp worker_pids do
    for %{os_pid: pid} <- SnakeBridge.stats(@pool).workers, is_integer(pid), do: pid
  end

  defp signal(pid, name), do: System.cmd("kill", ["-#{name}", "#{pid}"], stderr_to_stdout: true)

  ## The calls

  defp request(i, payloads) do
    case rem(i, 20) do
      r when r in 0..5 -> {:echo, i}
      r when r in 6..7 -> {:echo, elem(payloads.strings, rem(i, 8))}
      r when r in 8..9 -> {:echo, elem(payloads.maps, rem(i, 8))}
      r when r in 10..11 -> {:raise, i}
      r when r in 12..13 -> {:slow, i}
      r when r in 14..15 -> {:cancel, i}
      r when r in 16..17 -> {:stream, rem(i, 7)}
      _ -> {:object, i}
    end
  end

  defp payloads do
    %{
      strings: List.to_tuple(for n <- 1..8, do: String.duplicate(<<?a + n>>, 1024)),
      maps: List.to_tuple(for n <- 1..8, do: Map.new(1..100, &{"key #{&1}", &1 * n}))
    }
  end

  # Each returns :ok, :python_error, {:error, reason}, :wrong or :hung.
  defp one_call({:echo, value}, hang_ms) do
    case Native.call_async("copy", "copy", [value], pool: @pool) do
      {:ok, ref} ->
        receive do
          {:snakebridge, ^ref, {:ok, ^value}} -> :ok
          {:snakebridge, ^ref, {:ok, _}} -> :wrong
          {:snakebridge, ^ref, other} -> classify(other)
        after
          hang_ms ->
            SnakeBridge.cancel(ref)
            :hung
        end

      refused ->
        classify(refused)
    end
  end

  defp one_call({:raise, i}, _hang_ms) do
    case SnakeBridge.call("operator", "truediv", [i, 0], pool: @pool, timeout: 30_000) do
      {:error, %SnakeBridge.PythonError{type: "ZeroDivisionError"}} -> :python_error
      other -> classify(other)
    end
  end

  defp one_call({:slow, i}, _hang_ms) do
    case SnakeBridge.call("time", "sleep", [0.05], pool: @pool, timeout: rem(i, 3) * 20) do
      {:ok, nil} -> :ok
      other -> classify(other)
    end
  end

  defp one_call({:cancel, i}, _hang_ms) do
    case Native.call_async("operator", "add", [i, 1], pool: @pool) do
      {:ok, ref} ->
        spin(:rand.uniform(200))
        :ok = SnakeBridge.cancel(ref)
        :ok

      refused ->
        classify(refused)
    end
  end

  defp one_call({:stream, n}, _hang_ms) do
    expected = Enum.to_list(0..(n - 1)//1)

    try do
      case SnakeBridge.stream("builtins", "range", [n], pool: @pool, window: 2, timeout: 30_000)
           |> Enum.to_list() do
        ^expected -> :ok
        _ -> :wrong
      end
    rescue
      error in SnakeBridge.Error -> classify({:error, error})
    end
  end

  defp one_call({:object, i}, _hang_ms) do
    with {:ok, deque} <- SnakeBridge.call("collections", "deque", [[i, i]], pool: @pool),
         {:ok, 2} <- SnakeBridge.method(deque, "count", [i], timeout: 30_000) do
      :ok
    else
      {:ok, _} -> :wrong
      other -> classify(other)
    end
  end

  defp classify({:error, %SnakeBridge.Error{reason: reason}}), do: {:error, reason}
  defp classify({:error, %SnakeBridge.PythonError{type: type}}), do: {:python, type}
  defp classify(_other), do: :wrong

  defp spin(micros), do: spin_until(System.monotonic_time(:microsecond) + micros)

  defp spin_until(until) do
    if System.monotonic_time(:microsecond) < until, do: spin_until(until)
  end

  # Runs `total` calls from `callers` processes; returns the outcome counts
  # and the stray messages the callers found afterwards.
  defp run(total, callers, payloads, hang_ms) do
    tasks =
      for c <- 0..(callers - 1) do
        Task.async(fn ->
          counts =
            Enum.reduce(c..(total - 1)//callers, %{}, fn i, counts ->
              Map.update(counts, one_call(request(i, payloads), hang_ms), 1, &(&1 + 1))
            end)

          # Anything that arrives now is a second reply, or a reply after a
          # cancel or a timeout.
          Process.sleep(1_000)
          {counts, strays([])}
        end)
      end

    tasks
    |> Task.await_many(:infinity)
    |> Enum.reduce({%{}, []}, fn {counts, strays}, {all, all_strays} ->
      {Map.merge(all, counts, fn _k, a, b -> a + b end), strays ++ all_strays}
    end)
  end

  defp strays(acc) do
    receive do
      {tag, _, _} = message when tag in [:snakebridge, :snakebridge_stream] ->
        strays([message | acc])
    after
      0 -> acc
    end
  end

  ## Report

  defp report(start, finish, {counts, strays}, chaos, calls, seconds, max_growth) do
    beam_growth = finish.beam_rss - start.beam_rss
    erlang_growth = finish.erlang_total - start.erlang_total

    {typed, rest} =
      Enum.split_with(counts, fn {k, _} -> match?({:error, r} when r in @typed_errors, k) end)

    {fine, problems} = Enum.split_with(rest, fn {k, _} -> k in [:ok, :python_error] end)
    answered = counts |> Map.values() |> Enum.sum()

    restarts =
      Enum.sum(Enum.map(finish.workers, & &1.restarts)) -
        Enum.sum(Enum.map(start.workers, & &1.restarts))

    worker_rss = fn s -> s.workers |> Enum.map(& &1.rss) |> Enum.max(fn -> 0 end) end

    IO.puts(
      "chaos: #{chaos.kills} SIGKILLs, #{chaos.stops} SIGSTOP/SIGCONTs, #{restarts} worker restarts"
    )

    IO.puts(
      "calls: #{calls} in #{Float.round(seconds, 1)} s, #{round(calls / max(seconds, 0.001))} calls/s; " <>
        "answered #{answered}; #{inspect(Map.new(fine))}; typed errors #{inspect(Map.new(typed))}; " <>
        "hung #{Map.get(counts, :hung, 0)}; stray messages #{length(strays)}"
    )

    IO.puts(
      "memory: BEAM RSS #{signed_mb(beam_growth)} (erlang total #{signed_mb(erlang_growth)}); " <>
        "largest worker RSS #{mb(worker_rss.(start))} at the start, #{mb(worker_rss.(finish))} at the end"
    )

    failures =
      [
        answered != calls && "#{answered} of #{calls} calls ended",
        problems != [] && "unexpected outcomes: #{inspect(Map.new(problems))}",
        strays != [] && "stray messages: #{inspect(Enum.take(strays, 5))}",
        beam_growth > max_growth && "BEAM RSS grew by #{signed_mb(beam_growth)}",
        worker_rss.(finish) > worker_rss.(start) + max_growth &&
          "worker RSS grew to #{mb(worker_rss.(finish))}"
      ]
      |> Enum.filter(& &1)

    if failures == [] do
      IO.puts("result: PASS (every call ended once, none hung, no stray message, memory flat)")
    else
      IO.puts("result: FAIL: " <> Enum.join(failures, "; "))
      System.halt(1)
    end
  end
end

SnakeBridge.ChaosSoak.main()
