defmodule SnakeBridge.ClusterTest do
  # Real peer nodes on loopback, each running SnakeBridge with Python.
  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers
  import SnakeBridge.ClusterHelpers

  alias SnakeBridge.{Error, Native, Object, PythonError}

  @moduletag :cluster
  @moduletag timeout: 120_000

  @pool :cluster_test

  setup_all do
    {peer, node} = start_peer("cluster")
    start_pool(peer, @pool)
    wait_for_member(@pool, node)

    # Every worker takes calls: tests that spread over them see each one.
    wait_ready(peer, @pool)

    on_exit(fn -> stop_peer(peer) end)
    %{peer: peer, node: node}
  end

  # What the pool's workers recorded (sbhelpers.sleep_and_record). Each
  # worker records in its own process, and calls spread over them: ask
  # often enough to reach both.
  defp recorded do
    for _ <- 1..6, value <- SnakeBridge.call!("sbhelpers", "recorded", [], pool: @pool), do: value
  end

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp wait_ready(peer, pool) do
    wait_until(fn ->
      Enum.all?(:peer.call(peer, SnakeBridge, :stats, [pool]).workers, &(&1.state == :ready))
    end)
  end

  defp remote_pids(peer, pool) do
    for %{os_pid: pid} <- :peer.call(peer, SnakeBridge, :stats, [pool]).workers, do: pid
  end

  defp held(peer), do: :peer.call(peer, SnakeBridge.Cluster.Relay, :held_objects, [])

  defp refute_messages do
    refute_received {:snakebridge, _, _}
    refute_received {:snakebridge_stream, _, _}
  end

  describe "calls" do
    test "a node without the pool runs the call in another node's pool", %{peer: peer} do
      assert {:ok, pid} = SnakeBridge.call("sbhelpers", "pid", [], pool: @pool)
      assert pid in remote_pids(peer, @pool)

      assert SnakeBridge.call("sbhelpers", "echo", [1, "two", [3.0]], pool: @pool, kwargs: [k: :v]) ==
               {:ok, [[1, "two", [3.0]], %{"k" => "v"}]}

      assert {:error, %PythonError{type: "ValueError", message: "boom"}} =
               SnakeBridge.call("sbhelpers", "raise_value_error", ["boom"], pool: @pool)

      refute_messages()
    end

    test "call_async sends the one reply message; await and receive both work" do
      {:ok, ref} = Native.call_async("sbhelpers", "identity", [42], pool: @pool)
      assert_receive {:snakebridge, ^ref, {:ok, 42}}, 5_000

      {:ok, ref} = Native.call_async("sbhelpers", "sleep", [0.05, :done], pool: @pool)
      assert SnakeBridge.await(ref, 5_000) == {:ok, "done"}
      refute_receive {:snakebridge, _, _}, 200
    end

    test "output: :caller: what a remote call prints reaches its caller ahead of the reply",
         %{peer: peer} do
      relay = :peer.call(peer, Process, :whereis, [SnakeBridge.Cluster.Relay])

      {:ok, ref} =
        Native.call_async("sbhelpers", "print_and_return", ["far", 7],
          pool: @pool,
          output: :caller
        )

      assert_receive {:snakebridge, ^ref, {:ok, 7}}, 5_000

      assert [
               {:snakebridge_output, ^ref, :stdout, "stdout says far"},
               {:snakebridge_output, ^ref, :stderr, "stderr says far"}
             ] = for({:snakebridge_output, _, _, _} = m <- flush_mailbox(), do: m)

      # A cancelled call's output is dropped, and the relay keeps running.
      {:ok, ref} =
        Native.call_async("sbhelpers", "print_and_return", ["gone", 1],
          pool: @pool,
          output: :caller
        )

      SnakeBridge.cancel(ref)
      refute_receive {:snakebridge, ^ref, _}, 300
      refute_received {:snakebridge_output, ^ref, _, _}
      assert :peer.call(peer, Process, :whereis, [SnakeBridge.Cluster.Relay]) == relay
      assert SnakeBridge.call("sbhelpers", "identity", [1], pool: @pool) == {:ok, 1}
    end

    test "a timeout cancels the call in Python on the remote node, and no reply follows" do
      tag = "timeout_#{System.unique_integer([:positive])}"

      assert {:error, %Error{reason: :timeout}} =
               SnakeBridge.call("sbhelpers", "sleep_and_record", [1.0, tag],
                 pool: @pool,
                 timeout: 100
               )

      refute_receive {:snakebridge, _, _}, 1_500

      refute tag in recorded()
    end

    test "cancel/1 of a remote call: no reply, Python interrupted" do
      tag = "cancel_#{System.unique_integer([:positive])}"
      {:ok, ref} = Native.call_async("sbhelpers", "sleep_and_record", [1.0, tag], pool: @pool)
      Process.sleep(100)
      assert SnakeBridge.cancel(ref) == :ok
      refute_receive {:snakebridge, ^ref, _}, 1_500

      refute tag in recorded()
    end

    test "the relay polls for the reply of a call to an idle worker, and keeps nothing after it",
         %{peer: peer} do
      relay = :peer.call(peer, Process, :whereis, [SnakeBridge.Cluster.Relay])
      relay_state = fn -> :peer.call(peer, :sys, :get_state, [relay]) end

      mode = fn ->
        {:dictionary, dictionary} = :peer.call(peer, Process, :info, [relay, :dictionary])
        dictionary[:"$snakebridge_poll"]
      end

      # Polling, whatever earlier calls left (the fun runs in the relay).
      reset = ~S"""
      :sys.replace_state(relay, fn state -> Process.delete(:"$snakebridge_poll"); state end)
      """

      :peer.call(peer, Code, :eval_string, [reset, [relay: relay]])

      {:ok, ref} = Native.call_async("sbhelpers", "sleep", [0.3, :slow], pool: @pool)
      Process.sleep(100)
      # The poll (50 µs) missed this reply, so the relay now waits.
      assert [{_local_ref, :missed}] = Map.to_list(relay_state.().alone)
      assert relay_state.().poll_until == nil
      assert mode.() == 0
      assert_receive {:snakebridge, ^ref, {:ok, "slow"}}, 5_000

      for i <- 1..200,
          do: assert(SnakeBridge.call("sbhelpers", "identity", [i], pool: @pool) == {:ok, i})

      assert {:error, %Error{reason: :timeout}} =
               SnakeBridge.call("sbhelpers", "sleep", [1.0, :late], pool: @pool, timeout: 50)

      {:ok, ref} = Native.call_async("sbhelpers", "sleep", [1.0, :cancelled], pool: @pool)
      Process.sleep(50)
      assert SnakeBridge.cancel(ref) == :ok

      refute_receive {:snakebridge, _, _}, 1_200
      assert %{alone: alone, calls: calls} = relay_state.()
      assert alone == %{} and calls == %{}
    end

    test "the client and the relay drop operations they do not know (a later version's)",
         %{peer: peer} do
      relay = :peer.call(peer, Process, :whereis, [SnakeBridge.Cluster.Relay])
      client = Process.whereis(SnakeBridge.Cluster.Client)
      send(relay, {:snakebridge_requests, client, [{:from_a_later_version, 1}]})
      send(client, {:snakebridge_replies, [{:from_a_later_version, 1}]})

      assert SnakeBridge.call("sbhelpers", "identity", [1], pool: @pool) == {:ok, 1}
      assert :peer.call(peer, Process, :whereis, [SnakeBridge.Cluster.Relay]) == relay
      assert Process.whereis(SnakeBridge.Cluster.Client) == client
    end

    test "a pool no node runs is :pool_not_found, as locally" do
      assert {:error, %Error{reason: :pool_not_found}} =
               SnakeBridge.call("math", "sqrt", [4.0], pool: :cluster_nowhere)
    end

    test "stats: the cluster view", %{node: node} do
      assert %{^node => %{size: 2, queue_length: 0, in_flight: in_flight, age_ms: age}} =
               SnakeBridge.Cluster.stats(@pool)

      assert is_integer(in_flight) and is_integer(age)
      assert SnakeBridge.Cluster.stats(:cluster_nowhere) == %{}
    end

    test "stats(pool, cluster: true): the cluster view, from a node without the pool", %{
      node: node
    } do
      assert %{^node => %{size: 2, queue_length: 0, in_flight: _, age_ms: _}} =
               view = SnakeBridge.stats(@pool, cluster: true)

      assert Map.keys(view) == [node]

      assert_raise Error, ~r/no node of the cluster runs a pool named :cluster_nowhere/, fn ->
        SnakeBridge.stats(:cluster_nowhere, cluster: true)
      end

      # This node's pool is not clustered: locally it has stats, not a view.
      assert %{workers: [_ | _]} = SnakeBridge.stats(:default, cluster: false)
      assert %{workers: [_ | _]} = SnakeBridge.stats(:default)
      assert_raise Error, ~r/:default/, fn -> SnakeBridge.stats(:default, cluster: true) end

      assert_raise ArgumentError, ~r/:cluster to be a boolean/, fn ->
        SnakeBridge.stats(@pool, cluster: 1)
      end

      assert_raise ArgumentError, ~r/unknown keys/, fn -> SnakeBridge.stats(@pool, nodes: true) end
      assert_raise ArgumentError, ~r/keyword list/, fn -> SnakeBridge.stats(@pool, :cluster) end
    end

    test "many callers at once: each gets its own reply, and nothing more" do
      parent = self()

      for i <- 1..40 do
        spawn_link(fn ->
          results =
            for j <- 1..10, do: SnakeBridge.call("sbhelpers", "identity", [{i, j}], pool: @pool)

          extra = receive do: (m -> m), after: (200 -> nil)
          send(parent, {:done, i, results, extra})
        end)
      end

      for i <- 1..40 do
        assert_receive {:done, ^i, results, nil}, 30_000
        assert results == for(j <- 1..10, do: {:ok, {i, j}})
      end
    end

    test "the :cluster option is checked" do
      assert_raise ArgumentError, ~r/:cluster/, fn -> SnakeBridge.Pool.config!(cluster: :yes) end

      assert_raise ArgumentError, ~r/:strategy/, fn ->
        SnakeBridge.Pool.config!(cluster: [strategy: :random])
      end

      assert_raise ArgumentError, ~r/:overload/, fn ->
        SnakeBridge.Pool.config!(cluster: [overload: 0])
      end

      assert_raise ArgumentError, ~r/unknown keys/, fn ->
        SnakeBridge.Pool.config!(cluster: [nope: 1])
      end

      assert %{cluster: %{strategy: :least_loaded}} =
               SnakeBridge.Pool.config!(cluster: [strategy: :least_loaded])
    end
  end

  describe "routing" do
    test "local first while the local pool is not overloaded, then the remote one", %{peer: peer} do
      pool = unique(:cluster_route)
      start_pool(peer, pool)

      start_supervised!(
        {SnakeBridge.Pool, pool_opts(pool, size: 1, cluster: [overload: 1, gossip_interval: 20])}
      )

      wait_for_member(pool, node())
      # A worker shows in stats/1 before its process runs.
      wait_until(fn ->
        match?([%{os_pid: pid}] when is_integer(pid), SnakeBridge.stats(pool).workers)
      end)

      [local] = for %{os_pid: pid} <- SnakeBridge.stats(pool).workers, do: pid
      wait_until(fn -> length(remote_pids(peer, pool)) == 2 end)

      assert SnakeBridge.call!("sbhelpers", "pid", [], pool: pool) == local

      # Three calls on one worker: a load of 3, over the overload of 1.
      busy = for _ <- 1..3, do: elem(Native.call_async("sbhelpers", "sleep", [1.0], pool: pool), 1)

      wait_until(fn ->
        SnakeBridge.Cluster.stats(pool)[node()].in_flight +
          SnakeBridge.Cluster.stats(pool)[node()].queue_length >= 3
      end)

      assert SnakeBridge.call!("sbhelpers", "pid", [], pool: pool) in remote_pids(peer, pool)
      for ref <- busy, do: assert({:ok, nil} = SnakeBridge.await(ref, 10_000))
    end

    test ":least_loaded: calls go to either node, and to the less loaded one", %{peer: peer} do
      pool = unique(:cluster_least)
      start_pool(peer, pool)

      start_supervised!(
        {SnakeBridge.Pool,
         pool_opts(pool, size: 1, cluster: [strategy: :least_loaded, gossip_interval: 20])}
      )

      wait_for_member(pool, node())
      wait_for_member(pool, :peer.call(peer, Kernel, :node, []))
      wait_until(fn -> length(remote_pids(peer, pool)) == 2 end)

      wait_until(fn ->
        match?([%{os_pid: pid}] when is_integer(pid), SnakeBridge.stats(pool).workers)
      end)

      [local] = for %{os_pid: pid} <- SnakeBridge.stats(pool).workers, do: pid
      remote = remote_pids(peer, pool)

      # Both idle: each call goes to one of the two at random.
      pids = for _ <- 1..40, do: SnakeBridge.call!("sbhelpers", "pid", [], pool: pool)
      assert local in pids
      assert Enum.any?(pids, &(&1 in remote))

      # Three calls kept on the one local worker (by an object of its own):
      # the remote node is less loaded.
      here =
        Stream.repeatedly(fn ->
          SnakeBridge.call!("builtins", "object", [], pool: pool, as: :handle)
        end)
        |> Enum.find(&(Object.os_pid(&1) == local))

      busy =
        for _ <- 1..3 do
          {:ok, ref} = Native.call_async("sbhelpers", "sleep", [1.0], pool: pool, worker: here)
          ref
        end

      wait_until(fn ->
        %{in_flight: running, queue_length: queued} = SnakeBridge.Cluster.stats(pool)[node()]
        running + queued >= 3
      end)

      for _ <- 1..10 do
        assert SnakeBridge.call!("sbhelpers", "pid", [], pool: pool) in remote
      end

      for ref <- busy, do: SnakeBridge.await(ref, 10_000)
    end
  end

  describe "objects" do
    test "an object returned to another node works there, in its worker", %{peer: peer} do
      {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [5], pool: @pool)
      assert %Object{type: "sbobjects.Counter", pool: @pool} = counter
      assert SnakeBridge.method!(counter, "add", [3]) == 8
      assert SnakeBridge.getattr!(counter, "value") == 8
      assert SnakeBridge.setattr!(counter, "value", 1) == :ok
      assert SnakeBridge.call!("sbobjects", "counter_value", [counter], pool: @pool) == 1
      assert SnakeBridge.call!(counter, [10]) == 10
      assert Object.os_pid(counter) in remote_pids(peer, @pool)

      # Objects in a remote result, nested, and passed back in nested too.
      {:ok, [a, %{"b" => b}]} = SnakeBridge.eval("[c, {'b': c}]", %{"c" => counter}, pool: @pool)
      assert SnakeBridge.call!("sbobjects", "same_object", [a, b], pool: @pool)
      assert SnakeBridge.call!("sbobjects", "sum_values", [[a, %{"x" => {b}}]], pool: @pool) == 2
      SnakeBridge.release(counter)
      SnakeBridge.release(a)
      SnakeBridge.release(b)
    end

    test "a process's calls follow its remote objects, so objects made one after another work together",
         %{peer: peer} do
      counters = for i <- 1..6, do: SnakeBridge.call!("sbobjects", "Counter", [i], pool: @pool)
      assert [os_pid] = counters |> Enum.map(&Object.os_pid/1) |> Enum.uniq()
      [a, b | _] = counters
      assert SnakeBridge.call!("sbobjects", "sum_values", [[a, b]], pool: @pool) == 3
      # A call that names no object runs there too.
      assert SnakeBridge.call("os", "getpid", [], pool: @pool) == {:ok, os_pid}

      # Once that worker is gone, with the objects, such calls run anywhere.
      System.cmd("kill", ["-KILL", Integer.to_string(os_pid)])
      wait_until(fn -> Object.os_pid(a) == nil end)

      for _ <- 1..4 do
        assert {:ok, pid} = SnakeBridge.call("os", "getpid", [], pool: @pool)
        assert pid != os_pid
      end

      assert {:error, %Error{reason: :stale_handle}} = SnakeBridge.method(a, "add", [1])
      Enum.each(counters, &SnakeBridge.release/1)
      wait_ready(peer, @pool)
    end

    test "sessions of a pool on another node: run/2, pin/1 and :worker send calls to their worker",
         %{peer: peer} do
      sessions = for _ <- 1..2, do: SnakeBridge.Session.new!(pool: @pool)
      pids = Enum.map(sessions, &SnakeBridge.Session.os_pid/1)
      assert Enum.sort(pids) == Enum.sort(remote_pids(peer, @pool))

      for {session, pid} <- Enum.zip(sessions, pids) do
        assert SnakeBridge.call("os", "getpid", [], pool: @pool, worker: session) == {:ok, pid}

        # In a process that holds no object of the pool: only the pin
        # keeps its calls in the session's worker.
        task =
          Task.async(fn ->
            SnakeBridge.Session.run(session, fn ->
              for _ <- 1..6, do: SnakeBridge.call!("os", "getpid", [], pool: @pool)
            end)
          end)

        assert Task.await(task) == List.duplicate(pid, 6)

        task =
          Task.async(fn ->
            SnakeBridge.Session.pin(session.object)
            for _ <- 1..6, do: SnakeBridge.call!("os", "getpid", [], pool: @pool)
          end)

        assert Task.await(task) == List.duplicate(pid, 6)
      end

      Enum.each(sessions, &SnakeBridge.release(&1.object))
    end

    test "a remote object in a call to another pool is :handle_conflict, as a local one is",
         %{node: node} do
      {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [1], pool: @pool)

      assert {:error, %Error{reason: :handle_conflict, message: message, details: %{node: ^node}}} =
               SnakeBridge.call("sbobjects", "counter_value", [counter])

      assert message =~ "pool :default"

      # With a local object of that pool beside it: the two nodes conflict.
      {:ok, here} = SnakeBridge.call("builtins", "object", [], as: :handle)

      assert {:error, %Error{reason: :handle_conflict, details: %{nodes: nodes}}} =
               SnakeBridge.call("builtins", "id", [[here, counter]])

      assert Enum.sort(nodes) == Enum.sort([node(), node])

      assert SnakeBridge.call("sbobjects", "counter_value", [counter], pool: @pool) == {:ok, 1}
      SnakeBridge.release(counter)
    end

    test "release: the owning node lets go, later uses are :stale_handle", %{peer: peer} do
      before = held(peer)
      {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [], pool: @pool)
      assert held(peer) == before + 1
      assert SnakeBridge.release(counter) == :ok
      assert SnakeBridge.release(counter) == :ok
      assert {:error, %Error{reason: :stale_handle}} = SnakeBridge.method(counter, "add")
      assert held(peer) == before
      assert Object.os_pid(counter) == nil
    end

    test "objects are released when the process that got them exits", %{peer: peer} do
      before = held(peer)
      parent = self()

      pid =
        spawn(fn ->
          objects = for i <- 1..50, do: SnakeBridge.call!("sbobjects", "Counter", [i], pool: @pool)
          send(parent, {:made, length(objects)})
          receive do: (:exit -> :ok)
        end)

      assert_receive {:made, 50}, 10_000
      assert held(peer) == before + 50
      send(pid, :exit)
      wait_until(fn -> held(peer) == before end)
    end

    test "objects of different nodes in one call are a :handle_conflict" do
      {:ok, local} = SnakeBridge.call("builtins", "object", [])
      {:ok, remote} = SnakeBridge.call("builtins", "object", [], pool: @pool)

      assert {:error, %Error{reason: :handle_conflict, message: message}} =
               SnakeBridge.call("sbobjects", "same_object", [local, remote], pool: @pool)

      assert message =~ "different nodes"
      SnakeBridge.release(remote)
    end
  end

  describe "streams" do
    test "items arrive in order; halting early closes the generator there" do
      assert SnakeBridge.stream("sbobjects", "numbers", [5_000], pool: @pool, window: 16)
             |> Enum.to_list() ==
               Enum.to_list(0..4_999)

      path = Path.join(System.tmp_dir!(), "sb_cluster_halt_#{System.unique_integer([:positive])}")

      assert SnakeBridge.stream("sbobjects", "guarded", [path], pool: @pool) |> Enum.take(3) == [
               0,
               1,
               2
             ]

      wait_until(fn -> File.read(path) == {:ok, "closed"} end)
      File.rm(path)
      refute_messages()

      assert_raise PythonError, ~r/failed after 3/, fn ->
        SnakeBridge.stream("sbobjects", "fail_after", [3], pool: @pool) |> Stream.run()
      end
    end

    test "the relay counts an open stream until it ends, however it ends", %{peer: peer} do
      relay = :peer.call(peer, Process, :whereis, [SnakeBridge.Cluster.Relay])

      open = fn ->
        %{streams: streams, calls: calls} = :peer.call(peer, :sys, :get_state, [relay])
        {streams, map_size(calls)}
      end

      parent = self()

      consumer =
        spawn(fn ->
          SnakeBridge.stream("sbobjects", "numbers", [100], pool: @pool)
          |> Enum.each(fn i ->
            send(parent, {:item, i})
            receive do: (:next -> :ok)
          end)
        end)

      assert_receive {:item, 0}, 5_000
      # An open stream is no burst: a call made meanwhile is a lone one.
      assert open.() == {1, 1}
      assert SnakeBridge.call("sbhelpers", "identity", [1], pool: @pool) == {:ok, 1}
      assert open.() == {1, 1}

      Process.exit(consumer, :kill)
      wait_until(fn -> open.() == {0, 0} end)

      assert SnakeBridge.stream("sbobjects", "numbers", [10], pool: @pool) |> Enum.count() == 10

      assert SnakeBridge.stream("sbobjects", "numbers", [100], pool: @pool) |> Enum.take(2) == [
               0,
               1
             ]

      wait_until(fn -> open.() == {0, 0} end)
    end

    test "backpressure: the remote generator runs at most a window ahead", %{peer: peer} do
      pool = unique(:cluster_stream)
      start_pool(peer, pool, size: 1)
      wait_for_member(pool, :peer.call(peer, Kernel, :node, []))
      assert_backpressure(pool, 8)
    end
  end

  describe "failures" do
    test "a call/4 its node cannot run is routed to another node and answered there", %{peer: peer} do
      pool = unique(:cluster_adopt)
      start_pool(peer, pool)
      wait_for_member(pool, :peer.call(peer, Kernel, :node, []))

      # A member of the group on a node that has no such pool: its relay
      # answers :pool_not_found, and this node's client sends the call on.
      {empty, empty_node} = start_peer("adopt")
      on_exit(fn -> stop_peer(empty) end)
      relay = :peer.call(empty, Process, :whereis, [SnakeBridge.Cluster.Relay])
      :ok = :peer.call(empty, :pg, :join, [SnakeBridge.Cluster, pool, relay])
      wait_until(fn -> empty_node in SnakeBridge.Cluster.Router.nodes(pool) end)

      pids =
        for _ <- 1..24 do
          assert {:ok, pid} = SnakeBridge.call("os", "getpid", [], pool: pool)
          pid
        end

      assert Enum.all?(pids, &(&1 in remote_pids(peer, pool)))
      refute_messages()
    end

    test "a node killed under load: every caller gets exactly one reply" do
      pool = unique(:cluster_kill)
      peers = for name <- ["kill_a", "kill_b"], do: start_peer(name)
      on_exit(fn -> for {peer, _} <- peers, do: stop_peer(peer) end)

      for {peer, node} <- peers do
        start_pool(peer, pool)
        wait_for_member(pool, node)
      end

      [{victim, victim_node}, _] = peers
      os_pid = :peer.call(victim, System, :pid, [])
      parent = self()

      callers =
        for i <- 1..64 do
          spawn_link(fn ->
            results =
              for j <- 1..5 do
                {:ok, ref} = Native.call_async("sbhelpers", "sleep", [0.05, [i, j]], pool: pool)
                {ref, SnakeBridge.await(ref, 30_000)}
              end

            extra = receive do: (m -> m), after: (300 -> nil)
            send(parent, {:done, self(), results, extra})
          end)
        end

      Process.sleep(300)
      System.cmd("kill", ["-9", os_pid])

      outcomes =
        for caller <- callers, reduce: [] do
          acc ->
            assert_receive {:done, ^caller, results, nil}, 60_000
            acc ++ Enum.map(results, &elem(&1, 1))
        end

      assert length(outcomes) == 320
      down = Enum.filter(outcomes, &match?({:error, %Error{reason: :node_down}}, &1))
      assert down != [], "calls were running on #{victim_node} when it was killed"

      assert Enum.all?(outcomes, &(match?({:ok, [_, _]}, &1) or &1 in down)),
             inspect(outcomes -- down)

      [%Error{details: %{node: ^victim_node}} | _] = Enum.map(down, &elem(&1, 1))
    end

    test "disconnect in the middle of a call: :node_down, Python cancelled there; the node rejoins" do
      pool = unique(:cluster_disconnect)
      {peer, node} = start_peer("disconnect")
      on_exit(fn -> stop_peer(peer) end)
      start_pool(peer, pool)
      wait_for_member(pool, node)
      tag = "disconnect_#{System.unique_integer([:positive])}"

      {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [], pool: pool, timeout: 30_000)
      assert :peer.call(peer, SnakeBridge.Cluster.Relay, :held_objects, []) == 1
      {:ok, ref} = Native.call_async("sbhelpers", "sleep_and_record", [2.0, tag], pool: pool)
      Process.sleep(200)
      true = Node.disconnect(node)

      assert_receive {:snakebridge, ^ref,
                      {:error, %Error{reason: :node_down, details: %{node: ^node}}}},
                     5_000

      refute_receive {:snakebridge, ^ref, _}, 2_500
      # The node holding the counter for this one let it go.
      assert :peer.call(peer, SnakeBridge.Cluster.Relay, :held_objects, []) == 0

      # Nothing of the pool is left here, so a call has nowhere to go.
      assert {:error, %Error{reason: :pool_not_found}} =
               SnakeBridge.call("sbhelpers", "pid", [], pool: pool)

      true = Node.connect(node)
      wait_for_member(pool, node)
      assert {:ok, recorded} = SnakeBridge.call("sbhelpers", "recorded", [], pool: pool)
      refute tag in recorded
      assert {:error, %Error{reason: :stale_handle}} = SnakeBridge.method(counter, "add")

      # A call/4, which waits for its reply, in the middle of a disconnect.
      tag = "disconnect_call_#{System.unique_integer([:positive])}"
      parent = self()

      spawn_link(fn ->
        result =
          SnakeBridge.call("sbhelpers", "sleep_and_record", [2.0, tag],
            pool: pool,
            timeout: 30_000
          )

        extra = receive do: (m -> m), after: (2_500 -> nil)
        send(parent, {:called, result, extra})
      end)

      Process.sleep(300)
      true = Node.disconnect(node)

      assert_receive {:called, {:error, %Error{reason: :node_down, details: %{node: ^node}}}, nil},
                     10_000

      true = Node.connect(node)
      wait_for_member(pool, node)
      assert {:ok, recorded} = SnakeBridge.call("sbhelpers", "recorded", [], pool: pool)
      refute tag in recorded
      assert {:ok, pid} = SnakeBridge.call("sbhelpers", "pid", [], pool: pool)
      assert pid in remote_pids(peer, pool)
    end
  end
end
