defmodule SnakeBridge.PythonErrorTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.PythonError

  @pool :python_error_test

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool)})
    :ok
  end

  defp error(module, function, args \\ []) do
    assert {:error, %PythonError{} = error} = SnakeBridge.call(module, function, args, pool: @pool)
    error
  end

  describe "attributes" do
    test "a user exception's own attributes come by value" do
      error = error("sberrors", "need_more", [5])
      assert error.attributes["needed"] == 5
      assert error.attributes["detail"] == %{"unit" => "bytes", "sizes" => [1, 2]}
      assert error.attributes["args"] == {"need 5 more"}
      refute Map.has_key?(error.attributes, "_hidden")
      refute Map.has_key?(error.attributes, "with_traceback")
    end

    test "a value with no Elixir equivalent comes as its repr" do
      assert "<object object at 0x" <> _ = error("sberrors", "need_more", [1]).attributes["where"]
    end

    test "built-in exceptions' attributes" do
      error = error("os", "stat", ["/no/such/file"])

      assert %{
               "errno" => 2,
               "filename" => "/no/such/file",
               "strerror" => "No such file or directory"
             } = error.attributes

      assert error("sbhelpers_nope", "f").attributes["name"] == "sbhelpers_nope"

      assert {:error,
              %PythonError{type: "SyntaxError", attributes: %{"lineno" => 2, "text" => "1 +\n"}}} =
               SnakeBridge.eval("x = 1\n1 +", %{}, pool: @pool)
    end

    test "an exception without attributes of its own has its args" do
      assert error("operator", "truediv", [1, 0]).attributes == %{"args" => {"division by zero"}}
    end
  end

  describe "Exception.message/1" do
    test "shows the type, the message and the frames where Python raised" do
      message = Exception.message(error("sberrors", "deep", [3]))

      assert message =~
               ~r/\AValueError: bottom\n\nTraceback \(most recent call last\):\n  File ".*sberrors.py", line \d+, in deep\n/

      assert length(Regex.scan(~r/, in (deep|down)\n/, message)) == 3
      assert message =~ ~S|raise ValueError("bottom")|
    end

    test "keeps the last 5 frames of a deep traceback" do
      message = Exception.message(error("sberrors", "deep", [12]))
      assert message =~ "  ... 7 earlier frames\n"
      assert length(Regex.scan(~r/, in (deep|down)\n/, message)) == 5
    end

    test "C code called directly has no frames to show" do
      assert Exception.message(error("operator", "truediv", [1, 0])) ==
               "ZeroDivisionError: division by zero"
    end

    test "a chained exception shows the frames of the one raised" do
      message = Exception.message(error("sberrors", "chained"))
      assert message =~ ~r/\ARuntimeError: while looking up\n\nTraceback/
      assert message =~ ~S|raise RuntimeError("while looking up") from exc|
      refute message =~ "KeyError"
    end

    test "call! raises with the traceback" do
      error =
        assert_raise PythonError, fn -> SnakeBridge.call!("sberrors", "deep", [2], pool: @pool) end

      assert Exception.message(error) =~ "sberrors.py"
    end

    test "tracebacks are kept whole in the struct" do
      error = error("sberrors", "deep", [12])
      assert Enum.count(error.traceback, &(&1 =~ ~r/, in (deep|down)\n/)) == 12
    end
  end

  describe "the worker's own frames are trimmed" do
    test "from an error raised while importing a module" do
      error = error("sbbroken", "f")
      assert error.type == "KeyError"
      text = Enum.join(error.traceback)
      refute text =~ "snakebridge_worker"
      refute text =~ "importlib"
      assert [frame] = Enum.filter(error.traceback, &String.starts_with?(&1, "  File"))
      assert frame =~ "sbbroken.py"

      assert Exception.message(error) =~
               ~r/KeyError: 'not here'\n\nTraceback.*\n  File ".*sbbroken.py", line 3, in <module>/
    end

    test "from a module that does not exist" do
      error = error("no_such_module_xyz", "f")
      assert error.traceback == ["ModuleNotFoundError: No module named 'no_such_module_xyz'\n"]
      assert Exception.message(error) == "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    end

    test "from a syntax error in eval" do
      assert {:error, error} = SnakeBridge.eval("x = (1 +", %{}, pool: @pool)
      refute Enum.join(error.traceback) =~ "snakebridge_worker"
      message = Exception.message(error)
      assert message =~ ~r/\ASyntaxError: .*\n\n  File "<eval>", line 1\n    x = \(1 \+\n/
    end

    test "from an error in eval, down to the eval'd code" do
      assert {:error, error} = SnakeBridge.eval("def f():\n    return 1 / 0\nf()", %{}, pool: @pool)
      frames = Enum.filter(error.traceback, &String.starts_with?(&1, "  File"))
      assert length(frames) == 2
      assert Enum.all?(frames, &(&1 =~ ~S|File "<eval>"|))
    end

    test "from async code: no event loop frames" do
      error = error("sbobjects", "async_fail", ["late"])
      assert [frame] = Enum.filter(error.traceback, &String.starts_with?(&1, "  File"))
      assert frame =~ "sbobjects.py"

      assert {:error, error} =
               SnakeBridge.eval("import asyncio\nawait asyncio.sleep(0)\n1 / 0", %{}, pool: @pool)

      assert [~S|  File "<eval>", line 3, in <module>| <> _] =
               Enum.filter(error.traceback, &String.starts_with?(&1, "  File"))
    end

    test "from a missing attribute" do
      error = error("math", "nope")
      assert error.type == "AttributeError"
      assert Exception.message(error) == "AttributeError: module 'math' has no attribute 'nope'"
    end
  end

  describe "the traceback's tail" do
    alias SnakeBridge.PythonError.Traceback

    test "of a hand-built traceback" do
      lines = [
        "Traceback (most recent call last):\n",
        "  File \"a.py\", line 1, in <module>\n    f()\n",
        "  File \"a.py\", line 3, in f\n    g()\n",
        "  [Previous line repeated 996 more times]\n",
        "RecursionError: maximum recursion depth exceeded\n",
        "note: added\n"
      ]

      assert Traceback.tail(lines, 2) ==
               "\n\nTraceback (most recent call last):\n  ... 1 earlier frames\n" <>
                 "  File \"a.py\", line 3, in f\n    g()\n  [Previous line repeated 996 more times]"

      assert Traceback.tail([], 5) == ""
      assert Traceback.tail(nil, 5) == ""
    end
  end
end
