# Soak for objects across nodes: SOAK_REMOTE_OBJECTS objects (default
# 100_000) made on a peer node's clustered pool and held by processes of
# this node must leave nothing behind on the peer: not in the Relay's table
# of objects held for other nodes, not in the pool's count of live handles,
# not in the Python worker, and the peer's and worker's memory flat.
#
#     make soak-cluster
#     SOAK_REMOTE_OBJECTS=20000 mix run soak/cluster_objects.exs
#
# The objects are let go the three ways a remote holder can: half are
# released with SnakeBridge.release/1; the other half are held by short-lived
# processes (SOAK_BATCH objects each) that exit holding them; a last batch of
# SOAK_BATCH is held when this node disconnects from the peer. Every tenth
# object is read back through its handle. Exits 1 when a call fails, a
# read-back is wrong, anything is left on the peer at the end, or the peer's
# BEAM or worker grew by more than SOAK_MAX_GROWTH_MB.
#
# Starts epmd and distribution itself. Environment: SOAK_REMOTE_OBJECTS
# (100_000), SOAK_CALLERS (8), SOAK_BATCH (100), SOAK_MAX_GROWTH_MB (10).

Code.require_file("support.ex", __DIR__)

defmodule SnakeBridge.SoakClusterObjects do
  import SnakeBridge.SoakSupport, only: [env_int: 2, mb: 1, signed_mb: 1]

  @pool :soak_cluster

  def main do
    objects = env_int("SOAK_REMOTE_OBJECTS", 100_000)
    callers = env_int("SOAK_CALLERS", 8)
    batch = env_int("SOAK_BATCH", 100)
    max_growth = env_int("SOAK_MAX_GROWTH_MB", 10) * 1024 * 1024

    {peer, node} = start_peer()

    IO.puts(
      "SnakeBridge remote object soak: #{objects} objects on #{node}, #{callers} callers here"
    )

    run(peer, 2_000, callers, batch)
    start = snapshot(peer)
    print_snapshot("start", start)

    started = System.monotonic_time(:millisecond)
    failures = run(peer, objects, callers, batch)
    seconds = (System.monotonic_time(:millisecond) - started) / 1000
    finish = snapshot(peer)
    print_snapshot("end", finish)

    {held_before, held_after} = disconnect_batch(peer, node, batch)

    IO.puts(
      "disconnect: #{held_before} objects held for this node, #{held_after} after it disconnected"
    )

    worker_growth = finish.worker_rss - start.worker_rss
    peer_growth = finish.peer_rss - start.peer_rss

    IO.puts("""
    growth: peer BEAM RSS #{signed_mb(peer_growth)}, worker RSS #{signed_mb(worker_growth)}
    #{objects} objects in #{Float.round(seconds, 1)} s (#{round(objects / max(seconds, 0.001))}/s), #{failures} failures\
    """)

    ok? =
      failures == 0 and finish.held == 0 and finish.handles == 0 and finish.python == start.python and
        held_after == 0 and worker_growth <= max_growth and peer_growth <= max_growth

    :peer.stop(peer)
    if ok?, do: IO.puts("PASS"), else: IO.puts("FAIL") && System.halt(1)
  end

  defp start_peer do
    System.cmd("epmd", ["-daemon"])
    {:ok, _} = :net_kernel.start([:"soak_#{System.os_time()}@127.0.0.1", :longnames])
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])

    {:ok, peer, node} =
      :peer.start(%{
        name: :"soak_peer_#{System.unique_integer([:positive])}",
        host: ~c"127.0.0.1",
        longnames: true,
        connection: :standard_io,
        args: paths ++ [~c"-setcookie", ~c"#{Node.get_cookie()}", ~c"-connect_all", ~c"false"]
      })

    :ok = :peer.call(peer, Application, :put_env, [:snakebridge, :default_pool, false])
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:snakebridge])
    true = Node.connect(node)
    pool = {SnakeBridge.Pool, name: @pool, size: 1, cluster: [gossip_interval: 50]}
    {:ok, _} = :peer.call(peer, Supervisor, :start_child, [SnakeBridge.Supervisor, pool])
    wait_until(fn -> Map.has_key?(SnakeBridge.Cluster.stats(@pool), node) end)
    {peer, node}
  end

  # Caller c makes objects in batches held by one short-lived process each;
  # even batches are released one by one, odd ones go when it exits.
  defp run(_peer, total, callers, batch) do
    batches = div(total, batch)

    0..(callers - 1)
    |> Enum.map(fn c ->
      Task.async(fn ->
        c
        |> Stream.iterate(&(&1 + callers))
        |> Stream.take_while(&(&1 < batches))
        |> Enum.map(&run_batch(&1, batch))
        |> Enum.sum()
      end)
    end)
    |> Task.await_many(:infinity)
    |> Enum.sum()
  end

  defp run_batch(b, batch) do
    task =
      Task.async(fn ->
        results =
          for i <- (b * batch)..(b * batch + batch - 1) do
            case SnakeBridge.call("types", "SimpleNamespace", [], pool: @pool, kwargs: [i: i]) do
              {:ok, %SnakeBridge.Object{} = object} when rem(i, 10) == 0 ->
                {object, SnakeBridge.getattr(object, "i") == {:ok, i}}

              {:ok, %SnakeBridge.Object{} = object} ->
                {object, true}

              other ->
                IO.puts(:stderr, "object #{i}: #{inspect(other)}")
                {nil, false}
            end
          end

        if rem(b, 2) == 0,
          do: for({%SnakeBridge.Object{} = o, _} <- results, do: SnakeBridge.release(o))

        Enum.count(results, fn {_, ok?} -> not ok? end)
      end)

    Task.await(task, :infinity)
  end

  defp disconnect_batch(peer, node, batch) do
    parent = self()

    spawn(fn ->
      objects =
        for _ <- 1..batch, do: SnakeBridge.call!("types", "SimpleNamespace", [], pool: @pool)

      send(parent, :made)
      Process.sleep(:infinity)
      objects
    end)

    receive do: (:made -> :ok)
    held_before = relay_held(peer)
    Node.disconnect(node)
    wait_until(fn -> relay_held(peer) == 0 end)
    {held_before, relay_held(peer)}
  end

  defp relay_held(peer), do: :peer.call(peer, SnakeBridge.Cluster.Relay, :held_objects, [])

  defp snapshot(peer) do
    # Releases by exit reach the peer as the holders' DOWN messages.
    wait_until(fn -> relay_held(peer) == 0 end)
    [worker] = :peer.call(peer, SnakeBridge, :stats, [@pool]).workers

    %{
      held: relay_held(peer),
      handles: worker.objects,
      python: SnakeBridge.call!("snakebridge_worker._native", "object_count", [], pool: @pool),
      worker_rss: worker.rss,
      peer_rss: rss(:peer.call(peer, System, :pid, []))
    }
  end

  defp rss(os_pid) do
    [kb] =
      Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/#{os_pid}/status"), capture: :all_but_first)

    String.to_integer(kb) * 1024
  end

  defp print_snapshot(label, s) do
    IO.puts(
      "#{label}: held for this node #{s.held}, live handles on the peer #{s.handles}, " <>
        "objects in the worker #{s.python}; peer BEAM RSS #{mb(s.peer_rss)}, worker RSS #{mb(s.worker_rss)}"
    )
  end

  defp wait_until(fun, tries \\ 500) do
    cond do
      fun.() -> :ok
      tries == 0 -> :timeout
      true -> Process.sleep(20) && wait_until(fun, tries - 1)
    end
  end
end

SnakeBridge.SoakClusterObjects.main()
