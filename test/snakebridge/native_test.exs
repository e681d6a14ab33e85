defmodule SnakeBridge.NativeTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Native}

  @pool :native_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    :ok
  end

  defp identity(args, opts \\ []) do
    Native.call_async("sbhelpers", "identity", args, Keyword.put(opts, :pool, @pool))
  end

  defp assert_still_works do
    {:ok, ref} = identity([:still_works])
    assert SnakeBridge.await(ref) == {:ok, "still_works"}
  end

  describe "call_async/4" do
    test "returns a ref and the reply is one message" do
      assert {:ok, ref} = identity([[1, 2, 3]])
      assert_receive {:snakebridge, ^ref, {:ok, [1, 2, 3]}}, 5_000
      refute_receive {:snakebridge, ^ref, _}, 100
    end

    test "call_async/3 uses the default pool" do
      assert {:ok, ref} = Native.call_async("math", "sqrt", [4.0])
      assert_receive {:snakebridge, ^ref, {:ok, 2.0}}, 5_000
    end

    test "errors come as messages too" do
      {:ok, ref} = Native.call_async("operator", "truediv", [1, 0], pool: @pool)

      assert_receive {:snakebridge, ^ref,
                      {:error, %SnakeBridge.PythonError{type: "ZeroDivisionError"}}},
                     5_000
    end

    test "rejects :timeout and unknown options" do
      assert_raise ArgumentError, fn -> identity([1], timeout: 100) end
      assert_raise ArgumentError, fn -> identity([1], nope: 1) end
      assert_raise ArgumentError, fn -> Native.call_async("m", "f", [], pool: "not an atom") end
    end

    test "a request run for another node's process keeps none of its caller's own flags" do
      opts = [pool: @pool]

      timed = Native.timed_request!("sbhelpers", "identity", [1], opts)
      {:ok, ref} = timed |> Native.ask_alone() |> Native.spread() |> Native.submit_local(5_000)
      # A plain reply, not {:timed, result, timing}.
      assert_receive {:snakebridge, ^ref, {:ok, 1}}, 5_000

      # The relay's own ask: this module's pool has nothing else running.
      request = Native.request!("sbhelpers", "identity", [2], opts)

      assert {:alone, ref} =
               request |> Native.spread() |> Native.ask_alone() |> Native.submit_local(5_000)

      assert_receive {:snakebridge, ^ref, {:ok, 2}}, 5_000

      # One of a burst (CALL_BURST): the worker only polls less after it.
      burst = Native.in_burst(request)
      assert {_, _, _, _, _, {flags, 0}, _} = burst
      assert Bitwise.band(flags, 16) == 16
      {:ok, ref} = burst |> Native.spread() |> Native.submit_local(5_000)
      assert_receive {:snakebridge, ^ref, {:ok, 2}}, 5_000
    end

    test "unknown pool" do
      assert {:error, %Error{reason: :pool_not_found}} =
               Native.call_async("math", "sqrt", [1.0], pool: :no_such_pool)
    end
  end

  describe "unsupported arguments: a typed error naming where, and the pool keeps working" do
    test "pid" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} = identity([self()])
      assert message =~ "args[0]"
      assert_still_works()
    end

    test "reference, nested" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               identity([[1, 2, make_ref()]])

      assert message =~ "args[0][2]"
      assert_still_works()
    end

    test "function" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               identity([1, {:ok, fn -> :ok end}])

      assert message =~ "args[1]"
      assert_still_works()
    end

    test "port" do
      port = Port.open({:spawn, "cat"}, [])

      try do
        assert {:error, %Error{reason: :unsupported_type, message: message}} = identity([port])
        assert message =~ "args[0]"
      after
        Port.close(port)
      end

      assert_still_works()
    end

    test "bitstring that is not a binary" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               identity([%{"key" => <<1::3>>}])

      assert message =~ "args[0]"
      assert_still_works()
    end

    test "unsupported struct" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               identity([URI.parse("http://example.com")])

      assert message =~ "args[0]"
      assert_still_works()
    end

    test "in kwargs" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               Native.call_async("sbhelpers", "echo", [], pool: @pool, kwargs: [x: self()])

      assert message =~ "kwargs"
      assert_still_works()
    end

    test "through SnakeBridge.call/4" do
      assert {:error, %Error{reason: :unsupported_type}} =
               SnakeBridge.call("sbhelpers", "identity", [self()], pool: @pool)

      refute_receive {:snakebridge, _, _}, 100
    end

    test "nesting deeper than the limit" do
      deep = Enum.reduce(1..150, 1, fn _, acc -> [acc] end)
      assert {:error, %Error{reason: :nesting_too_deep, message: message}} = identity([deep])
      assert message =~ "args[0]"

      deep_map = Enum.reduce(1..150, 1, fn _, acc -> %{"k" => acc} end)
      assert {:error, %Error{reason: :nesting_too_deep}} = identity([deep_map])

      assert_still_works()
    end

    @tag :slow
    test "a payload over the pool's :max_payload (the 64 MiB frame limit without shared memory)" do
      socket_only = :"native_test_socket_#{System.unique_integer([:positive])}"
      start_supervised!({SnakeBridge.Pool, pool_opts(socket_only, size: 1, shared_memory: false)})
      big = :binary.copy(<<255>>, 65 * 1024 * 1024)

      for arg <- [big, SnakeBridge.bytes(big)] do
        assert {:error, %Error{reason: :payload_too_large, message: message}} =
                 Native.call_async("sbhelpers", "identity", [arg], pool: socket_only)

        assert message =~ "67108864"
      end

      {:ok, ref} = Native.call_async("sbhelpers", "identity", [:still_works], pool: socket_only)
      assert SnakeBridge.await(ref) == {:ok, "still_works"}
    end
  end

  describe "cancel/1 of a queued call" do
    setup do
      name = :"native_test_single_#{System.unique_integer([:positive])}"
      start_supervised!({SnakeBridge.Pool, pool_opts(name, size: 1)})
      wait_for_workers(name, 1)
      %{single: name}
    end

    test "the cancelled call never runs and no message ever arrives", %{single: single} do
      {:ok, busy} = Native.call_async("sbhelpers", "sleep_and_record", [0.5, "busy"], pool: single)
      {:ok, queued} = Native.call_async("sbhelpers", "record", ["queued"], pool: single)

      assert SnakeBridge.cancel(queued) == :ok

      assert SnakeBridge.await(busy) == {:ok, "busy"}
      refute_receive {:snakebridge, ^queued, _}, 500

      assert SnakeBridge.call("sbhelpers", "recorded", [], pool: single) == {:ok, ["busy"]}
    end
  end
end
