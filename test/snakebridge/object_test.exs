defmodule SnakeBridge.ObjectTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Object, PythonError}

  @pool :object_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    :ok
  end

  defp new_counter(start \\ 0, pool \\ @pool) do
    {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [start], pool: pool)
    counter
  end

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  # A process's calls follow its objects, so two objects on two workers are
  # made in two sessions, which take the workers in turn.
  defp counters_on_two_workers do
    wait_until(fn -> Enum.all?(SnakeBridge.stats(@pool).workers, &(&1.state == :ready)) end)
    [one, two] = for _ <- 1..2, do: SnakeBridge.Session.new!(pool: @pool)
    first = SnakeBridge.call!("sbobjects", "Counter", [0], pool: @pool, worker: one)
    other = SnakeBridge.call!("sbobjects", "Counter", [0], pool: @pool, worker: two)
    assert Object.os_pid(first) != Object.os_pid(other)
    {first, other}
  end

  describe "results without an Elixir equivalent" do
    test "come back as objects with their type, repr and pool" do
      counter = new_counter(5)
      assert %Object{type: "sbobjects.Counter", repr: "Counter(5)", pool: @pool} = counter
      assert inspect(counter) == "#SnakeBridge.Object<Counter(5)>"
      assert is_integer(Object.os_pid(counter))
    end

    test "as: :handle returns any result as an object" do
      assert {:ok, %Object{type: "list", repr: "[1, 2, 3]"} = list} =
               SnakeBridge.call("builtins", "list", [[1, 2, 3]], pool: @pool, as: :handle)

      assert SnakeBridge.method!(list, "append", [4]) == nil
      assert SnakeBridge.call!("builtins", "len", [list], pool: @pool) == 4
      assert SnakeBridge.call!("sbhelpers", "identity", [list], pool: @pool) == [1, 2, 3, 4]
    end
  end

  describe "methods and attributes" do
    test "method/4 calls a method, with keyword arguments" do
      counter = new_counter()
      assert SnakeBridge.method(counter, "add") == {:ok, 1}
      assert SnakeBridge.method(counter, :add, [10]) == {:ok, 11}
      assert SnakeBridge.method!(counter, "add", [], kwargs: [n: 100]) == 111
    end

    test "getattr/3 and setattr/4 read and write attributes" do
      counter = new_counter(3)
      assert SnakeBridge.getattr(counter, "value") == {:ok, 3}
      assert SnakeBridge.setattr(counter, :value, 40) == :ok
      assert SnakeBridge.getattr!(counter, :value) == 40
      assert SnakeBridge.setattr!(counter, "label", %{"a" => [1]}) == :ok
      assert SnakeBridge.getattr!(counter, "label") == %{"a" => [1]}
    end

    test "attributes that are objects come back as objects" do
      counter = new_counter(2)
      assert {:ok, %Object{type: "method"} = add} = SnakeBridge.getattr(counter, "add")
      assert SnakeBridge.call(add, [5]) == {:ok, 7}
    end

    test "a missing attribute or method is a Python AttributeError" do
      counter = new_counter()

      assert {:error, %PythonError{type: "AttributeError", message: message}} =
               SnakeBridge.getattr(counter, "nope")

      assert message =~ "nope"

      assert {:error, %PythonError{type: "AttributeError"}} = SnakeBridge.method(counter, "nope")
      assert_raise PythonError, fn -> SnakeBridge.method!(counter, "nope") end
      assert_raise PythonError, fn -> SnakeBridge.getattr!(counter, "nope") end
    end

    test "setattr on an object that refuses it is a Python error" do
      {:ok, obj} = SnakeBridge.call("builtins", "object", [], pool: @pool)
      assert {:error, %PythonError{type: "AttributeError"}} = SnakeBridge.setattr(obj, "x", 1)
      assert_raise PythonError, fn -> SnakeBridge.setattr!(obj, "x", 1) end
    end

    test "an attribute name must be a string or an atom" do
      assert_raise ArgumentError, ~r/attribute name/, fn ->
        SnakeBridge.getattr(new_counter(), 1)
      end
    end
  end

  describe "calling an object" do
    test "call/2,3 calls a callable object" do
      counter = new_counter(6)
      assert SnakeBridge.call(counter, [7]) == {:ok, 42}
      assert SnakeBridge.call(counter, [], kwargs: [n: 2]) == {:ok, 12}
      assert SnakeBridge.call!(counter, [1]) == 6
    end

    test "calling something that is not callable is a TypeError" do
      {:ok, obj} = SnakeBridge.call("builtins", "object", [], pool: @pool)
      assert {:error, %PythonError{type: "TypeError"}} = SnakeBridge.call(obj, [])
    end
  end

  describe "objects as arguments" do
    test "run in the worker that holds them and are the same object" do
      for _ <- 1..6 do
        counter = new_counter()
        os_pid = Object.os_pid(counter)
        assert SnakeBridge.eval!("import os; os.getpid()", %{"c" => counter}, pool: @pool) == os_pid
        assert SnakeBridge.call!("sbobjects", "same_object", [counter, counter], pool: @pool)
      end
    end

    test "may be nested in lists, tuples, maps and keyword arguments" do
      a = new_counter(1)
      # Made by a's class in a's worker, so both live in the same one.
      {:ok, b} = SnakeBridge.method(a, "__class__", [2])
      assert Object.os_pid(b) == Object.os_pid(a)
      nested = [a, {b, [%{"deep" => a}]}, %{"k" => {b}}]
      assert SnakeBridge.call!("sbobjects", "sum_values", [nested], pool: @pool) == 1 + 2 + 1 + 2

      assert SnakeBridge.call!("sbobjects", "sum_values", [], pool: @pool, kwargs: [nested: [a, b]]) ==
               3
    end

    test "objects of different workers in one call are a :handle_conflict" do
      {first, second} = counters_on_two_workers()

      assert {:error, %Error{reason: :handle_conflict, message: message}} =
               SnakeBridge.call("sbobjects", "same_object", [first, second], pool: @pool)

      assert message =~ "args[1]"
      assert SnakeBridge.method!(second, "add") == 1
    end

    test "an object used in another pool is a :handle_conflict" do
      other = unique(:object_other_pool)
      start_supervised!({SnakeBridge.Pool, pool_opts(other, size: 1)})
      counter = new_counter()

      assert {:error, %Error{reason: :handle_conflict}} =
               SnakeBridge.call("sbobjects", "counter_value", [counter], pool: other)
    end
  end

  describe "bad objects and options" do
    test "a struct that is not a real object is :unsupported_type" do
      fake = %Object{type: "x", repr: "x", pool: @pool, ref: make_ref()}

      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               SnakeBridge.call("sbhelpers", "identity", [[fake]], pool: @pool)

      assert message == "args[0][0]: a malformed SnakeBridge.Object cannot be sent to Python"
      assert {:error, %Error{reason: :unsupported_type}} = SnakeBridge.method(fake, "x")
    end

    test ":as must be :value, :handle or :arrow" do
      assert_raise ArgumentError, ~r/:as/, fn ->
        SnakeBridge.call("builtins", "int", [], as: :ref)
      end
    end
  end

  describe "release" do
    test "release/1 drops the object; later use is :stale_handle" do
      counter = new_counter()
      assert SnakeBridge.release(counter) == :ok
      assert SnakeBridge.release(counter) == :ok

      assert {:error, %Error{reason: :stale_handle, message: message}} =
               SnakeBridge.method(counter, "add")

      assert message =~ "released"

      assert {:error, %Error{reason: :stale_handle}} =
               SnakeBridge.call("sbobjects", "counter_value", [[counter]], pool: @pool)

      assert Object.os_pid(counter) == nil
    end

    test "garbage collection of the last reference frees the Python object" do
      pool = unique(:object_gc)
      start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})
      count = fn -> SnakeBridge.call!("sbobjects", "live_counters", [], pool: pool) end
      assert count.() == 0

      task =
        Task.async(fn ->
          counters = for i <- 1..50, do: new_counter(i, pool)
          assert count.() == 50
          assert [%{objects: 50}] = SnakeBridge.stats(pool).workers
          length(counters)
        end)

      assert Task.await(task) == 50
      # The task's heap, and the handles in it, are gone with the task.
      wait_until(fn -> count.() == 0 end)
      assert [%{objects: 0}] = SnakeBridge.stats(pool).workers
    end

    test "many short-lived objects do not pile up in the worker" do
      pool = unique(:object_churn)
      start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})

      for i <- 1..5_000 do
        {:ok, _} = SnakeBridge.call("sbobjects", "Counter", [i], pool: pool)
      end

      :erlang.garbage_collect()

      wait_until(fn ->
        SnakeBridge.call!("snakebridge_worker._native", "object_count", [], pool: pool) == 0
      end)
    end
  end

  describe "stale handles" do
    test "an object of a stopped pool is :stale_handle, even when the pool runs again" do
      pool = unique(:object_restarted_pool)
      start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})
      counter = new_counter(1, pool)
      :ok = stop_supervised({SnakeBridge.Pool, pool})
      start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})

      assert {:error, %Error{reason: :stale_handle}} = SnakeBridge.method(counter, "add")
      assert SnakeBridge.method!(new_counter(5, pool), "add") == 6
    end

    test "an object whose worker was killed is :stale_handle, never another object" do
      pool = unique(:object_stale)
      start_supervised!({SnakeBridge.Pool, pool_opts(pool, size: 1)})
      counter = new_counter(1, pool)
      os_pid = Object.os_pid(counter)
      System.cmd("kill", ["-9", Integer.to_string(os_pid)])

      wait_until(fn ->
        match?(
          [%{os_pid: new, state: :ready}] when new not in [nil, os_pid],
          SnakeBridge.stats(pool).workers
        )
      end)

      # The new worker's first object would have the same id as the old one.
      fresh = new_counter(2, pool)
      assert SnakeBridge.method!(fresh, "add") == 3

      assert {:error, %Error{reason: :stale_handle}} = SnakeBridge.method(counter, "add")

      assert {:error, %Error{reason: :stale_handle}} =
               SnakeBridge.call("sbobjects", "counter_value", [counter], pool: pool)

      assert Object.os_pid(counter) == nil
      assert SnakeBridge.call!("sbobjects", "counter_value", [fresh], pool: pool) == 3
    end
  end
end
