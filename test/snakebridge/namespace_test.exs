defmodule SnakeBridge.NamespaceTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Object, PythonError}

  @pool :namespace_test
  # One worker: the tests look at what a namespace leaves in its worker.
  @single :namespace_single_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})

    start_supervised!(
      Supervisor.child_spec({SnakeBridge.Pool, pool_opts(@single, size: 1)}, id: @single)
    )

    :ok
  end

  test "variables, imports, functions and classes carry from one eval to the next" do
    ns = SnakeBridge.namespace!(pool: @pool)
    assert %Object{type: "module", pool: @pool} = ns
    assert SnakeBridge.eval("import math\nradius = 2", ns) == {:ok, nil}
    assert SnakeBridge.eval("def area(r):\n    return round(math.pi * r ** 2, 2)", ns) == {:ok, nil}

    assert SnakeBridge.eval("class Box:\n    def __init__(self, n):\n        self.n = n", ns) ==
             {:ok, nil}

    assert SnakeBridge.eval("area(radius)", ns) == {:ok, 12.57}
    assert SnakeBridge.eval("radius += 1\nBox(radius).n", ns) == {:ok, 3}

    assert SnakeBridge.eval!("sorted(n for n in dir() if not n.startswith('__'))", ns) ==
             ["Box", "area", "math", "radius"]
  end

  test "dataclasses work, and their instances pickle" do
    ns = SnakeBridge.namespace!(pool: @pool)

    SnakeBridge.eval!(
      """
      from dataclasses import dataclass, field
      import pickle

      @dataclass
      class Point:
          x: int
          y: int = 0
          tags: list = field(default_factory=list)
      """,
      ns
    )

    assert SnakeBridge.eval!("Point(1, 2)", ns, as: :handle).repr == "Point(x=1, y=2, tags=[])"
    assert SnakeBridge.eval!("pickle.loads(pickle.dumps(Point(3))) == Point(3)", ns) == true
    assert SnakeBridge.eval!("import sys\nsys.modules[__name__].Point is Point", ns) == true
  end

  test "each namespace is its own module" do
    a = SnakeBridge.namespace!(pool: @pool)
    b = SnakeBridge.namespace!(pool: @pool)
    SnakeBridge.eval!("x = 'a'", a)
    assert {:error, %PythonError{type: "NameError"}} = SnakeBridge.eval("x", b)
    assert "snakebridge_ns_" <> _ = name_a = SnakeBridge.getattr!(a, "__name__")
    assert SnakeBridge.getattr!(b, "__name__") != name_a
  end

  test ":globals set names in the namespace, and getattr/setattr/method reach them" do
    ns = SnakeBridge.namespace!(pool: @pool)
    assert SnakeBridge.eval("total = a + b", ns, globals: %{"a" => 1, b: 2}) == {:ok, nil}
    assert SnakeBridge.getattr!(ns, "total") == 3
    :ok = SnakeBridge.setattr!(ns, "total", 40)
    SnakeBridge.eval!("def bump(n):\n    global total\n    total += n\n    return total", ns)
    assert SnakeBridge.method!(ns, "bump", [2]) == 42
    assert SnakeBridge.eval!("total", ns) == 42
  end

  test "objects from other calls can go in, and results come out as objects" do
    ns = SnakeBridge.namespace!(pool: @single)
    {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [5], pool: @single)
    SnakeBridge.eval!("c = counter", ns, globals: %{counter: counter})
    assert SnakeBridge.eval!("c.add(1)", ns) == 6
    assert %Object{repr: "Counter(6)"} = SnakeBridge.eval!("c", ns)
  end

  test "a plain eval may define classes and dataclasses" do
    code = """
    from dataclasses import dataclass
    @dataclass
    class P:
        x: int
    class Q:
        pass
    (P(1).x, Q.__module__.startswith("snakebridge_ns_"))
    """

    assert SnakeBridge.eval(code, %{}, pool: @pool) == {:ok, {1, true}}
  end

  test "top-level await in a namespace" do
    ns = SnakeBridge.namespace!(pool: @pool)

    assert SnakeBridge.eval("import asyncio\nawait asyncio.sleep(0.01)\ndone = 'yes'", ns) ==
             {:ok, nil}

    assert SnakeBridge.eval("done", ns) == {:ok, "yes"}
  end

  test "a released namespace is gone, from sys.modules too" do
    ns = SnakeBridge.namespace!(pool: @single)
    name = SnakeBridge.getattr!(ns, "__name__")
    check = "import sys\nname in sys.modules"
    assert SnakeBridge.eval!(check, %{name: name}, pool: @single) == true
    :ok = SnakeBridge.release(ns)
    assert {:error, %Error{reason: :stale_handle}} = SnakeBridge.eval("1", ns)
    # The release frame goes out from a runtime thread, a moment later.
    wait_until(fn -> SnakeBridge.eval!(check, %{name: name}, pool: @single) == false end)
  end

  test "a namespace dropped by the garbage collector is gone from its worker" do
    name =
      fn ->
        ns = SnakeBridge.namespace!(pool: @single)
        SnakeBridge.getattr!(ns, "__name__")
      end
      |> Task.async()
      |> Task.await()

    check = "import sys\nname in sys.modules"
    wait_until(fn -> SnakeBridge.eval!(check, %{name: name}, pool: @single) == false end)
  end

  describe "bad arguments" do
    test "options a namespace does not take" do
      ns = SnakeBridge.namespace!(pool: @pool)

      assert_raise ArgumentError, ~r/unknown keys \[:pool\]/, fn ->
        SnakeBridge.eval("1", ns, pool: @pool)
      end

      assert_raise ArgumentError, ~r/globals/, fn -> SnakeBridge.eval("1", ns, globals: [1]) end
      assert_raise ArgumentError, ~r/code to be a string/, fn -> SnakeBridge.eval(:x, ns) end

      assert_raise ArgumentError, ~r/unknown keys \[:as\]/, fn ->
        SnakeBridge.namespace(as: :value)
      end
    end

    test "something that is not a namespace" do
      {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [], pool: @pool)

      assert {:error,
              %PythonError{type: "TypeError", message: "a namespace must be a module, not Counter"}} =
               SnakeBridge.eval("1", counter)

      assert_raise ArgumentError, ~r/globals to be a map/, fn -> SnakeBridge.eval("1", [1]) end
    end

    test "no such pool" do
      assert {:error, %Error{reason: :pool_not_found}} = SnakeBridge.namespace(pool: :no_such_pool)
      assert_raise Error, fn -> SnakeBridge.namespace!(pool: :no_such_pool) end
    end
  end
end
