defmodule SnakeBridge.Cluster.OutboxTest do
  use ExUnit.Case, async: true

  alias SnakeBridge.Cluster.Outbox

  test "each destination gets its ops in the order queued, in one batch" do
    outbox =
      Enum.reduce([{:a, 1}, {:b, 2}, {:a, 3}], Outbox.new(), fn {d, op}, o ->
        Outbox.put(o, d, op)
      end)

    assert Outbox.timeout(outbox) == 0
    {batches, outbox} = Outbox.take(outbox)
    assert Enum.sort(batches) == [a: [1, 3], b: [2]]
    assert Outbox.timeout(outbox) == :infinity
    assert Outbox.take(outbox) == {[], Outbox.new()}
  end

  test "is full at 256 ops, whatever their destinations" do
    outbox = Enum.reduce(1..255, Outbox.new(), &Outbox.put(&2, rem(&1, 3), &1))
    refute Outbox.full?(outbox)
    assert Outbox.full?(Outbox.put(outbox, :x, 256))
  end

  test "drops the destinations that are gone and keeps the count of the rest" do
    outbox = Enum.reduce(1..6, Outbox.new(), &Outbox.put(&2, rem(&1, 2), &1))
    {dropped, outbox} = Outbox.drop(outbox, &(&1 == 1))
    assert dropped == [1, 3, 5]
    assert Outbox.take(outbox) |> elem(0) == [{0, [2, 4, 6]}]
    assert {[], ^outbox} = Outbox.drop(outbox, fn _ -> false end)
    {_, outbox} = Outbox.drop(outbox, fn _ -> true end)
    assert Outbox.timeout(outbox) == :infinity
  end
end
