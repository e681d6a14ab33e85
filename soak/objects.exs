# Soak for Python objects: a million short-lived handles, created in a loop
# and dropped, must leave the worker's object table and memory flat.
#
#     make soak-objects                       # 1,000,000 objects
#     SOAK_OBJECTS=200000 mix run soak/objects.exs
#
# SOAK_CALLERS processes share a one-worker pool and create SOAK_OBJECTS
# objects in all (`types.SimpleNamespace(i=i)`), each kept only until the next
# one is made; every tenth is read back through the handle (`getattr`), which
# runs pinned to the worker that holds it. Nothing releases them by hand:
# only the BEAM's garbage collection does. A progress line every tenth of the
# way shows the objects alive in the worker at that moment.
#
# At the start (after a warm-up) and at the end (after collecting every
# process's garbage) it prints the worker's object count (from
# `snakebridge_worker._native.object_count`), the worker's RSS and the BEAM's.
# Exits 1 when a call fails, a read-back is wrong, the worker restarted, an
# object is left in the worker at the end, or either side grew by more than
# SOAK_MAX_GROWTH_MB.
#
# Environment: SOAK_OBJECTS (default 1_000_000), SOAK_CALLERS (8),
# SOAK_WARMUP (20_000), SOAK_MAX_GROWTH_MB (5).

Code.require_file("support.ex", __DIR__)

defmodule SnakeBridge.SoakObjects do
  import SnakeBridge.SoakSupport

  @pool :soak_objects

  def main do
    objects = env_int("SOAK_OBJECTS", 1_000_000)
    callers = env_int("SOAK_CALLERS", 8)
    warmup = env_int("SOAK_WARMUP", 20_000)
    max_growth = env_int("SOAK_MAX_GROWTH_MB", 5) * 1024 * 1024

    {:ok, _} = SnakeBridge.Pool.start_link(name: @pool, size: 1)
    wait_for_workers(@pool, 1)
    IO.puts("SnakeBridge object soak: #{objects} objects from #{callers} callers on 1 worker")

    run(warmup, callers, nil)
    start = snapshot()
    print_snapshot("start", start)

    started = System.monotonic_time(:millisecond)
    failures = run(objects, callers, objects)
    seconds = (System.monotonic_time(:millisecond) - started) / 1000

    finish = snapshot()
    print_snapshot("end", finish)
    report(start, finish, failures, objects, seconds, max_growth)
  end

  defp run(total, callers, progress) do
    counter = :counters.new(1, [])
    parent = self()

    tasks =
      for c <- 0..(callers - 1) do
        Task.async(fn -> create(c, total, callers, counter, 0) end)
      end

    watcher = progress && spawn_link(fn -> progress_loop(counter, total, 1, parent) end)
    failures = tasks |> Task.await_many(:infinity) |> Enum.sum()
    if watcher, do: Process.unlink(watcher) && Process.exit(watcher, :kill)
    failures
  end

  # Caller c makes objects c, c + callers, c + 2 * callers, ... below total.
  defp create(i, total, _callers, _counter, failures) when i >= total, do: failures

  defp create(i, total, callers, counter, failures) do
    failures =
      case SnakeBridge.call("types", "SimpleNamespace", [], pool: @pool, kwargs: [i: i]) do
        {:ok, %SnakeBridge.Object{} = object} when rem(i, 10) == 0 ->
          if SnakeBridge.getattr(object, "i") == {:ok, i}, do: failures, else: failures + 1

        {:ok, %SnakeBridge.Object{}} ->
          failures

        other ->
          IO.puts(:stderr, "object #{i}: #{inspect(other)}")
          failures + 1
      end

    :counters.add(counter, 1, 1)
    create(i + callers, total, callers, counter, failures)
  end

  defp progress_loop(counter, total, tenth, parent) when tenth <= 10 do
    if :counters.get(counter, 1) >= div(total * tenth, 10) do
      IO.puts(
        "  #{tenth * 10}%: objects alive in the worker #{object_count()}, " <>
          "held by Elixir #{held()}, worker RSS #{mb(worker().rss)}, BEAM RSS #{mb(beam_rss())}"
      )

      progress_loop(counter, total, tenth + 1, parent)
    else
      Process.sleep(50)
      progress_loop(counter, total, tenth, parent)
    end
  end

  defp progress_loop(_counter, _total, _tenth, _parent), do: :ok

  defp object_count,
    do: SnakeBridge.call!("snakebridge_worker._native", "object_count", [], pool: @pool)

  defp held, do: worker().objects
  defp worker, do: hd(SnakeBridge.stats(@pool).workers)

  defp snapshot do
    for pid <- Process.list(), do: :erlang.garbage_collect(pid)
    # Releases reach the worker shortly after the collection.
    settle(50)
    %{beam_rss: beam_rss(), objects: object_count(), held: held(), worker: worker()}
  end

  defp settle(0), do: :ok

  defp settle(tries) do
    if object_count() > 0 do
      Process.sleep(20)
      settle(tries - 1)
    end
  end

  defp print_snapshot(label, s) do
    IO.puts(
      "#{label}: objects in the worker #{s.objects}, held by Elixir #{s.held}; " <>
        "worker #{s.worker.os_pid} RSS #{mb(s.worker.rss)}; BEAM RSS #{mb(s.beam_rss)}"
    )
  end

  defp report(start, finish, failures, objects, seconds, max_growth) do
    worker_growth = finish.worker.rss - start.worker.rss
    beam_growth = finish.beam_rss - start.beam_rss

    IO.puts("""
    growth: worker RSS #{signed_mb(worker_growth)}, BEAM RSS #{signed_mb(beam_growth)}
    objects: #{objects} in #{Float.round(seconds, 1)} s, #{round(objects / seconds)} objects/s; \
    failures #{failures}; worker restarts #{finish.worker.restarts - start.worker.restarts}\
    """)

    problems =
      [
        failures > 0 && "#{failures} calls failed",
        finish.worker.restarts != start.worker.restarts && "the worker restarted",
        finish.objects != 0 && "#{finish.objects} objects left in the worker",
        worker_growth > max_growth && "the worker grew by #{signed_mb(worker_growth)}",
        beam_growth > max_growth && "the BEAM grew by #{signed_mb(beam_growth)}"
      ]
      |> Enum.filter(& &1)

    if problems == [] do
      IO.puts("result: PASS")
    else
      IO.puts("result: FAIL (#{Enum.join(problems, "; ")})")
      System.halt(1)
    end
  end
end

SnakeBridge.SoakObjects.main()
