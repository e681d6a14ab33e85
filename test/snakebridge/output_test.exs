defmodule SnakeBridge.OutputTest do
  use ExUnit.Case, async: true

  import ExUnit.CaptureIO
  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Native, TestLogHandler}

  defp start_pool(opts \\ []) do
    name = :"output_#{System.unique_integer([:positive])}"
    start_supervised!({SnakeBridge.Pool, pool_opts(name, Keyword.merge([size: 1], opts))}, id: name)
    TestLogHandler.attach(name)
    wait_until(fn -> Enum.all?(SnakeBridge.stats(name).workers, &(&1.state == :ready)) end, 30_000)
    name
  end

  defp lines(n), do: Enum.map_join(0..(n - 1), &"line #{&1}\n")

  test "output: :caller writes stdout and stderr to the group leader, in order, before the call returns" do
    pool = start_pool()

    output =
      capture_io(fn ->
        assert {:ok, "t1"} =
                 SnakeBridge.call("sbaffinity", "print_both", ["t1"], pool: pool, output: :caller)

        IO.write("after\n")
      end)

    assert output == "out 1 t1\nerr 2 t1\nout 3 t1\nafter\n"
    refute_receive {:log, _, _, %{python_function: _}}, 200
    refute_received {:snakebridge_output, _, _, _}
  end

  test "nothing is lost: thousands of lines, all written by the time call/4 returns" do
    pool = start_pool()

    output =
      capture_io(fn ->
        assert {:ok, 3000} =
                 SnakeBridge.call("sbaffinity", "print_lines", [3000], pool: pool, output: :caller)
      end)

    assert output == lines(3000)
  end

  test "the pool's output: :caller is the default of its calls; output: :log overrides it" do
    pool = start_pool(output: :caller)

    assert capture_io(fn -> SnakeBridge.call!("sbaffinity", "print_lines", [2], pool: pool) end) ==
             lines(2)

    assert capture_io(fn ->
             SnakeBridge.call!("sbaffinity", "print_lines", [1], pool: pool, output: :log)
           end) == ""

    assert_receive {:log, :info, "line 0", meta}, 5_000
    assert meta[:caller] == self()
  end

  test "the default stays the log" do
    pool = start_pool()

    assert capture_io(fn -> SnakeBridge.call!("sbaffinity", "print_lines", [1], pool: pool) end) ==
             ""

    assert_receive {:log, :info, "line 0", _}, 5_000
  end

  test "call_async/4 and await/2" do
    pool = start_pool()

    output =
      capture_io(fn ->
        {:ok, ref} =
          Native.call_async("sbaffinity", "print_lines", [5, "stderr"], pool: pool, output: :caller)

        assert SnakeBridge.await(ref) == {:ok, 5}
      end)

    assert output == lines(5)
  end

  test "call_async/4 delivers the lines as messages ahead of the reply" do
    pool = start_pool()
    {:ok, ref} = Native.call_async("sbaffinity", "print_both", ["m"], pool: pool, output: :caller)
    assert_receive {:snakebridge, ^ref, {:ok, "m"}}, 5_000

    {:messages, messages} = Process.info(self(), :messages)

    assert [
             {:snakebridge_output, ^ref, :stdout, "out 1 m"},
             {:snakebridge_output, ^ref, :stderr, "err 2 m"},
             {:snakebridge_output, ^ref, :stdout, "out 3 m"}
           ] = Enum.filter(messages, &(elem(&1, 0) == :snakebridge_output))

    assert capture_io(fn -> SnakeBridge.Output.flush(ref) end) == "out 1 m\nerr 2 m\nout 3 m\n"
  end

  test "text left without a newline is written as a line when the call ends" do
    pool = start_pool()

    output =
      capture_io(fn ->
        SnakeBridge.call!("sbaffinity", "write_partial", ["no newline"], pool: pool, output: :caller)

        SnakeBridge.call!("sbaffinity", "write_partial", ["next\n"], pool: pool, output: :caller)
      end)

    assert output == "no newline\nnext\n"
  end

  test "a stream's output comes in its place among the items" do
    pool = start_pool()

    output =
      capture_io(fn ->
        "sbaffinity"
        |> SnakeBridge.stream("counting", [50], pool: pool, output: :caller, window: 4)
        |> Enum.each(&IO.puts("item #{&1}"))
      end)

    lines = String.split(output, "\n", trim: true)
    assert Enum.filter(lines, &String.starts_with?(&1, "item")) == Enum.map(0..49, &"item #{&1}")

    for i <- 0..49 do
      made = Enum.find_index(lines, &(&1 == "making #{i}"))
      used = Enum.find_index(lines, &(&1 == "item #{i}"))
      assert made < used
    end
  end

  test "eval with output: :caller" do
    pool = start_pool()

    assert capture_io(fn ->
             SnakeBridge.eval!("print('hi from eval')", %{}, pool: pool, output: :caller)
           end) ==
             "hi from eval\n"
  end

  test "print(flush=True) sends the line while the call runs" do
    pool = start_pool()

    {:ok, ref} =
      Native.call_async("sbaffinity", "print_then_sleep", ["live", 0.5], pool: pool, output: :caller)

    assert_receive {:snakebridge_output, ^ref, :stdout, "before sleep live"}, 5_000
    refute_received {:snakebridge, ^ref, _}
    assert capture_io(fn -> assert SnakeBridge.await(ref) == {:ok, nil} end) == "after sleep live\n"
  end

  test "a call that times out still writes what it printed, and leaves no message behind" do
    pool = start_pool()

    output =
      capture_io(fn ->
        assert {:error, %Error{reason: :timeout}} =
                 SnakeBridge.call("sbaffinity", "print_then_sleep", ["to", 5],
                   pool: pool,
                   output: :caller,
                   timeout: 300
                 )
      end)

    assert output == "before sleep to\n"
    refute_receive {:snakebridge_output, _, _, _}, 200
  end

  test "after cancel/1, no line of the call arrives" do
    pool = start_pool()

    output =
      capture_io(fn ->
        {:ok, ref} =
          Native.call_async("sbaffinity", "print_then_sleep", ["c", 5], pool: pool, output: :caller)

        Process.sleep(300)
        assert SnakeBridge.cancel(ref) == :ok
      end)

    assert output == "before sleep c\n"
    refute_receive {:snakebridge_output, _, _, _}, 300
  end

  test "invalid :output values raise ArgumentError" do
    assert_raise ArgumentError, ~r/expected :output to be :caller or :log, got: :screen/, fn ->
      SnakeBridge.call("math", "sqrt", [1.0], output: :screen)
    end

    assert_raise ArgumentError, ~r/expected :output to be :log or :caller, got: "caller"/, fn ->
      SnakeBridge.Pool.config!(output: "caller")
    end
  end
end
