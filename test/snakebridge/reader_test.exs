defmodule SnakeBridge.ReaderTest do
  @moduledoc """
  Replies read through a VM port by a process per worker
  (`SnakeBridge.Reader`): under load, with large payloads, and with workers
  killed, every kind of message still arrives, and no normal scheduler is
  held or blocked on the way.
  """

  # Not async: these tests load both schedulers on purpose and watch for
  # long schedules VM-wide.
  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Native, Pool}

  @moduletag timeout: 180_000

  defp start_pool!(opts) do
    name = :"reader_#{System.unique_integer([:positive])}"
    start_supervised!({Pool, pool_opts(name, opts)})
    wait_until(fn -> Enum.all?(SnakeBridge.stats(name).workers, &(&1.state == :ready)) end, 10_000)
    name
  end

  test "many callers of 100 KiB calls keep getting answers" do
    # A caller's write that the socket takes only in part must not wait on
    # a scheduler: the worker may be waiting for its replies to be read,
    # which takes a scheduler.
    pool = start_pool!(size: 2)
    payload = SnakeBridge.bytes(<<255>> <> :rand.bytes(100 * 1024 - 1))

    results =
      1..128
      |> Task.async_stream(
        fn _ ->
          for _ <- 1..40 do
            SnakeBridge.call("copy", "copy", [payload], pool: pool, timeout: 20_000)
          end
        end,
        max_concurrency: 128,
        timeout: 120_000
      )
      |> Enum.flat_map(fn {:ok, replies} -> replies end)

    assert length(results) == 128 * 40
    assert Enum.all?(results, &match?({:ok, _}, &1))
  end

  test "a 60 MiB reply holds no normal scheduler for more than 10 ms" do
    pool = start_pool!(size: 1)
    :erlang.system_monitor(self(), long_schedule: 10)

    try do
      assert {:ok, reply} =
               SnakeBridge.eval("b'x' * (60 * 1024 * 1024)", %{}, pool: pool, timeout: 60_000)

      assert byte_size(reply) == 60 * 1024 * 1024
    after
      :erlang.system_monitor(:undefined)
    end

    long = for {:monitor, who, :long_schedule, info} <- flush_mailbox(), do: {who, info}
    assert long == []
  end

  test "a reply of many small values is decoded off the normal schedulers" do
    # Building terms costs per value: 120,000 one-letter strings make a
    # frame under the reader's byte budget that takes milliseconds to
    # decode, while the reader's other work on a normal scheduler takes
    # microseconds.
    pool = start_pool!(size: 1)
    :erlang.system_monitor(self(), long_schedule: 5)

    try do
      assert {:ok, list} =
               SnakeBridge.eval("[i % 100 for i in range(1_000_000)]", %{},
                 pool: pool,
                 timeout: 60_000
               )

      assert length(list) == 1_000_000
    after
      :erlang.system_monitor(:undefined)
    end

    # Only the reader's own schedules count: this process's garbage
    # collection of the list is not the reader's doing.
    readers =
      for {:monitor, _who, :long_schedule, info} <- flush_mailbox(),
          {SnakeBridge.Reader, _, _} <- [info[:in], info[:out]],
          do: info

    assert readers == []
  end

  test "every kind of message arrives under load while a worker is killed" do
    pool = start_pool!(size: 2)
    [victim, _] = for w <- SnakeBridge.stats(pool).workers, do: w.os_pid

    parent = self()

    callers =
      for i <- 1..16 do
        spawn_link(fn ->
          outcomes =
            for j <- 1..60 do
              case rem(j, 4) do
                0 ->
                  SnakeBridge.call("operator", "add", [i, j], pool: pool, timeout: 20_000)

                1 ->
                  SnakeBridge.call("operator", "truediv", [i, 0], pool: pool, timeout: 20_000)

                2 ->
                  try do
                    SnakeBridge.stream("builtins", "range", [5], pool: pool, timeout: 20_000)
                    |> Enum.to_list()
                    |> then(&{:ok, &1})
                  rescue
                    error in Error -> {:error, error}
                  end

                3 ->
                  SnakeBridge.call("builtins", "print", ["line #{i}-#{j}"],
                    pool: pool,
                    timeout: 20_000
                  )
              end
            end

          send(parent, {:outcomes, outcomes})
        end)
      end

    Process.sleep(100)
    System.cmd("kill", ["-KILL", "#{victim}"])

    outcomes =
      for _ <- callers, reduce: [] do
        acc ->
          receive do
            {:outcomes, o} -> o ++ acc
          after
            60_000 -> flunk("a caller hung")
          end
      end

    assert length(outcomes) == 16 * 60
    kinds = Enum.frequencies_by(outcomes, &kind/1)
    # Replies, Python errors and stream items came through; a killed
    # worker's calls ended with a typed error, nothing else went wrong.
    assert kinds[:value] > 0 and kinds[:python_error] > 0 and kinds[:items] > 0
    assert Map.keys(kinds) -- [:value, :python_error, :items, :worker_exited] == []

    # The replacement started (a worker event) and serves.
    wait_until(fn -> victim not in for(w <- SnakeBridge.stats(pool).workers, do: w.os_pid) end)
    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
    assert Enum.sum(for w <- SnakeBridge.stats(pool).workers, do: w.restarts) == 1
  end

  test "a worker killed with calls it had not read is seen to exit" do
    # It leaves a reset on the socket, on which the VM's fd driver stops
    # reading without a word: the reader learns of the exit from the pool,
    # and the call fails as any call of a killed worker does (not as one
    # whose worker nothing read to the end).
    pool = start_pool!(size: 1)
    [%{os_pid: frozen}] = SnakeBridge.stats(pool).workers
    System.cmd("kill", ["-STOP", "#{frozen}"])
    {:ok, ref} = Native.call_async("operator", "add", [1, 2], pool: pool)
    Process.sleep(100)
    System.cmd("kill", ["-KILL", "#{frozen}"])

    assert_receive {:snakebridge, ^ref, {:error, %Error{reason: :worker_exited} = error}}, 20_000
    assert error.details.signal == 9
    assert error.message =~ "exited (signal 9) while running the call"

    wait_until(fn ->
      match?([%{state: :ready, os_pid: p}] when p != frozen, SnakeBridge.stats(pool).workers)
    end)

    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
  end

  test "a worker whose reader process dies is replaced" do
    name = :"reader_#{System.unique_integer([:positive])}"
    pool_pid = start_supervised!({Pool, pool_opts(name, size: 1)})
    [worker] = wait_until(fn -> ready_pids(name) end, 10_000)
    %{readers: %{^worker => reader}} = :sys.get_state(pool_pid)
    Process.exit(reader, :kill)

    wait_until(fn -> (pids = ready_pids(name)) && pids != [worker] end, 15_000)
    assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: name)
  end

  defp ready_pids(pool) do
    workers = SnakeBridge.stats(pool).workers
    if Enum.all?(workers, &(&1.state == :ready)), do: Enum.map(workers, & &1.os_pid)
  end

  defp kind({:ok, [0, 1, 2, 3, 4]}), do: :items
  defp kind({:ok, _}), do: :value
  defp kind({:error, %SnakeBridge.PythonError{type: "ZeroDivisionError"}}), do: :python_error
  defp kind({:error, %Error{reason: reason}}), do: reason
end
