defmodule SnakeBridge.CancelRaceTest do
  @moduledoc """
  Cancels and timeouts that race replies, end to end: whichever wins, the
  caller gets one outcome, no cancel stays pending in the runtime and no
  healthy worker is replaced.
  """

  # Not async: thousands of calls race on a 2-core machine.
  use ExUnit.Case, async: false

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Native, Pool}

  @moduletag timeout: 120_000

  setup do
    name = :"cancel_race_#{System.unique_integer([:positive])}"
    # Long enough that a lost cancel cannot be healed by a kill during the
    # test: it would show in `cancelling` and in calls that time out.
    start_supervised!({Pool, pool_opts(name, size: 2, cancel_grace: 60_000)})
    wait_until(fn -> Enum.all?(SnakeBridge.stats(name).workers, &(&1.state == :ready)) end, 10_000)
    %{pool: name}
  end

  test "cancels at 0 to 400 µs after the call leave the workers healthy", %{pool: pool} do
    outcomes =
      for i <- 1..4_000 do
        {:ok, ref} = Native.call_async("operator", "add", [i, 1], pool: pool)
        spin(:rand.uniform(400))

        case SnakeBridge.NIF.cancel(ref) do
          :cancelled ->
            :cancelled

          answered when answered in [:replied, :unknown] ->
            assert_receive {:snakebridge, ^ref, {:ok, result}}, 10_000
            assert result == i + 1
            :replied
        end
      end

    # Both outcomes occurred, so the race was really run.
    assert :cancelled in outcomes
    refute_received {:snakebridge, _, _}
    assert_healthy(pool)
  end

  test "calls that time out while their reply is on its way leave the workers healthy",
       %{pool: pool} do
    for i <- 1..2_000 do
      case SnakeBridge.call("operator", "add", [i, 1], pool: pool, timeout: 0) do
        {:ok, result} -> assert result == i + 1
        {:error, %SnakeBridge.Error{reason: :timeout}} -> :ok
      end
    end

    refute_received {:snakebridge, _, _}
    assert_healthy(pool)
  end

  defp assert_healthy(pool) do
    # The last cancels may still be on their way to the worker; a lost one
    # would stay until `cancel_grace` (a minute) and fail this wait.
    settled = fn ->
      stats = SnakeBridge.stats(pool)
      Enum.all?(stats.workers, &(&1.cancelling == 0)) && stats
    end

    stats = wait_until(settled, 10_000)
    assert Enum.all?(stats.workers, &(&1.restarts == 0)), inspect(stats)

    # Every worker takes calls again: more calls than one worker's window.
    for i <- 1..100 do
      assert {:ok, ^i} = SnakeBridge.call("operator", "pos", [i], pool: pool, timeout: 5_000)
    end
  end

  defp spin(micros) do
    until = System.monotonic_time(:microsecond) + micros
    spin_until(until)
  end

  defp spin_until(until) do
    if System.monotonic_time(:microsecond) < until, do: spin_until(until)
  end
end
