defmodule SnakeBridge.AccessTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Object, PythonError}

  @pool :access_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    :ok
  end

  defp date(y, m, d), do: SnakeBridge.call!("datetime", "date", [y, m, d], pool: @pool, as: :handle)
  defp counter(start), do: SnakeBridge.call!("sbobjects", "Counter", [start], pool: @pool)

  describe "getattr/3" do
    test "follows dotted paths on an object" do
      date = date(2024, 2, 29)
      assert SnakeBridge.getattr(date, "max.year") == {:ok, 9999}
      assert SnakeBridge.getattr!(date, :year) == 2024

      assert {:error, %PythonError{type: "AttributeError"} = error} =
               SnakeBridge.getattr(date, "max.nope")

      assert Exception.message(error) =~ "'datetime.date' object has no attribute 'nope'"
    end

    test "reads a module's attributes" do
      assert SnakeBridge.getattr("math", "pi", pool: @pool) == {:ok, :math.pi()}
      assert SnakeBridge.getattr(:sys, "version_info.major", pool: @pool) == {:ok, 3}
      assert SnakeBridge.getattr!("os.path", :sep, pool: @pool) == "/"
      assert SnakeBridge.getattr!("datetime.date", "max.year", pool: @pool) == 9999

      assert SnakeBridge.getattr!("datetime", "date.min", pool: @pool) == ~D[0001-01-01]

      assert %Object{type: "datetime.date"} =
               SnakeBridge.getattr!("datetime", "date.min", pool: @pool, as: :handle)

      assert %Object{type: "list"} = SnakeBridge.getattr!("sys", "path", pool: @pool, as: :handle)
    end

    test "a missing module or attribute is a Python error" do
      assert {:error, %PythonError{type: "ModuleNotFoundError"}} =
               SnakeBridge.getattr("no_such_module_xyz", "x", pool: @pool)

      assert {:error, %PythonError{type: "AttributeError"}} =
               SnakeBridge.getattr("math", "nope", pool: @pool)

      assert_raise PythonError, fn -> SnakeBridge.getattr!("math", "nope", pool: @pool) end
    end

    test "bad arguments" do
      assert_raise ArgumentError, ~r/SnakeBridge.Object or a module name, got: 123/, fn ->
        SnakeBridge.getattr(123, "x")
      end

      assert_raise ArgumentError, ~r/SnakeBridge.Object or a module name, got: nil/, fn ->
        SnakeBridge.getattr(nil, "x")
      end

      assert_raise ArgumentError, ~r/attribute name/, fn -> SnakeBridge.getattr("math", 1) end

      assert_raise ArgumentError, ~r/unknown keys \[:kwargs\]/, fn ->
        SnakeBridge.getattr("math", "pi", kwargs: [])
      end

      assert_raise ArgumentError, ~r/unknown keys \[:pool\]/, fn ->
        SnakeBridge.getattr(date(2024, 1, 1), "year", pool: @pool)
      end
    end

    test "no such pool" do
      assert {:error, %Error{reason: :pool_not_found}} =
               SnakeBridge.getattr("math", "pi", pool: :no_such_pool)
    end
  end

  test "setattr/4 follows dotted paths" do
    ns = SnakeBridge.call!("types", "SimpleNamespace", [], kwargs: [inner: counter(1)], pool: @pool)
    assert SnakeBridge.setattr(ns, "inner.value", 7) == :ok
    assert SnakeBridge.getattr!(ns, "inner.value") == 7
    assert {:error, %PythonError{type: "AttributeError"}} = SnakeBridge.setattr(ns, "nope.value", 1)
  end

  describe "stream(object, opts)" do
    test "iterates the object with a window and a timeout" do
      list = SnakeBridge.call!("builtins", "list", [[1, 2, 3, 4, 5]], pool: @pool, as: :handle)
      assert SnakeBridge.stream(list, window: 1) |> Enum.to_list() == [1, 2, 3, 4, 5]
      assert SnakeBridge.stream(list, timeout: 1_000, window: 2) |> Enum.take(2) == [1, 2]
      assert SnakeBridge.stream(list, []) |> Enum.to_list() == [1, 2, 3, 4, 5]
    end

    test "times out on a slow iterator" do
      slow =
        SnakeBridge.eval!("import time\n(time.sleep(s) or s for s in [0, 2])", %{}, pool: @pool)

      stream = SnakeBridge.stream(slow, timeout: 200)
      assert_raise Error, ~r/sent no item within 200 ms/, fn -> Enum.to_list(stream) end
    end

    test "bad options" do
      list = SnakeBridge.call!("builtins", "list", [[1]], pool: @pool, as: :handle)
      assert_raise ArgumentError, ~r/:window/, fn -> SnakeBridge.stream(list, window: 0) end
      assert_raise ArgumentError, ~r/:timeout/, fn -> SnakeBridge.stream(list, timeout: -1) end

      assert_raise ArgumentError, ~r/unknown keys \[:pool\]/, fn ->
        SnakeBridge.stream(list, pool: @pool)
      end
    end
  end

  describe "Enumerable" do
    test "Enum and Stream iterate an object in Python" do
      list = SnakeBridge.call!("builtins", "list", [[3, 1, 2]], pool: @pool, as: :handle)
      assert Enum.to_list(list) == [3, 1, 2]
      assert Enum.sort(list) == [1, 2, 3]
      assert Enum.count(list) == 3
      assert Enum.member?(list, 2)
      refute Enum.member?(list, 4)
      assert Enum.map(list, &(&1 * 10)) == [30, 10, 20]
      assert list |> Stream.map(&(&1 + 1)) |> Enum.to_list() == [4, 2, 3]
    end

    test "a generator is consumed lazily, and halting closes it" do
      generator = SnakeBridge.call!("itertools", "count", [10], pool: @pool)
      assert Enum.take(generator, 3) == [10, 11, 12]
      # An iterator goes on where the last enumeration left it, past the
      # items the halted stream had been sent ahead.
      assert [a, b] = Enum.take(generator, 2)
      assert a > 12 and b == a + 1

      dict =
        SnakeBridge.call!("builtins", "dict", [], kwargs: [a: 1, b: 2], pool: @pool, as: :handle)

      assert Enum.to_list(dict) == ["a", "b"]
    end

    test "an object that is not iterable raises" do
      error = assert_raise PythonError, fn -> Enum.to_list(counter(1)) end
      assert error.type == "TypeError"
      assert error.message == "'Counter' object is not iterable"
    end
  end

  describe "String.Chars" do
    test "gives Python's str(), as it is now" do
      date = date(2024, 2, 29)
      assert to_string(date) == "2024-02-29"
      assert "on #{date}" == "on 2024-02-29"
      c = counter(1)
      assert to_string(c) == "Counter(1)"
      SnakeBridge.method!(c, "add", [4])
      assert to_string(c) == "Counter(5)"
    end

    test "a released object raises" do
      date = date(2024, 2, 29)
      SnakeBridge.release(date)
      assert_raise Error, ~r/object/, fn -> to_string(date) end
    end
  end

  test "inspect shows the repr taken when the object was returned" do
    c = counter(1)
    SnakeBridge.method!(c, "add", [4])
    assert inspect(c) == "#SnakeBridge.Object<Counter(1)>"
    assert SnakeBridge.call!("builtins", "repr", [c], pool: @pool) == "Counter(5)"
  end
end
