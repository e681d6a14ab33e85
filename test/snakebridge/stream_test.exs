defmodule SnakeBridge.StreamTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Object, PythonError}

  @pool :stream_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    # sbobjects imports asyncio, which is slow: import it in both workers
    # before tests with short timeouts run.
    for _ <- 1..4, do: {:ok, _} = SnakeBridge.call("sbobjects", "pid", [], pool: @pool)
    :ok
  end

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp tmp_path(tag) do
    Path.join(System.tmp_dir!(), "sb_stream_#{tag}_#{System.unique_integer([:positive])}")
  end

  defp refute_stream_messages do
    refute_received {:snakebridge_stream, _, _}
    refute_received {:snakebridge, _, _}
  end

  test "a generator's items, in order, across many batches" do
    assert SnakeBridge.stream("sbobjects", "numbers", [10_000], pool: @pool, window: 16)
           |> Enum.to_list() == Enum.to_list(0..9_999)

    refute_stream_messages()
  end

  test "any iterable streams, and nothing runs before enumeration" do
    stream = SnakeBridge.stream("builtins", "range", [5], pool: @pool)
    assert %{calls: calls} = SnakeBridge.stats(@pool)
    assert SnakeBridge.stats(@pool).calls == calls
    assert Enum.to_list(stream) == [0, 1, 2, 3, 4]
    # Each enumeration runs the call again.
    assert Enum.sum(stream) == 10

    assert SnakeBridge.stream("builtins", "dict.fromkeys", [["a", "b"]], pool: @pool) |> Enum.sort() ==
             ["a", "b"]
  end

  test "large items" do
    sizes =
      SnakeBridge.stream("sbobjects", "blobs", [12, 1_048_576], pool: @pool, window: 4)
      |> Enum.map(&byte_size/1)

    assert sizes == List.duplicate(1_048_576, 12)
  end

  test "items without an Elixir equivalent are objects" do
    counters = SnakeBridge.stream("sbobjects", "counters", [3], pool: @pool) |> Enum.to_list()
    assert [%Object{repr: "Counter(0)"}, %Object{}, %Object{repr: "Counter(2)"} = last] = counters
    assert SnakeBridge.method!(last, "add") == 3
  end

  test "streaming an object, or one of its methods" do
    {:ok, range} = SnakeBridge.call("builtins", "range", [3], pool: @pool, as: :handle)
    assert SnakeBridge.stream(range) |> Enum.to_list() == [0, 1, 2]

    # With function nil the object is called, and the result iterated.
    {:ok, numbers} = SnakeBridge.getattr(range, "index")
    {:ok, gen} = SnakeBridge.call("sbobjects", "counters", [2], pool: @pool, as: :handle)
    assert [%Object{}, %Object{}] = SnakeBridge.stream(gen) |> Enum.to_list()
    assert {:error, %PythonError{type: "ValueError"}} = SnakeBridge.call(numbers, [7])
    {:ok, make} = SnakeBridge.eval("lambda n: (i * i for i in range(n))", %{}, pool: @pool)
    assert SnakeBridge.stream(make, nil, [4]) |> Enum.to_list() == [0, 1, 4, 9]

    {:ok, dict} =
      SnakeBridge.call("builtins", "dict", [], pool: @pool, kwargs: [x: 1, y: 2], as: :handle)

    assert SnakeBridge.stream(dict, "items") |> Enum.to_list() == [{"x", 1}, {"y", 2}]
  end

  test "halting early closes the generator in Python: its finally runs" do
    path = tmp_path("halt")

    assert SnakeBridge.stream("sbobjects", "guarded", [path], pool: @pool) |> Enum.take(3) == [
             0,
             1,
             2
           ]

    wait_until(fn -> File.read(path) == {:ok, "closed"} end)
    refute_stream_messages()
    assert SnakeBridge.call("sbhelpers", "identity", [1], pool: @pool) == {:ok, 1}
    File.rm(path)
  end

  test "an exception mid-stream is raised after the items before it" do
    stream = SnakeBridge.stream("sbobjects", "fail_after", [5], pool: @pool, window: 2)
    parent = self()

    error =
      assert_raise PythonError, fn ->
        stream |> Stream.each(&send(parent, {:item, &1})) |> Stream.run()
      end

    assert error.type == "ValueError"
    assert error.message == "failed after 5"
    for i <- 0..4, do: assert_received({:item, ^i})
    refute_stream_messages()
  end

  test "errors before the first item raise" do
    assert_raise PythonError, ~r/TypeError/, fn ->
      SnakeBridge.stream("sbhelpers", "identity", [1], pool: @pool) |> Enum.to_list()
    end

    assert_raise PythonError, ~r/ModuleNotFoundError/, fn ->
      SnakeBridge.stream("no_such_module_xyz", "f", [], pool: @pool) |> Enum.to_list()
    end

    assert_raise Error, ~r/no SnakeBridge pool/, fn ->
      SnakeBridge.stream("builtins", "range", [1], pool: :no_such_pool) |> Enum.to_list()
    end

    assert_raise ArgumentError, ~r/:window/, fn ->
      SnakeBridge.stream("builtins", "range", [1], window: 0)
    end
  end

  test "backpressure: the generator runs at most a window ahead of the consumer" do
    pool = unique(:stream_backpressure)
    start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})
    assert_backpressure(pool, 8)
  end

  test "an async generator streams like a generator" do
    assert SnakeBridge.stream("sbobjects", "async_numbers", [5, 0.001], pool: @pool)
           |> Enum.to_list() ==
             [0, 1, 2, 3, 4]
  end

  test "a stream that sends nothing within :timeout is closed and raises" do
    path = tmp_path("timeout")
    stream = SnakeBridge.stream("sbobjects", "slow_guarded", [path], pool: @pool, timeout: 300)
    parent = self()

    assert_raise Error, ~r/no item within 300 ms/, fn ->
      stream |> Stream.each(&send(parent, {:item, &1})) |> Stream.run()
    end

    assert_received {:item, 0}
    # The cancel interrupted the generator's sleep, so its finally ran.
    wait_until(fn -> File.read(path) == {:ok, "closed"} end)
    refute_stream_messages()
    File.rm(path)
  end

  test "a consumer that dies mid-stream has its generator closed" do
    path = tmp_path("dead_consumer")
    parent = self()

    consumer =
      spawn(fn ->
        SnakeBridge.stream("sbobjects", "guarded", [path], pool: @pool, window: 4)
        |> Stream.each(fn i -> if i == 2, do: send(parent, :consuming) end)
        |> Stream.run()
      end)

    assert_receive :consuming, 5_000
    Process.exit(consumer, :kill)
    # The watchdog cancels the running calls of dead callers about once a second.
    wait_until(fn -> File.read(path) == {:ok, "closed"} end)
    File.rm(path)
  end

  test "a worker dying mid-stream raises :worker_exited" do
    pool = unique(:stream_crash)
    start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})
    [%{os_pid: os_pid}] = wait_for_workers(pool, 1).workers

    error =
      assert_raise Error, fn ->
        SnakeBridge.stream("sbobjects", "numbers", [1_000_000], pool: pool, window: 4)
        |> Stream.each(fn
          10 -> System.cmd("kill", ["-9", Integer.to_string(os_pid)])
          _ -> :ok
        end)
        |> Stream.run()
      end

    assert error.reason == :worker_exited
  end
end
