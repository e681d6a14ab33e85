defmodule SnakeBridge.ValidationTest do
  # Every public function checks its arguments before anything is sent, and
  # a bad one raises ArgumentError naming it (lib/snakebridge/args.ex). The
  # worker, in turn, refuses a result the BEAM cannot hold instead of
  # sending it (native/snakebridge_py/src/encode.rs).
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Native, Object}

  # One worker, so "the same worker" and "nothing was sent" are observable
  # in its stats.
  @pool :validation_test

  # 2^32 ms: one more than `receive ... after` accepts.
  @too_long 4_294_967_296

  # The largest integer magnitude the BEAM holds, in bytes
  # (MAX_BIGINT_BYTES in native/snakebridge_protocol/src/value.rs).
  @max_bigint_bytes 4_194_296

  setup_all do
    start_supervised!({SnakeBridge.Pool, pool_opts(@pool, size: 1)})
    wait_for_workers(@pool, 1)
    {:ok, counter} = SnakeBridge.call("sbobjects", "Counter", [], pool: @pool)
    %{counter: counter}
  end

  # A struct that looks like an object but was not made by the NIF.
  defp forged, do: %Object{type: "object", repr: "<object>", pool: @pool, ref: make_ref()}

  describe ":timeout" do
    test "call/4 refuses 2^32 ms before sending anything" do
      calls = SnakeBridge.stats(@pool).calls

      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.call("sbhelpers", "identity", [1], pool: @pool, timeout: @too_long)
        end

      assert error.message =~ ":timeout"
      assert error.message =~ "2^32"
      # The pool's one worker answers in order: had the call been sent, its
      # reply would be in the mailbox before this call's.
      assert SnakeBridge.call("sbhelpers", "identity", [2], pool: @pool) == {:ok, 2}
      refute_received {:snakebridge, _, _}
      assert SnakeBridge.stats(@pool).calls == calls + 1
    end

    test "call/4 names :timeout for an integer far out of range" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.call("sbhelpers", "identity", [1], pool: @pool, timeout: 2 ** 70)
        end

      assert error.message =~ ":timeout"
    end

    test "call!/4" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.call!("sbhelpers", "identity", [1], pool: @pool, timeout: @too_long)
        end

      assert error.message =~ ":timeout"
    end

    test "method/4", %{counter: counter} do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.method(counter, "add", [1], timeout: @too_long)
        end

      assert error.message =~ ":timeout"
    end

    test "getattr/3", %{counter: counter} do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.getattr(counter, "value", timeout: @too_long)
        end

      assert error.message =~ ":timeout"
    end

    test "setattr/4", %{counter: counter} do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.setattr(counter, "value", 1, timeout: @too_long)
        end

      assert error.message =~ ":timeout"
    end

    test "eval/3" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.eval("1", %{}, pool: @pool, timeout: @too_long)
        end

      assert error.message =~ ":timeout"
    end

    test "stream/4 raises when called, not when enumerated" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.stream("builtins", "range", [3], pool: @pool, timeout: @too_long)
        end

      assert error.message =~ ":timeout"
    end

    test "await/2 raises before waiting, and the reply stays for a later await" do
      {:ok, ref} = Native.call_async("sbhelpers", "identity", [7], pool: @pool)
      error = assert_raise ArgumentError, fn -> SnakeBridge.await(ref, @too_long) end
      assert error.message =~ ":timeout"
      assert SnakeBridge.await(ref) == {:ok, 7}
    end
  end

  describe "stream/4's :window" do
    test "2^64 is refused with the argument named" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.stream("builtins", "range", [3], pool: @pool, window: 2 ** 64)
        end

      assert error.message =~ ":window"
    end
  end

  describe "args and :kwargs" do
    test "an improper :kwargs list" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.call("sbhelpers", "echo", [], pool: @pool, kwargs: [{:a, 1} | :b])
        end

      assert error.message =~ ":kwargs"
    end

    test "an improper :kwargs list in call_async/4" do
      error =
        assert_raise ArgumentError, fn ->
          Native.call_async("sbhelpers", "echo", [], pool: @pool, kwargs: [{:a, 1} | :b])
        end

      assert error.message =~ ":kwargs"
    end

    test "an improper args list" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.call("sbhelpers", "echo", [1 | 2]) end
      assert error.message =~ "args"
    end
  end

  describe "options lists" do
    test "call/4 names an unknown option" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.call("sbhelpers", "echo", [1], pool: @pool, window: 3)
        end

      assert error.message =~ "unknown keys [:window]"
    end

    test "call/4 takes :timeout and call_async/4 does not" do
      assert {:ok, [[1], %{}]} =
               SnakeBridge.call("sbhelpers", "echo", [1], timeout: 2_000, pool: @pool)

      error =
        assert_raise ArgumentError, fn ->
          Native.call_async("sbhelpers", "echo", [1], pool: @pool, timeout: 2_000)
        end

      assert error.message =~ "unknown keys [:timeout]"
    end

    test "call/4 checks the :timeout value" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.call("sbhelpers", "echo", [1], timeout: -1)
        end

      assert error.message =~ ":timeout"
    end

    test "the first of repeated options counts, as with Keyword.get/2" do
      assert {:ok, [["x"], %{}]} =
               SnakeBridge.call("sbhelpers", "echo", ["x"],
                 pool: @pool,
                 as: :value,
                 as: :handle,
                 pool: :nope
               )

      assert {:ok, ref} = Native.call_async("sbhelpers", "echo", ["y"], pool: @pool, pool: :nope)
      assert {:ok, [["y"], %{}]} = SnakeBridge.await(ref, 2_000)
    end

    test "call/4 with opts that are not a list" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.call("sbhelpers", "echo", [], :fast) end
      assert error.message =~ "opts"
    end

    test "call/4 with an improper opts list" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.call("sbhelpers", "echo", [], [{:pool, @pool} | :fast])
        end

      assert error.message =~ "opts"
    end

    test "call_async/4 with an improper opts list" do
      error =
        assert_raise ArgumentError, fn ->
          Native.call_async("sbhelpers", "echo", [], [{:pool, @pool} | :fast])
        end

      assert error.message =~ "opts"
    end

    test "stream/4 with an improper opts list" do
      error =
        assert_raise ArgumentError, fn ->
          SnakeBridge.stream("builtins", "range", [3], [{:pool, @pool} | :fast])
        end

      assert error.message =~ "opts"
    end

    test "getattr/3 with opts that are not a list", %{counter: counter} do
      error = assert_raise ArgumentError, fn -> SnakeBridge.getattr(counter, "value", :fast) end
      assert error.message =~ "opts"
    end
  end

  describe "names" do
    test "stream/4 checks the module name when called" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.stream(123, "range", [3]) end
      assert error.message =~ "module name"
    end

    test "method/4 needs a method name", %{counter: counter} do
      error = assert_raise ArgumentError, fn -> SnakeBridge.method(counter, nil) end
      assert error.message =~ "method name"
    end
  end

  describe "objects" do
    test "method/4 with something other than an object" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.method(:counter, "add") end
      assert error.message =~ "SnakeBridge.Object"
    end

    test "getattr/3 with something other than an object or a module name" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.getattr(123, "n") end
      assert error.message =~ "SnakeBridge.Object or a module name"
    end

    test "setattr/4 with something other than an object" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.setattr(nil, "n", 1) end
      assert error.message =~ "SnakeBridge.Object"
    end

    test "stream/1 with something other than an object" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.stream([1, 2]) end
      assert error.message =~ "SnakeBridge.Object"
    end

    test "release/1 with something other than an object" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.release(make_ref()) end
      assert error.message =~ "SnakeBridge.Object"
    end

    test "release/1 with a struct the NIF did not make" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.release(forged()) end
      assert error.message =~ "SnakeBridge.Object made by SnakeBridge"
    end

    test "Object.os_pid/1 with something other than an object" do
      error = assert_raise ArgumentError, fn -> Object.os_pid(:counter) end
      assert error.message =~ "SnakeBridge.Object"
    end
  end

  describe "refs, code, pools and bytes" do
    test "cancel/1 with something other than a reference" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.cancel(:x) end
      assert error.message =~ "ref"
    end

    test "await/2 with something other than a reference" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.await(:x) end
      assert error.message =~ "ref"
    end

    test "eval/3 with code that is not a string" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.eval(123) end
      assert error.message =~ "code"
    end

    test "eval/3 with globals that are not a map" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.eval("x", x: 1) end
      assert error.message =~ "globals"
    end

    test "eval/3 with a global whose key cannot be a Python name" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.eval("1", %{1 => 2}, pool: @pool) end
      assert error.message =~ "globals"
    end

    test "stats/1 with a pool name that is not an atom" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.stats("default") end
      assert error.message =~ "pool"
    end

    test "bytes/1 with iodata that is not a binary" do
      error = assert_raise ArgumentError, fn -> SnakeBridge.bytes(["ab", ?c]) end
      assert error.message =~ "binary"
    end
  end

  describe "integers too big for the BEAM" do
    test "are refused by the worker, which keeps serving with its objects", %{counter: counter} do
      assert SnakeBridge.method!(counter, "add", [1]) == 1
      %{restarts: restarts, workers: [%{os_pid: os_pid}]} = SnakeBridge.stats(@pool)

      assert {:error, %SnakeBridge.Error{reason: :unsupported_type, message: message}} =
               SnakeBridge.eval("1 << (8 * 5_000_000)", %{}, pool: @pool)

      assert message =~ "5000001 bytes"
      assert message =~ "#{@max_bigint_bytes} byte limit"

      assert %{restarts: ^restarts, workers: [%{os_pid: ^os_pid}]} = SnakeBridge.stats(@pool)
      assert SnakeBridge.method!(counter, "add", [1]) == 2
      assert Object.os_pid(counter) == os_pid
    end

    test "the largest the BEAM holds comes back as an integer" do
      bits = 8 * @max_bigint_bytes
      largest = Bitwise.bsl(1, bits - 1) - 1 + Bitwise.bsl(1, bits - 1)

      assert SnakeBridge.eval("-((1 << #{bits}) - 1)", %{}, pool: @pool, timeout: 30_000) ==
               {:ok, -largest}
    end
  end
end
