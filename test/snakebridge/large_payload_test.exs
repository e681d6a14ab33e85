defmodule SnakeBridge.LargePayloadTest do
  @moduledoc """
  Large calls and results: through each worker's shared memory (the
  default) and over the socket alone (`shared_memory: false`), the
  `:max_payload` limit, memory given back once results are garbage
  collected, and workers killed with large payloads in flight.
  """

  # Not async: the long_schedule test watches the whole VM.
  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Pool}

  @moduletag timeout: 180_000

  @mib 1024 * 1024

  defp start_pool!(opts) do
    name = :"large_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, pool_opts(name, Keyword.merge([size: 1], opts))})
    ready!(name)
    name
  end

  defp ready!(pool) do
    wait_until(fn -> Enum.all?(SnakeBridge.stats(pool).workers, &(&1.state == :ready)) end, 10_000)
  end

  defp worker_pid(pool), do: hd(SnakeBridge.stats(pool).workers).os_pid

  defp shared_memory(pool), do: Enum.map(SnakeBridge.stats(pool).workers, & &1.shared_memory)

  # Inodes of the arenas a process maps ("self" for the BEAM).
  defp arena_inodes(pid) do
    "/proc/#{pid}/maps"
    |> File.read!()
    |> String.split("\n")
    |> Enum.filter(&String.contains?(&1, "memfd:snakebridge-"))
    |> Enum.map(&(&1 |> String.split() |> Enum.at(4)))
  end

  defp random_bytes(size), do: <<255>> <> :crypto.strong_rand_bytes(size - 1)

  for shared <- [true, false] do
    @tag shared_memory: shared
    test "large bytes and strings cross both ways intact (shared_memory: #{shared})",
         %{shared_memory: shared} do
      pool = start_pool!(shared_memory: shared)

      for size <- [31 * 1024, 40 * 1024, 4 * @mib, 9 * @mib] do
        data = random_bytes(size)
        assert {:ok, ^data} = SnakeBridge.call("builtins", "bytes", [data], pool: pool)
      end

      text = String.duplicate("ünïcode ", 600_000)
      small = "small"
      mixed = [1, text, %{"k" => random_bytes(50_000), "s" => small}, 2.5]
      assert {:ok, ^mixed} = SnakeBridge.call("builtins", "list", [mixed], pool: pool)

      assert {:ok, 2_000_000} =
               SnakeBridge.call("builtins", "len", [random_bytes(2_000_000)], pool: pool)
    end
  end

  test "shared memory is given back once results are garbage collected, with no mapping or descriptor added" do
    pool = start_pool!([])
    [worker] = for w <- SnakeBridge.stats(pool).workers, do: w.os_pid
    fds = length(File.ls!("/proc/self/fd"))
    inodes = arena_inodes("self")

    kept = for _ <- 1..5, do: SnakeBridge.call!("builtins", "bytes", [2 * @mib], pool: pool)
    assert Enum.all?(kept, &(&1 == <<0::size(2 * @mib)-unit(8)>>))
    assert [held] = shared_memory(pool)
    assert held >= 10 * @mib, "the results lie in shared memory while referenced"

    # Many more than the shared memory holds at once, each dropped.
    for _ <- 1..200 do
      assert {:ok, <<0, _::binary>>} = SnakeBridge.call("builtins", "bytes", [@mib], pool: pool)
    end

    _ = Enum.map(kept, &byte_size/1)
    kept = nil
    :erlang.garbage_collect()
    assert kept == nil
    wait_until(fn -> shared_memory(pool) == [0] end, 5_000)
    assert [worker] == for(w <- SnakeBridge.stats(pool).workers, do: w.os_pid)
    assert length(File.ls!("/proc/self/fd")) <= fds + 1
    assert Enum.sort(arena_inodes("self")) == Enum.sort(inodes)
  end

  test "a result outlives its worker, whose memory is unmapped once the result is collected" do
    pool = start_pool!([])
    [worker] = for w <- SnakeBridge.stats(pool).workers, do: w.os_pid
    theirs = arena_inodes(worker)
    assert length(theirs) == 2

    data = random_bytes(3 * @mib)
    {:ok, result} = SnakeBridge.call("builtins", "bytes", [data], pool: pool)
    System.cmd("kill", ["-KILL", "#{worker}"])
    wait_until(fn -> worker_pid(pool) not in [nil, worker] end)
    ready!(pool)

    :erlang.garbage_collect()
    assert result == data, "still readable after its worker is gone"
    assert Enum.any?(theirs, &(&1 in arena_inodes("self")))

    result = nil
    :erlang.garbage_collect()
    assert result == nil
    wait_until(fn -> Enum.all?(theirs, &(&1 not in arena_inodes("self"))) end, 5_000)
  end

  test "a worker killed with large calls in flight answers :worker_exited and leaks nothing" do
    pool = start_pool!([])
    [worker] = for w <- SnakeBridge.stats(pool).workers, do: w.os_pid
    theirs = arena_inodes(worker)
    parent = self()

    call = fn module, function, args ->
      spawn_link(fn ->
        outcome = SnakeBridge.call(module, function, args, pool: pool, timeout: 30_000)
        send(parent, {:outcome, function, outcome})
      end)
    end

    # The worker sleeps; the large calls wait in its shared memory, unread.
    sleeper = call.("time", "sleep", [30])
    wait_until(fn -> hd(SnakeBridge.stats(pool).workers).in_flight == 1 end)
    callers = [sleeper | for(_ <- 1..3, do: call.("builtins", "len", [random_bytes(8 * @mib)]))]

    wait_until(fn -> shared_memory(pool) != [0] end, 10_000)
    System.cmd("kill", ["-KILL", "#{worker}"])

    outcomes = for _ <- callers, do: assert_receive({:outcome, f, outcome}, 30_000) && {f, outcome}
    assert Enum.any?(outcomes, &match?({"sleep", {:error, %Error{reason: :worker_exited}}}, &1))

    # A call the worker had been sent dies with it; one still waiting in the
    # host to be written is sent to the next worker instead.
    for {"len", outcome} <- outcomes do
      assert match?({:error, %Error{reason: :worker_exited}}, outcome) or outcome == {:ok, 8 * @mib}
    end

    assert Enum.any?(outcomes, &match?({"len", {:error, %Error{reason: :worker_exited}}}, &1))

    wait_until(fn -> worker_pid(pool) not in [nil, worker] end)
    ready!(pool)
    assert shared_memory(pool) == [0]
    wait_until(fn -> Enum.all?(theirs, &(&1 not in arena_inodes("self"))) end, 5_000)

    assert {:ok, 8_388_608} =
             SnakeBridge.call("builtins", "len", [random_bytes(8 * @mib)], pool: pool)
  end

  for shared <- [true, false] do
    @tag shared_memory: shared
    test "64 MiB calls and replies hold no normal scheduler for more than 10 ms (shared_memory: #{shared})",
         %{shared_memory: shared} do
      # 64 MiB and the value's header are over the socket's frame limit:
      # the socket-only pool carries values just under it.
      size = if shared, do: 64 * @mib, else: 64 * @mib - 4096
      pool = start_pool!(shared_memory: shared)
      argument = random_bytes(size)
      eval = &SnakeBridge.eval(&1, %{"n" => size}, pool: pool, timeout: 60_000)
      :erlang.system_monitor(self(), long_schedule: 10)

      try do
        assert {:ok, reply} =
                 SnakeBridge.call("builtins", "bytes", [size], pool: pool, timeout: 60_000)

        assert byte_size(reply) == size

        # A str is checked for UTF-8 as it is built, and a tensor's data
        # copied: work per byte, which a normal scheduler must not do at
        # this size.
        assert {:ok, text} = eval.("'é' * (n // 2)")
        assert byte_size(text) == size and String.valid?(text)

        assert {:ok, %SnakeBridge.Tensor{data: data, type: {:f, 64}}} =
                 eval.("__import__('array').array('d', bytes(n))")

        assert byte_size(data) == size

        assert {:ok, ^size} =
                 SnakeBridge.call("builtins", "len", [argument], pool: pool, timeout: 60_000)
      after
        :erlang.system_monitor(:undefined)
      end

      # Only normal schedulers count: dirty NIFs (the reader's decoding of
      # large frames, encoding large calls) run on dirty schedulers.
      long =
        for {:monitor, who, :long_schedule, info} <- flush_mailbox(),
            not dirty?(info),
            do: {who, info}

      assert long == []
    end
  end

  defp dirty?(info) do
    Enum.any?([info[:in], info[:out]], fn
      {SnakeBridge.NIF, name, _} -> String.ends_with?(Atom.to_string(name), "_dirty")
      _ -> false
    end)
  end

  describe ":max_payload" do
    test "calls and results over the limit fail with :payload_too_large, naming it" do
      pool = start_pool!(max_payload: @mib)

      assert {:error, %Error{reason: :payload_too_large, message: message}} =
               SnakeBridge.call("builtins", "len", [random_bytes(@mib + 1)], pool: pool)

      assert message =~ "1048576"

      assert {:error, %Error{reason: :payload_too_large, message: message}} =
               SnakeBridge.call("builtins", "bytes", [@mib + 1], pool: pool)

      assert message =~ "1048576"
      assert {:ok, _} = SnakeBridge.call("builtins", "bytes", [@mib - 100], pool: pool)
    end

    @tag :slow
    test "payloads above 64 MiB cross through shared memory up to the limit" do
      pool = start_pool!(max_payload: 100 * @mib)
      data = random_bytes(80 * @mib)

      assert {:ok, ^data} =
               SnakeBridge.call("builtins", "bytes", [data], pool: pool, timeout: 60_000)

      assert {:error, %Error{reason: :payload_too_large}} =
               SnakeBridge.call("builtins", "bytes", [101 * @mib], pool: pool, timeout: 60_000)
    end

    @tag :slow
    test "a result over 64 MiB finds no room while earlier ones are referenced" do
      # Room for two results of the limit: two held fill it.
      pool = start_pool!(max_payload: 66 * @mib)
      size = 65 * @mib

      held =
        for _ <- 1..2,
            do: SnakeBridge.call!("builtins", "bytes", [size], pool: pool, timeout: 60_000)

      assert {:error, %Error{reason: :payload_too_large, message: message}} =
               SnakeBridge.call("builtins", "bytes", [size], pool: pool, timeout: 60_000)

      assert message =~ "no room"
      assert Enum.map(held, &byte_size/1) == [size, size]

      held = nil
      :erlang.garbage_collect()
      assert held == nil
      wait_until(fn -> shared_memory(pool) == [0] end, 5_000)

      assert {:ok, reply} =
               SnakeBridge.call("builtins", "bytes", [size], pool: pool, timeout: 60_000)

      assert byte_size(reply) == size
    end

    test "without shared memory, 64 MiB is the most a payload may be" do
      pool = start_pool!(shared_memory: false)

      assert {:error, %Error{reason: :payload_too_large, message: message}} =
               SnakeBridge.call("builtins", "bytes", [64 * @mib], pool: pool, timeout: 60_000)

      assert message =~ "67108864"
    end

    test "invalid values raise ArgumentError naming the option" do
      for bad <- [0, @mib - 1, 2 ** 32, 1.5, "big", nil] do
        assert_raise ArgumentError, ~r/:max_payload/, fn -> Pool.config!(max_payload: bad) end
      end

      assert_raise ArgumentError, ~r/:max_payload.*without :shared_memory/, fn ->
        Pool.config!(max_payload: 65 * @mib, shared_memory: false)
      end

      assert_raise ArgumentError, ~r/:shared_memory/, fn -> Pool.config!(shared_memory: :yes) end
      assert %{max_payload: 268_435_456, shared_memory: true} = Pool.config!([])
      assert %{max_payload: 67_108_864} = Pool.config!(shared_memory: false)
    end
  end
end
