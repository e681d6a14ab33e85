defmodule SnakeBridge.PollTest do
  # How SnakeBridge.call/4 waits for the reply of a call that went to an
  # idle worker. The replies here are sent by the test itself, so that each
  # case decides exactly when a reply comes and how long a wait takes. Not
  # async: a quick wait must not be slowed past 20 µs by other tests' work.
  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Native, Poll}

  @mode :"$snakebridge_poll"

  # An await/2 that records that the process waited, then receives the
  # reply `delay_ms` from now (at once for 0).
  defp await_after(delay_ms) do
    test = self()

    fn ref, _timeout ->
      send(test, {:waited, ref})

      if delay_ms == 0,
        do: send(test, {:snakebridge, ref, {:ok, :late}}),
        else: Process.send_after(test, {:snakebridge, ref, {:ok, :late}}, delay_ms)

      receive do
        {:snakebridge, ^ref, result} -> result
      end
    end
  end

  test "a reply that is already there is taken without waiting" do
    ref = make_ref()
    send(self(), {:snakebridge, ref, {:ok, 1}})
    assert Poll.reply(ref, 1_000, await_after(0)) == {:ok, 1}
    refute_received {:waited, _}
    assert Process.get(@mode) == nil
  end

  test "a poll that misses its reply waits for it, and the next call waits at once" do
    ref = make_ref()
    assert Poll.reply(ref, 1_000, await_after(0)) == {:ok, :late}
    assert_received {:waited, ^ref}
    assert Process.get(@mode) == 0

    # Waiting now, even with the reply already there.
    ref = make_ref()
    assert Poll.reply(ref, 1_000, await_after(0)) == {:ok, :late}
    assert_received {:waited, ^ref}
  end

  test "slow waits in a row bring polling back; a quick one starts the count again" do
    Process.put(@mode, 0)

    assert Poll.reply(make_ref(), 1_000, await_after(5)) == {:ok, :late}
    assert Process.get(@mode) == 1
    assert Poll.reply(make_ref(), 1_000, await_after(0)) == {:ok, :late}
    assert Process.get(@mode) == 0

    for count <- [1, 2] do
      assert Poll.reply(make_ref(), 1_000, await_after(5)) == {:ok, :late}
      assert Process.get(@mode) == count
    end

    assert Poll.reply(make_ref(), 1_000, await_after(5)) == {:ok, :late}
    assert Process.get(@mode) == nil

    ref = make_ref()
    send(self(), {:snakebridge, ref, {:ok, 2}})
    assert Poll.reply(ref, 1_000, await_after(0)) == {:ok, 2}
    refute_received {:waited, ^ref}
  end

  test "a call with no time to wait does not poll" do
    ref = make_ref()
    send(self(), {:snakebridge, ref, {:ok, 3}})
    assert Poll.reply(ref, 0, fn ^ref, 0 -> :gave_up end) == :gave_up
  end

  describe "which calls the NIF says went to an idle worker" do
    setup do
      pool = :"poll_test_#{System.unique_integer([:positive])}"
      start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})
      # Ready: calls to a starting worker wait in the pool's queue.
      assert {:ok, _} = SnakeBridge.call("operator", "add", [0, 0], pool: pool)
      %{pool: pool}
    end

    test "a call/4 to an idle worker, but not one behind a running call", %{pool: pool} do
      assert {{:alone, ref}, 1_000} =
               Native.start_call("operator", "add", [1, 2], [pool: pool], 1_000)

      assert_receive {:snakebridge, ^ref, {:ok, 3}}, 2_000

      {:ok, slow} = Native.call_async("sbhelpers", "sleep", [0.3], pool: pool)
      assert {{:ok, ref}, 1_000} = Native.start_call("operator", "add", [1, 2], [pool: pool], 1_000)
      assert_receive {:snakebridge, ^slow, {:ok, nil}}, 2_000
      assert_receive {:snakebridge, ^ref, {:ok, 3}}, 2_000
    end

    test "never a call whose output comes to the caller, nor call_async/4", %{pool: pool} do
      opts = [pool: pool, output: :caller]
      assert {{:ok, ref}, 1_000} = Native.start_call("operator", "add", [1, 2], opts, 1_000)
      assert_receive {:snakebridge, ^ref, {:ok, 3}}, 2_000

      assert {:ok, ref} = Native.call_async("operator", "add", [1, 2], pool: pool)
      assert_receive {:snakebridge, ^ref, {:ok, 3}}, 2_000
    end

    test "call/4 answers the same either way", %{pool: pool} do
      Process.put(:"$snakebridge_poll", 0)
      assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
      Process.delete(:"$snakebridge_poll")
      assert {:ok, 3} = SnakeBridge.call("operator", "add", [1, 2], pool: pool)
      assert {:ok, "late"} = SnakeBridge.call("sbhelpers", "sleep", [0.01, "late"], pool: pool)
      refute_received {:snakebridge, _, _}
    end
  end
end
