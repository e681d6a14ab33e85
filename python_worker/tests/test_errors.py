"""Exceptions become PyError replies, unconvertible values become Failure replies,
and the worker keeps serving after all of them."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import CALL, FAILURE, OK, PY_ERROR, Handle, Worker, frame, frame_body
from snakebridge_worker import _native


def raw_call(call_id: int, args: bytes, kwargs: bytes = b"\x80", function: str = "identity") -> bytes:
    dumps = _native.dumps
    return frame_body(
        b"\x99" + dumps(CALL) + dumps(call_id) + dumps(0) + dumps("sb_helpers") + dumps(function) + args + kwargs + dumps(0) + dumps(0)
    )


def py_error(worker: Worker, module: str, function: str, args: list[Any] | None = None) -> list[Any]:
    reply = worker.call(module, function, args)
    assert reply[0] == PY_ERROR, reply
    assert len(reply) == 7
    return reply[2:6]


def attributes(worker: Worker, module: str, function: str, args: list[Any] | None = None) -> dict[str, Any]:
    reply = worker.call(module, function, args)
    assert reply[0] == PY_ERROR, reply
    return reply[6]


def failure(worker: Worker, module: str, function: str, args: list[Any] | None = None) -> tuple[str, str]:
    reply = worker.call(module, function, args)
    assert reply[0] == FAILURE, reply
    return reply[2], reply[3]


def assert_still_serving(worker: Worker) -> None:
    assert worker.ok("operator", "add", [40, 2]) == 42


def test_exception_type_module_message_traceback(worker: Worker) -> None:
    exc_type, module, message, traceback = py_error(worker, "operator", "truediv", [1, 0])
    assert (exc_type, module, message) == ("ZeroDivisionError", "builtins", "division by zero")
    # operator.truediv is C code called straight from the loop: no Python frames.
    assert traceback == ["ZeroDivisionError: division by zero\n"]
    assert_still_serving(worker)


def test_user_exception_traceback_names_the_user_code(worker: Worker) -> None:
    exc_type, module, message, traceback = py_error(worker, "sb_helpers", "fail", ["boom"])
    assert (exc_type, module, message) == ("CustomError", "sb_helpers", "boom")
    assert traceback[0].startswith("Traceback")
    assert traceback[-1] == "sb_helpers.CustomError: boom\n"
    text = "".join(traceback)
    assert "sb_helpers.py" in text and "in fail" in text
    assert_still_serving(worker)


def test_missing_module_is_module_not_found_error(worker: Worker) -> None:
    exc_type, module, message, _ = py_error(worker, "no_such_module_xyz", "f")
    assert (exc_type, module, message) == ("ModuleNotFoundError", "builtins", "No module named 'no_such_module_xyz'")
    assert_still_serving(worker)


def test_missing_function_is_attribute_error(worker: Worker) -> None:
    exc_type, module, message, _ = py_error(worker, "math", "no_such_function")
    assert (exc_type, module) == ("AttributeError", "builtins")
    assert "no_such_function" in message
    assert_still_serving(worker)


def test_failed_resolution_is_not_cached(worker: Worker, tmp_path: Any) -> None:
    assert py_error(worker, "sb_late_module", "f")[0] == "ModuleNotFoundError"
    (tmp_path / "sb_late_module.py").write_text("def f():\n    return 'now it exists'\n")
    worker.ok("sb_helpers", "add_import_path", [str(tmp_path)])
    assert worker.ok("sb_late_module", "f") == "now it exists"


def test_not_callable_is_type_error(worker: Worker) -> None:
    exc_type, _, message, _ = py_error(worker, "sb_helpers", "NOT_CALLABLE")
    assert exc_type == "TypeError" and "not callable" in message


def test_system_exit_is_an_error_reply(worker: Worker) -> None:
    exc_type, module, message, _ = py_error(worker, "sb_helpers", "exit_now", [3])
    assert (exc_type, module, message) == ("SystemExit", "builtins", "3")
    assert_still_serving(worker)
    assert py_error(worker, "builtins", "exit", [])[0] == "SystemExit"
    assert_still_serving(worker)


def test_keyboard_interrupt_is_an_error_reply(worker: Worker) -> None:
    assert py_error(worker, "sb_helpers", "interrupt")[:2] == ["KeyboardInterrupt", "builtins"]
    assert_still_serving(worker)


def test_exception_whose_str_fails(worker: Worker) -> None:
    exc_type, module, message, _ = py_error(worker, "sb_helpers", "unprintable")
    assert (exc_type, module) == ("Unprintable", "sb_helpers")
    assert "str() failed" in message
    assert_still_serving(worker)


def test_unmappable_result_is_a_handle_not_a_failure(worker: Worker) -> None:
    handle = worker.ok("sb_helpers", "today")
    assert (handle.type_name, handle.repr) == ("sb_helpers.Day", "Day(2024, 1, 2)")
    assert_still_serving(worker)


def test_unsupported_nested_result_names_the_path(worker: Worker) -> None:
    reason, message = failure(worker, "sb_helpers", "nested_surrogate")
    assert reason == "unsupported_type"
    assert message.startswith("cannot convert result[2]['key'] of Python type builtins.str: not valid UTF-8")


def test_unsupported_dict_key(worker: Worker) -> None:
    reason, message = failure(worker, "sb_helpers", "bad_key")
    assert reason == "unsupported_type"
    assert message.startswith("cannot convert result key '\\udc80' of Python type builtins.str")


def test_builtin_types_without_wire_form_are_handles(worker: Worker) -> None:
    assert worker.ok("builtins", "complex", [1, 2]).type_name == "complex"
    assert worker.ok("builtins", "object").type_name == "object"


def test_string_with_surrogates_is_unsupported(worker: Worker) -> None:
    reason, message = failure(worker, "sb_helpers", "surrogate")
    assert reason == "unsupported_type" and "builtins.str" in message


def test_too_deep_result(worker: Worker) -> None:
    # The deepest result allowed; the test decodes the value alone, since
    # inside the whole reply message it would be one level deeper.
    worker.send_raw(raw_call(1, _native.dumps([_native.MAX_DEPTH]), function="nest"))
    prefix = b"\x93" + _native.dumps(OK) + _native.dumps(1)
    body = worker.recv_body()
    assert body.startswith(prefix)
    value = _native.loads(body[len(prefix):])
    for _ in range(_native.MAX_DEPTH):
        (value,) = value
    assert value is None

    reason, message = failure(worker, "sb_helpers", "nest", [_native.MAX_DEPTH + 1])
    assert reason == "nesting_too_deep"
    assert message.startswith("cannot convert result[0][0]") and "deeper than 100 levels" in message
    assert failure(worker, "sb_helpers", "self_containing")[0] == "nesting_too_deep"
    assert_still_serving(worker)


def test_too_large_result(worker: Worker) -> None:
    reason, message = failure(worker, "sb_helpers", "blob", [_native.MAX_FRAME_LEN])
    assert reason == "payload_too_large"
    assert str(_native.MAX_FRAME_LEN) in message
    assert len(worker.ok("sb_helpers", "blob", [_native.MAX_FRAME_LEN - 100])) == _native.MAX_FRAME_LEN - 100
    assert_still_serving(worker)




def test_unhashable_key_in_arguments(worker: Worker) -> None:
    # identity({[1]: 2}): a list used as a dict key, which Python cannot build.
    worker.send_raw(raw_call(1, b"\x91\x81\x91\x01\x02"))
    reply = worker.recv()
    assert reply[:3] == [FAILURE, 1, "unsupported_type"]
    assert "argument 0" in reply[3] and "unhashable type: 'list'" in reply[3]
    assert_still_serving(worker)


def test_dict_as_set_element_in_arguments(worker: Worker) -> None:
    set_of_dict = b"\xc7\x02\x03\x91\x80"  # ext 3 holding [{}]
    worker.send_raw(raw_call(2, b"\x91" + set_of_dict))
    reply = worker.recv()
    assert reply[:3] == [FAILURE, 2, "unsupported_type"]
    assert "unhashable type: 'dict'" in reply[3]


def test_non_string_keyword_name(worker: Worker) -> None:
    worker.send_raw(raw_call(3, b"\x91\x01", b"\x81\x01\x02"))
    reply = worker.recv()
    assert reply[:3] == [FAILURE, 3, "unsupported_type"]
    assert "keyword argument names must be strings" in reply[3]
    assert_still_serving(worker)


@pytest.mark.parametrize("count", [1, 50])
def test_errors_in_a_pipelined_batch_keep_order(worker: Worker, count: int) -> None:
    batch = b"".join(
        frame([CALL, i, 0, "operator", "truediv", [1, i % 2], {}, 0, 0]) for i in range(count * 2)
    )
    worker.send_raw(batch)
    replies = [worker.recv() for _ in range(count * 2)]
    assert [r[1] for r in replies] == list(range(count * 2))
    assert [r[0] for r in replies] == [PY_ERROR if i % 2 == 0 else OK for i in range(count * 2)]


# The largest int magnitude the BEAM holds, in bits; an int with one bit
# more cannot be built on the host.
MAX_BIGINT_BITS = 8 * _native.MAX_BIGINT_BYTES


def test_int_too_big_for_the_beam_is_refused_and_the_worker_keeps_its_objects(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter", [1])
    reason, message = failure(worker, "operator", "lshift", [1, 8 * 5_000_000])
    assert reason == "unsupported_type"
    assert message == (
        "cannot convert result of Python type builtins.int: an int of 40000001 bits (5000001 bytes)"
        f" is over the {_native.MAX_BIGINT_BYTES} byte limit of Erlang integers"
    )
    assert worker.ok(Handle(counter.id), "add", [1]) == 2
    assert_still_serving(worker)


def test_int_too_big_for_the_beam_is_refused_by_its_size_in_bits(worker: Worker) -> None:
    # Built in the worker: the test's own dumps would refuse to send it.
    reason, message = failure(worker, "builtins", "eval", [f"-(1 << {MAX_BIGINT_BITS})"])
    assert reason == "unsupported_type"
    assert f"an int of {MAX_BIGINT_BITS + 1} bits" in message
    reason, message = failure(worker, "builtins", "eval", [f"[0, 1 << {MAX_BIGINT_BITS}]"])
    assert reason == "unsupported_type" and message.startswith("cannot convert result[1] of Python type builtins.int")
    assert_still_serving(worker)


def test_largest_int_the_beam_holds_is_sent(worker: Worker) -> None:
    largest = (1 << MAX_BIGINT_BITS) - 1
    assert worker.ok("operator", "neg", [largest]) == -largest


def test_dumps_refuses_an_int_too_big_for_the_beam() -> None:
    with pytest.raises(_native.EncodeError) as raised:
        _native.dumps(1 << MAX_BIGINT_BITS)
    assert raised.value.reason == "unsupported_type"


def test_public_attributes_come_by_value(worker: Worker) -> None:
    found = attributes(worker, "sb_helpers", "need_more", [5])
    assert found["needed"] == 5
    assert found["args"] == ("need 5 more",)
    # No by-value form: its repr.
    assert found["where"].startswith("<object object at")
    assert not any(name.startswith("_") for name in found)
    assert "with_traceback" not in found
    assert_still_serving(worker)


def test_builtin_exception_attributes(worker: Worker) -> None:
    found = attributes(worker, "os", "stat", ["/no/such/path"])
    assert found["errno"] == 2 and found["filename"] == "/no/such/path"
    assert found["strerror"] == "No such file or directory"
    assert attributes(worker, "sb_helpers", "exit_now", [3])["code"] == 3


def test_worker_frames_are_trimmed_from_import_errors(worker: Worker) -> None:
    exc_type, _, message, traceback = py_error(worker, "sb_broken_module", "f")
    assert (exc_type, message) == ("ZeroDivisionError", "division by zero")
    text = "".join(traceback)
    assert "sb_broken_module.py" in text
    assert "snakebridge_worker" not in text and "importlib" not in text, text
    frames = [line for line in traceback if line.startswith("  File")]
    assert len(frames) == 1, traceback


def test_worker_frames_are_trimmed_from_syntax_errors(worker: Worker) -> None:
    exc_type, _, _, traceback = py_error(worker, "snakebridge_worker.evaluate", "evaluate", ["1 +"])
    assert exc_type == "SyntaxError"
    text = "".join(traceback)
    assert "snakebridge_worker" not in text and 'File "<eval>", line 1' in text
    assert not text.startswith("Traceback"), text


def test_user_frames_stay(worker: Worker) -> None:
    _, _, _, traceback = py_error(worker, "sb_helpers", "fail", ["boom"])
    assert [line for line in traceback if line.startswith("  File")] == [
        line for line in traceback if "sb_helpers.py" in line
    ]
