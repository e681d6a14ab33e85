defmodule SnakeBridge.LogTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Pool, TestLogHandler}

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp start_pool(opts \\ []) do
    name = unique(:log_pool)
    pid = start_supervised!({Pool, pool_opts(name, Keyword.merge([size: 1], opts))})
    TestLogHandler.attach(name)
    {name, pid}
  end

  test "logging records keep their level; lines name their caller, module and function" do
    {pool, _} = start_pool()
    tag = "t#{System.unique_integer([:positive])}"
    assert SnakeBridge.call("sbhelpers", "log_at_levels", [tag], pool: pool) == {:ok, nil}

    for level <- [:debug, :info, :warning, :error, :critical] do
      message = "#{level} #{tag}"
      assert_receive {:log, ^level, ^message, meta}, 5_000
      assert meta[:caller] == self()
      assert meta[:python_module] == "sbhelpers"
      assert meta[:python_function] == "log_at_levels"
      assert is_integer(meta[:python_worker])
    end
  end

  test "print lines are :info and stderr lines :warning, with their call" do
    {pool, _} = start_pool()
    tag = "t#{System.unique_integer([:positive])}"
    assert {:ok, [1]} = SnakeBridge.call("sbhelpers", "print_and_return", [tag, [1]], pool: pool)
    assert_receive {:log, :info, "stdout says " <> ^tag, meta}, 5_000
    assert {meta[:caller], meta[:python_function]} == {self(), "print_and_return"}
    assert_receive {:log, :warning, "stderr says " <> ^tag, _}, 5_000
  end

  test "text without a final newline ends with its call, not glued to the next" do
    {pool, _} = start_pool()
    assert SnakeBridge.call("sbhelpers", "write", ["first, no newline"], pool: pool) == {:ok, nil}
    assert SnakeBridge.call("sbhelpers", "write", ["second\n"], pool: pool) == {:ok, nil}
    assert_receive {:log, :info, "first, no newline", _}, 5_000
    assert_receive {:log, :info, "second", _}, 5_000
  end

  @tag :slow
  test "a flood of output leaves the pool's mailbox small and is counted" do
    {pool, pool_pid} = start_pool(log_queue: 100, log_rate: 100)
    lines = 200_000

    assert SnakeBridge.call("sbhelpers", "flood", [lines], pool: pool, timeout: 60_000) ==
             {:ok, lines}

    # Still responsive while the flood is being dropped.
    assert SnakeBridge.call("operator", "add", [1, 2], pool: pool) == {:ok, 3}
    assert {:message_queue_len, queued} = Process.info(pool_pid, :message_queue_len)
    assert queued <= 200

    {logged, dropped, warnings} = count_flood(lines, 0, 0, 0)
    assert logged + dropped == lines
    assert dropped > 0
    assert warnings >= 1
  end

  # Lines and drop warnings until every line of the flood is accounted for.
  defp count_flood(lines, logged, dropped, warnings) when logged + dropped >= lines,
    do: {logged, dropped, warnings}

  defp count_flood(lines, logged, dropped, warnings) do
    receive do
      {:log, :warning, "dropped " <> rest, meta} ->
        assert meta[:python_worker] == nil
        [count, "lines of Python output"] = String.split(rest, " ", parts: 2)
        count_flood(lines, logged, dropped + String.to_integer(count), warnings + 1)

      {:log, :info, _line, _meta} ->
        count_flood(lines, logged + 1, dropped, warnings)
    after
      30_000 -> flunk("#{logged} lines logged and #{dropped} dropped of #{lines}")
    end
  end
end
