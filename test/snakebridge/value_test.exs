defmodule SnakeBridge.ValueTest do
  # The type mapping of API.md, row by row, through a real Python identity
  # function (mirrors native/snakebridge_protocol/src/value.rs).
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  @pool :value_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    :ok
  end

  defp call(function, args) do
    SnakeBridge.call("sbhelpers", function, args, pool: @pool, timeout: 10_000)
  end

  defp round_trip(value), do: call("identity", [value])
  defp python_type(value), do: call!("type_name", [value])
  defp call!(function, args), do: SnakeBridge.call!("sbhelpers", function, args, pool: @pool)

  describe "Elixir -> Python -> Elixir" do
    test "nil, true, false" do
      for value <- [nil, true, false] do
        assert round_trip(value) == {:ok, value}
      end

      assert python_type(nil) == "NoneType"
      assert python_type(true) == "bool"
      assert python_type(false) == "bool"
    end

    test "integers of any size" do
      ints = [
        0,
        1,
        -1,
        255,
        -129,
        2 ** 31,
        2 ** 63 - 1,
        -(2 ** 63),
        2 ** 64 - 1,
        2 ** 64,
        -(2 ** 63) - 1,
        -(2 ** 64),
        2 ** 200 + 12_345,
        -(2 ** 1000) + 1,
        3 ** 5000
      ]

      for int <- ints do
        assert round_trip(int) === {:ok, int}
        assert python_type(int) == "int"
      end

      assert call!("identity", [2 ** 64]) === 18_446_744_073_709_551_616
    end

    test "floats" do
      for float <- [0.0, 1.5, -2.25, 1.0e300, -1.0e-300, 0.1, 5.0e-324, 1.7976931348623157e308] do
        assert round_trip(float) === {:ok, float}
      end

      assert python_type(1.0) == "float"
    end

    test ":nan, :infinity and :neg_infinity are Python's special floats" do
      for atom <- [:nan, :infinity, :neg_infinity] do
        assert round_trip(atom) == {:ok, atom}
        assert python_type(atom) == "float"
      end

      assert call!("is_nan", [:nan]) == true
      assert SnakeBridge.call!("math", "isinf", [:infinity], pool: @pool) == true
      assert SnakeBridge.call!("operator", "lt", [:neg_infinity, -1.0e308], pool: @pool) == true
    end

    test "other atoms become str" do
      assert round_trip(:hello) == {:ok, "hello"}
      assert round_trip(:"with space") == {:ok, "with space"}
      assert round_trip(:ünïcödé) == {:ok, "ünïcödé"}
      assert round_trip(SnakeBridge) == {:ok, "Elixir.SnakeBridge"}
      assert python_type(:hello) == "str"
    end

    test "atoms outside Latin-1 become str too, in every place an atom may be" do
      assert round_trip(:zażółć) == {:ok, "zażółć"}
      assert python_type(:zażółć) == "str"
      assert round_trip(:"🐍") == {:ok, "🐍"}
      # 255 characters (the longest atom), of up to 4 bytes each.
      long = String.to_atom(String.duplicate("ж", 254) <> "🐍")
      assert round_trip(long) == {:ok, Atom.to_string(long)}
      assert round_trip(%{gęś: [:ąę, {:ł}]}) == {:ok, %{"gęś" => ["ąę", {"ł"}]}}
      assert round_trip(MapSet.new([:ñ, :ś])) == {:ok, MapSet.new(["ñ", "ś"])}

      assert SnakeBridge.call("sbhelpers", "echo", [], kwargs: [żółw: :ĉu], pool: @pool) ==
               {:ok, [[], %{"żółw" => "ĉu"}]}

      ns = SnakeBridge.namespace!(pool: @pool)
      SnakeBridge.eval!("def zażółć(x):\n    return x * 2", ns)
      assert SnakeBridge.method(ns, :zażółć, [:ą]) == {:ok, "ąą"}
    end

    test "an error names a non-Latin-1 atom key where it is" do
      assert {:error, %SnakeBridge.Error{reason: :unsupported_type, message: message}} =
               round_trip(%{zażółć: self()})

      assert message =~ "args[0][:zażółć]"
    end

    test "UTF-8 binaries become str" do
      for string <- ["", "hello", "ünïcödé ✓ 🐍", "with\u0000nul", String.duplicate("a", 100_000)] do
        assert round_trip(string) == {:ok, string}
        assert python_type(string) == "str"
      end
    end

    test "non-UTF-8 binaries become bytes" do
      # 0xFF never occurs in UTF-8, so the random tail cannot make it valid.
      for bin <- [<<255>>, <<0, 1, 2, 200, 255>>, <<0xC3>>, <<0xFF>> <> :rand.bytes(64)] do
        assert round_trip(bin) == {:ok, bin}
        assert python_type(bin) == "bytes"
      end
    end

    test "SnakeBridge.bytes/1 forces bytes and comes back as the binary" do
      for bin <- ["", "abc", "ünï", <<255, 0>>] do
        assert round_trip(SnakeBridge.bytes(bin)) == {:ok, bin}
        assert python_type(SnakeBridge.bytes(bin)) == "bytes"
      end

      assert SnakeBridge.call!("builtins", "repr", [SnakeBridge.bytes("abc")], pool: @pool) ==
               "b'abc'"
    end

    test "lists" do
      for list <- [[], [1], [1, "two", 3.0, nil, [true, [false]]], Enum.to_list(1..100_000)] do
        assert round_trip(list) == {:ok, list}
      end

      assert python_type([]) == "list"
    end

    test "improper lists are unsupported" do
      assert {:error, %SnakeBridge.Error{reason: :unsupported_type}} = round_trip([1 | 2])
    end

    test "tuples" do
      for tuple <- [{}, {1}, {1, "two", {3.0, nil}}, {[1, 2], %{"a" => {}}}] do
        assert round_trip(tuple) == {:ok, tuple}
      end

      assert python_type({1, 2}) == "tuple"
    end

    test "maps: string keys stay strings, atom keys come back as strings" do
      assert round_trip(%{}) == {:ok, %{}}
      assert round_trip(%{"a" => 1, "b" => [2]}) == {:ok, %{"a" => 1, "b" => [2]}}
      assert round_trip(%{:a => 1, "a" => 1}) |> elem(0) == :ok

      assert round_trip(%{"e" => :f, a: 1, b: %{c: [%{d: nil}]}}) ==
               {:ok, %{"a" => 1, "b" => %{"c" => [%{"d" => nil}]}, "e" => "f"}}

      assert python_type(%{a: 1}) == "dict"
      assert call!("type_tree", [%{a: 1}]) == ["dict", [["str", "int"]]]
    end

    test "maps: other keys are converted by the same rules" do
      map = %{1 => "one", {1, 2} => "pair", nil => true, 2.5 => [], <<255>> => "bytes"}
      assert round_trip(map) == {:ok, map}

      assert round_trip(%{MapSet.new([1, 2]) => "set key"}) ==
               {:ok, %{MapSet.new([1, 2]) => "set key"}}
    end

    test "large maps" do
      # Sizes around the 32-key flat map limit and the 128-key limit of
      # building a map in one go on a runtime thread.
      for size <- [31, 32, 33, 128, 129, 50_000] do
        map = Map.new(1..size, &{"key#{&1}", &1})
        assert round_trip(map) == {:ok, map}
      end
    end

    test "Python keys that become the same binary keep the last value" do
      for size <- [3, 40, 200] do
        expression = "{**{str(i): i for i in range(#{size})}, b'0': 'bytes'}"
        expected = Map.new(1..(size - 1), &{Integer.to_string(&1), &1}) |> Map.put("0", "bytes")
        assert SnakeBridge.call!("builtins", "eval", [expression], pool: @pool) == expected
      end
    end

    test "MapSet becomes set" do
      for set <- [MapSet.new(), MapSet.new([1, "two", {3, 4}]), MapSet.new(1..1000)] do
        assert round_trip(set) == {:ok, set}
      end

      assert python_type(MapSet.new([1])) == "set"
      # A set inside a set must be hashable in Python: frozenset.
      assert round_trip(MapSet.new([MapSet.new([1])])) == {:ok, MapSet.new([MapSet.new([1])])}

      assert call!("type_tree", [MapSet.new([MapSet.new([1])])]) == [
               "set",
               [["frozenset", ["int"]]]
             ]
    end

    test "deep nesting within the limit" do
      deep = Enum.reduce(1..90, 1, fn _, acc -> [acc] end)
      assert round_trip(deep) == {:ok, deep}
    end

    test "large binaries" do
      bin = :binary.copy(<<1, 2, 3, 255>>, 4 * 1024 * 1024)
      assert round_trip(bin) == {:ok, bin}
    end

    test "everything at once" do
      value = %{
        "list" => [1, 2.5, nil, true, "s", <<255>>, {1, [2]}, MapSet.new([:x])],
        :atom => :nan,
        :big => -(2 ** 100)
      }

      assert round_trip(value) ==
               {:ok,
                %{
                  "list" => [1, 2.5, nil, true, "s", <<255>>, {1, [2]}, MapSet.new(["x"])],
                  "atom" => :nan,
                  "big" => -(2 ** 100)
                }}
    end
  end

  describe "Python -> Elixir" do
    test "bytes, bytearray and memoryview become binaries" do
      assert call("make_bytearray", []) == {:ok, <<0, 1, ?a, ?b, 255>>}
      assert call("make_memoryview", []) == {:ok, <<"view", 254>>}
      assert SnakeBridge.call("builtins", "bytes", [[104, 105]], pool: @pool) == {:ok, "hi"}
    end

    test "set and frozenset become MapSet" do
      assert call("make_set", []) == {:ok, MapSet.new([1, 2, 3])}
      assert call("make_frozenset", []) == {:ok, MapSet.new(["a", "b"])}
    end

    test "dict keys stay binaries, never atoms" do
      assert call("make_dict", []) ==
               {:ok,
                %{
                  "name" => "snake",
                  "nested" => %{"key" => [1, 2]},
                  1 => "one",
                  {1, 2} => "pair",
                  nil => true
                }}
    end

    test "special floats become atoms" do
      assert call("make_floats", []) == {:ok, [:nan, :infinity, :neg_infinity, -0.0, 1.5]}
    end

    test "big ints" do
      assert call("make_big_ints", []) ==
               {:ok, [2 ** 64, 2 ** 64 - 1, -(2 ** 63), -(2 ** 63) - 1, 10 ** 40, -(10 ** 40)]}
    end

    test "tuples" do
      assert call("make_tuple", []) == {:ok, {1, "two", {3.0, nil}}}
    end

    test "subclasses map like their base" do
      assert call("subclass_values", []) == {:ok, [7, "s", %{"a" => 1}, true]}
    end

    test "values without a mapping come back as objects, also nested" do
      assert {:ok, %SnakeBridge.Object{type: "fractions.Fraction", repr: "Fraction(1, 2)"}} =
               SnakeBridge.eval("import fractions\nfractions.Fraction(1, 2)", %{}, pool: @pool)

      assert call("make_date", []) == {:ok, ~D[2020-01-02]}

      assert {:ok, [1, 2, %SnakeBridge.Object{type: "object", repr: "<object object at " <> _}]} =
               call("make_nested_object", [])
    end

    test "results nested too deep" do
      assert {:error, %SnakeBridge.Error{reason: :nesting_too_deep}} = call("make_deep", [500])
      assert round_trip(1) == {:ok, 1}
    end

    @tag :slow
    test "results over the pool's :max_payload (the 64 MiB frame limit without shared memory)" do
      socket_only = :"value_test_socket_#{System.unique_integer([:positive])}"
      start_supervised!({SnakeBridge.Pool, pool_opts(socket_only, size: 1, shared_memory: false)})

      assert {:error, %SnakeBridge.Error{reason: :payload_too_large}} =
               SnakeBridge.call("sbhelpers", "make_big_bytes", [65 * 1024 * 1024],
                 pool: socket_only,
                 timeout: 30_000
               )

      assert SnakeBridge.call("sbhelpers", "identity", [1], pool: socket_only) == {:ok, 1}
    end
  end
end
