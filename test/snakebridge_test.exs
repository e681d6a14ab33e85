defmodule SnakeBridgeTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, PythonError}

  # The examples in the docs run against the application's :default pool.
  doctest SnakeBridge
  doctest SnakeBridge.PythonError
  doctest SnakeBridge.Bytes
  doctest SnakeBridge.Object

  @pool :snakebridge_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    :ok
  end

  describe "call/4" do
    test "module and function as strings or atoms" do
      assert SnakeBridge.call("math", "sqrt", [16.0], pool: @pool) == {:ok, 4.0}
      assert SnakeBridge.call(:math, :sqrt, [16.0], pool: @pool) == {:ok, 4.0}
      assert SnakeBridge.call(:builtins, :len, [[1, 2, 3]], pool: @pool) == {:ok, 3}
    end

    test "args and options have defaults (the :default pool)" do
      assert {:ok, pid} = SnakeBridge.call("os", "getpid")
      assert is_integer(pid)
      assert SnakeBridge.call("math", "floor", [2.5]) == {:ok, 2}
    end

    test "kwargs as a keyword list or a map" do
      assert SnakeBridge.call("sbhelpers", "echo", [1], kwargs: [b: 2, c: "x"], pool: @pool) ==
               {:ok, [[1], %{"b" => 2, "c" => "x"}]}

      assert SnakeBridge.call("sbhelpers", "echo", [], kwargs: %{"b" => 2, c: 3}, pool: @pool) ==
               {:ok, [[], %{"b" => 2, "c" => 3}]}

      assert SnakeBridge.call("builtins", "sorted", [[3, 1, 2]],
               kwargs: [reverse: true],
               pool: @pool
             ) ==
               {:ok, [3, 2, 1]}
    end

    test "dotted module paths" do
      assert SnakeBridge.call("os.path", "join", ["a", "b"], pool: @pool) == {:ok, "a/b"}
      assert SnakeBridge.call("sbpkg.sub.mod", "where", [], pool: @pool) == {:ok, "sbpkg.sub.mod"}

      assert SnakeBridge.call(:"xml.sax.saxutils", :escape, ["<&>"], pool: @pool) ==
               {:ok, "&lt;&amp;&gt;"}
    end

    test "dotted function paths" do
      assert SnakeBridge.call("sbhelpers", "Outer.Inner.double", [21], pool: @pool) == {:ok, 42}

      assert SnakeBridge.call("sbpkg.sub.mod", "Greeter.greet", ["snake"], pool: @pool) ==
               {:ok, "hello snake"}

      assert SnakeBridge.call("builtins", "int.from_bytes", [SnakeBridge.bytes(<<1, 0>>), "big"],
               pool: @pool
             ) ==
               {:ok, 256}

      assert SnakeBridge.call("builtins", "str.upper", ["abc"], pool: @pool) == {:ok, "ABC"}
    end

    test "a module path may end in attributes of the module" do
      assert {:ok, ~D[2024-02-29]} =
               SnakeBridge.call("datetime.date", "fromisoformat", ["2024-02-29"], pool: @pool)

      assert SnakeBridge.call("collections.OrderedDict", "fromkeys", [["a"], 1], pool: @pool) ==
               {:ok, %{"a" => 1}}

      assert {:error, %SnakeBridge.PythonError{type: "ModuleNotFoundError"}} =
               SnakeBridge.call("no_such_pkg_xyz.sub", "f", [], pool: @pool)
    end

    test "invalid arguments raise ArgumentError" do
      assert_raise ArgumentError, fn -> SnakeBridge.call(123, "f", [], pool: @pool) end
      assert_raise ArgumentError, fn -> SnakeBridge.call("m", nil, [], pool: @pool) end
      assert_raise ArgumentError, fn -> SnakeBridge.call("m", "f", :not_a_list, pool: @pool) end
      assert_raise ArgumentError, fn -> SnakeBridge.call("m", "f", [], bogus: 1) end
      assert_raise ArgumentError, fn -> SnakeBridge.call("m", "f", [], timeout: -1) end
      assert_raise ArgumentError, fn -> SnakeBridge.call("m", "f", [], kwargs: [1, 2]) end
      assert_raise ArgumentError, fn -> SnakeBridge.call("m", "f", [], kwargs: %{1 => 2}) end
    end

    test "unknown pool" do
      assert {:error, %Error{reason: :pool_not_found, message: message}} =
               SnakeBridge.call("math", "sqrt", [1.0], pool: :no_such_pool)

      assert message =~ "no_such_pool"
    end
  end

  describe "Python exceptions" do
    test "become PythonError with type, module, message and traceback" do
      assert {:error, %PythonError{} = error} =
               SnakeBridge.call("sbhelpers", "raise_value_error", ["boom"], pool: @pool)

      assert error.type == "ValueError"
      assert error.module == "builtins"
      assert error.message == "boom"
      assert is_list(error.traceback) and error.traceback != []
      assert Enum.all?(error.traceback, &is_binary/1)
      traceback = Enum.join(error.traceback)
      assert traceback =~ "raise_value_error"
      assert traceback =~ "ValueError: boom"

      assert Exception.message(error) =~
               ~r/\AValueError: boom\n\nTraceback .*\n  File .*, in raise_value_error\n/
    end

    test "user-defined and nested exception classes" do
      assert {:error, %PythonError{type: "CustomError", module: "sbhelpers", message: "custom"}} =
               SnakeBridge.call("sbhelpers", "raise_custom", ["custom"], pool: @pool)

      assert {:error, %PythonError{type: "Outer.Error", module: "sbhelpers"} = error} =
               SnakeBridge.call("sbhelpers", "Outer.fail", [], pool: @pool)

      assert Exception.message(error) =~ ~r/\AOuter.Error: nested failure\n\nTraceback/
    end

    test "ZeroDivisionError" do
      assert {:error, %PythonError{type: "ZeroDivisionError", module: "builtins"} = error} =
               SnakeBridge.call("operator", "truediv", [1, 0], pool: @pool)

      assert Exception.message(error) == "ZeroDivisionError: division by zero"
    end

    test "a missing module is a ModuleNotFoundError" do
      assert {:error, %PythonError{type: "ModuleNotFoundError", message: message}} =
               SnakeBridge.call("no_such_module_xyz", "f", [], pool: @pool)

      assert message =~ "no_such_module_xyz"
    end

    test "a missing function is an AttributeError" do
      assert {:error, %PythonError{type: "AttributeError", message: message}} =
               SnakeBridge.call("math", "no_such_function", [], pool: @pool)

      assert message =~ "no_such_function"

      assert {:error, %PythonError{type: "AttributeError"}} =
               SnakeBridge.call("sbhelpers", "Outer.Nope.f", [], pool: @pool)
    end

    test "wrong arguments are a TypeError" do
      assert {:error, %PythonError{type: "TypeError"}} =
               SnakeBridge.call("math", "sqrt", ["not a number"], pool: @pool)
    end

    test "the worker survives and keeps answering" do
      for _ <- 1..20 do
        assert {:error, %PythonError{}} =
                 SnakeBridge.call("operator", "truediv", [1, 0], pool: @pool)

        assert {:ok, 0.5} = SnakeBridge.call("operator", "truediv", [1, 2], pool: @pool)
      end
    end
  end

  describe "call!/4" do
    test "returns the value" do
      assert SnakeBridge.call!("math", "pow", [2, 10], pool: @pool) == 1024.0
    end

    test "raises PythonError" do
      assert_raise PythonError, "ZeroDivisionError: division by zero", fn ->
        SnakeBridge.call!("operator", "truediv", [1, 0], pool: @pool)
      end
    end

    test "raises Error" do
      error =
        assert_raise Error, fn ->
          SnakeBridge.call!("math", "sqrt", [1.0], pool: :no_such_pool)
        end

      assert error.reason == :pool_not_found
    end
  end

  describe "timeouts" do
    test "a slow call times out quickly and leaves no message behind" do
      started = System.monotonic_time(:millisecond)

      assert {:error, %Error{reason: :timeout, message: message}} =
               SnakeBridge.call("time", "sleep", [2], timeout: 100, pool: @pool)

      elapsed = System.monotonic_time(:millisecond) - started
      assert elapsed < 1_000, "took #{elapsed} ms"
      assert message =~ "100"

      refute_receive {:snakebridge, _, _}, 2_500
      assert {:messages, []} = Process.info(self(), :messages)
    end

    test "timeout: 0 with a slow call" do
      assert {:error, %Error{reason: :timeout}} =
               SnakeBridge.call("sbhelpers", "sleep", [0.3], timeout: 0, pool: @pool)

      refute_receive {:snakebridge, _, _}, 600
    end

    test "timeout: :infinity" do
      assert SnakeBridge.call("sbhelpers", "sleep", [0.05, :done], timeout: :infinity, pool: @pool) ==
               {:ok, "done"}
    end

    test "no stray messages after many fast calls either" do
      for i <- 1..200 do
        assert {:ok, ^i} =
                 SnakeBridge.call("sbhelpers", "identity", [i], pool: @pool, timeout: 5_000)
      end

      refute_receive {:snakebridge, _, _}, 100
    end
  end

  describe "await/2 and cancel/1" do
    test "call_async + receive" do
      assert {:ok, ref} = SnakeBridge.Native.call_async("math", "sqrt", [16.0], pool: @pool)
      assert is_reference(ref)
      assert_receive {:snakebridge, ^ref, {:ok, 4.0}}, 5_000
      refute_receive {:snakebridge, ^ref, _}, 100
    end

    test "await returns the result" do
      {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "identity", [[1, 2]], pool: @pool)
      assert SnakeBridge.await(ref) == {:ok, [1, 2]}

      {:ok, ref} = SnakeBridge.Native.call_async("operator", "truediv", [1, 0], pool: @pool)
      assert {:error, %PythonError{type: "ZeroDivisionError"}} = SnakeBridge.await(ref, 5_000)
    end

    test "await times out, cancels and leaves no message" do
      {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "sleep", [1, :late], pool: @pool)
      assert {:error, %Error{reason: :timeout}} = SnakeBridge.await(ref, 50)
      refute_receive {:snakebridge, ^ref, _}, 1_500
    end

    test "many calls in flight from one process, awaited out of order" do
      refs =
        for i <- 1..500 do
          {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "identity", [i], pool: @pool)
          {i, ref}
        end

      for {i, ref} <- Enum.reverse(refs) do
        assert SnakeBridge.await(ref) == {:ok, i}
      end
    end

    test "cancel of a running call: no reply ever arrives" do
      {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "sleep", [0.5, :x], pool: @pool)
      Process.sleep(100)
      assert SnakeBridge.cancel(ref) == :ok
      refute_receive {:snakebridge, ^ref, _}, 1_000
    end

    test "cancel of a call whose reply is already in the mailbox removes it" do
      {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "identity", [1], pool: @pool)

      wait_until(fn ->
        match?({:message_queue_len, n} when n > 0, Process.info(self(), :message_queue_len))
      end)

      assert SnakeBridge.cancel(ref) == :ok
      refute_received {:snakebridge, ^ref, _}
    end

    test "cancel of an unknown or finished call is a no-op" do
      assert SnakeBridge.cancel(make_ref()) == :ok
      {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "identity", [1], pool: @pool)
      assert SnakeBridge.await(ref) == {:ok, 1}
      assert SnakeBridge.cancel(ref) == :ok
    end
  end

  describe "concurrency" do
    test "1,000 concurrent callers each get their own answer" do
      results =
        1..1_000
        |> Task.async_stream(
          fn i ->
            {i,
             SnakeBridge.call("sbhelpers", "identity", [{i, "caller #{i}"}],
               pool: @pool,
               timeout: 30_000
             )}
          end,
          max_concurrency: 1_000,
          timeout: 60_000
        )
        |> Enum.map(fn {:ok, result} -> result end)

      assert length(results) == 1_000

      for {i, result} <- results do
        expected = {i, "caller #{i}"}
        assert result == {:ok, expected}
      end
    end

    test "1,000 spawned processes, each checking its own mailbox" do
      parent = self()

      pids =
        for i <- 1..1_000 do
          spawn_link(fn ->
            {:ok, ref} = SnakeBridge.Native.call_async("sbhelpers", "identity", [i], pool: @pool)

            receive do
              {:snakebridge, ^ref, result} ->
                send(parent, {:done, i, result, Process.info(self(), :message_queue_len)})
            after
              30_000 -> send(parent, {:done, i, :timeout, nil})
            end
          end)
        end

      for i <- 1..1_000 do
        assert_receive {:done, ^i, {:ok, ^i}, {:message_queue_len, 0}}, 30_000
      end

      assert length(pids) == 1_000
    end
  end
end
