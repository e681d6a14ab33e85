defmodule SnakeBridge.ReloadTest do
  # The worker caches the functions calls resolve; a reload, or a function
  # replaced by assignment, is still what the next call runs.
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  # One worker: a reload happens in the worker that runs it.
  @pool :reload_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool, size: 1)})
    :ok
  end

  test "importlib.reload is seen by the next call" do
    dir = temporary_dir!("sb_reload")
    module = "sb_reload_#{System.unique_integer([:positive])}"
    path = Path.join(dir, module <> ".py")
    File.write!(path, "def version():\n    return 1\n")
    SnakeBridge.eval!("import sys\nsys.path.insert(0, d)", %{d: dir}, pool: @pool)

    assert SnakeBridge.call(module, "version", [], pool: @pool) == {:ok, 1}
    assert SnakeBridge.call(module, "version", [], pool: @pool) == {:ok, 1}

    # A different size: the import system never takes the old bytecode for
    # a source written within the same second.
    File.write!(path, "def version():\n    return 'two'\n")

    SnakeBridge.eval!(
      "import importlib\nimportlib.reload(importlib.import_module(m))",
      %{m: module},
      pool: @pool
    )

    assert SnakeBridge.call(module, "version", [], pool: @pool) == {:ok, "two"}
  end

  test "a function replaced by assignment is seen by the next call" do
    assert SnakeBridge.call("sbhelpers", "type_name", [1], pool: @pool) == {:ok, "int"}

    SnakeBridge.eval!("import sbhelpers\nsbhelpers.type_name = lambda x: 'patched'", %{},
      pool: @pool
    )

    assert SnakeBridge.call("sbhelpers", "type_name", [1], pool: @pool) == {:ok, "patched"}
    SnakeBridge.eval!("import sbhelpers\ndel sbhelpers.type_name", %{}, pool: @pool)

    assert {:error, %SnakeBridge.PythonError{type: "AttributeError"}} =
             SnakeBridge.call("sbhelpers", "type_name", [1], pool: @pool)
  end
end
