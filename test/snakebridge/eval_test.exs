defmodule SnakeBridge.EvalTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Object, PythonError}

  @pool :eval_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    :ok
  end

  test "the value of the last expression" do
    assert SnakeBridge.eval("1 + 1", %{}, pool: @pool) == {:ok, 2}
    assert SnakeBridge.eval("x = 3\ny = 4\nx * y", %{}, pool: @pool) == {:ok, 12}
    assert SnakeBridge.eval!("[n * n for n in range(4)]", %{}, pool: @pool) == [0, 1, 4, 9]
  end

  test "nil when the code ends with a statement" do
    assert SnakeBridge.eval("x = 1", %{}, pool: @pool) == {:ok, nil}
    assert SnakeBridge.eval("", %{}, pool: @pool) == {:ok, nil}
  end

  test "globals become names, and nothing is kept between calls" do
    assert SnakeBridge.eval("a + b", %{"a" => 1, "b" => 2}, pool: @pool) == {:ok, 3}
    assert {:error, %PythonError{type: "NameError"}} = SnakeBridge.eval("a", %{}, pool: @pool)
  end

  test "objects as globals, and objects as results" do
    {:ok, f} = SnakeBridge.eval("lambda n: n + 1", %{}, pool: @pool)
    assert %Object{type: "function"} = f
    assert SnakeBridge.call(f, [41]) == {:ok, 42}
    assert SnakeBridge.eval("f(f(0))", %{"f" => f}, pool: @pool) == {:ok, 2}
  end

  test "errors" do
    assert {:error, %PythonError{type: "SyntaxError"}} = SnakeBridge.eval("1 +", %{}, pool: @pool)

    assert {:error, %PythonError{type: "ZeroDivisionError", traceback: traceback}} =
             SnakeBridge.eval("x = 1\nx / 0", %{}, pool: @pool)

    assert Enum.any?(traceback, &(&1 =~ "<eval>"))
    assert_raise PythonError, fn -> SnakeBridge.eval!("raise KeyError('k')", %{}, pool: @pool) end
  end

  test "top-level await" do
    code = "import asyncio\nawait asyncio.sleep(0.01)\n'awaited'"
    assert SnakeBridge.eval(code, %{}, pool: @pool) == {:ok, "awaited"}
  end

  test ":timeout" do
    assert {:error, %Error{reason: :timeout}} =
             SnakeBridge.eval("import time; time.sleep(5)", %{}, pool: @pool, timeout: 100)
  end
end
