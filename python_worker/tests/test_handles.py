"""Objects without a wire form travel as handles: the worker keeps them in its
object table, the host sends them back as arguments or call targets, and
releases them."""

from __future__ import annotations


import pytest

from conftest import CALL_AS_HANDLE, FAILURE, OK, PING, PONG, PY_ERROR, Handle, Worker
from snakebridge_worker import _native


def stale(worker: Worker, target: str | Handle, function: str | None, args: list | None = None) -> str:
    reply = worker.call(target, function, args)
    assert reply[0] == FAILURE and reply[2] == "stale_handle", reply
    return reply[3]


def test_unmappable_result_comes_back_as_a_handle(worker: Worker) -> None:
    handle = worker.ok("sb_helpers", "today")
    assert isinstance(handle, Handle) and handle.id >= 1
    assert (handle.type_name, handle.repr) == ("sb_helpers.Day", "Day(2024, 1, 2)")


def test_type_names_and_reprs(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter", [3])
    assert (counter.type_name, counter.repr) == ("sb_helpers.Counter", "Counter(3)")
    # Builtins go by their bare name.
    assert worker.ok("builtins", "object").type_name == "object"
    assert worker.ok("builtins", "complex", [1, 2]).repr == "(1+2j)"


def test_repr_is_cut_to_200_characters(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "long_repr").repr == "é" * 200


def test_failing_repr_is_replaced(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "bad_repr").repr == "<sb_helpers.BadRepr object>"


def test_handles_nested_in_a_result(worker: Worker) -> None:
    value = worker.ok("sb_helpers", "nested_date")
    assert value[:2] == [1, 2] and value[2]["key"].type_name == "sb_helpers.Day"


def test_ids_are_new_for_every_result(worker: Worker) -> None:
    first = worker.ok("sb_helpers", "today")
    second = worker.ok("sb_helpers", "today")
    worker.release(first.id)
    third = worker.ok("sb_helpers", "today")
    assert first.id < second.id < third.id


def test_handles_in_args_and_kwargs_are_the_same_object(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter")
    ref = Handle(counter.id)
    assert worker.ok("sb_helpers", "all_same", [ref, [ref, {"deep": (ref,)}]], {"k": ref}) is True
    worker.ok(ref, "add", [5])
    assert worker.ok("sb_helpers", "value_of", [ref]) == 5


def test_method_calls_on_a_handle_target(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter", [1])
    assert worker.ok(counter, "add", [2]) == 3
    assert worker.ok(counter, "add", [], {"n": 10}) == 13
    # A dotted function is an attribute path on the object.
    assert worker.ok(counter, "child.add", [1]) == 101


def test_missing_attribute_and_not_callable_are_python_errors(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter")
    missing = worker.call(counter, "nope")
    assert missing[0] == PY_ERROR and missing[2] == "AttributeError", missing
    not_callable = worker.call(counter, None)
    assert not_callable[0] == PY_ERROR and not_callable[2] == "TypeError", not_callable
    assert worker.call(counter, "value")[2] == "TypeError"


def test_calling_a_handle_itself(worker: Worker) -> None:
    adder = worker.ok("sb_helpers", "make_adder", [3])
    assert adder.type_name == "function"
    assert worker.ok(adder, None, [4]) == 7


def test_module_target_without_function_calls_what_it_names(worker: Worker) -> None:
    date = worker.ok("sb_helpers.Day", None, [2024, 5, 6])
    assert date.repr == "Day(2024, 5, 6)"
    assert worker.ok(date, "isoformat") == "2024-05-06"


def test_as_handle_flag_returns_a_handle_whatever_the_type(worker: Worker) -> None:
    three = worker.ok("operator", "add", [1, 2], flags=CALL_AS_HANDLE)
    assert (three.type_name, three.repr) == ("int", "3")
    assert worker.ok(three, "__add__", [1]) == 4
    items = worker.ok("builtins", "list", [[1, 2]], flags=CALL_AS_HANDLE)
    assert items.type_name == "list"
    worker.ok(items, "append", [3])
    assert worker.ok("builtins", "len", [items]) == 3
    assert worker.ok("builtins", "list", [items]) == [1, 2, 3]


def test_released_handle_is_stale(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter")
    worker.release(counter.id)
    message = f"object {counter.id} is not held by this worker (released, or the worker restarted)"
    assert stale(worker, counter, "add") == message
    assert stale(worker, "sb_helpers", "value_of", [Handle(counter.id)]) == message
    reply = worker.call("sb_helpers", "echo", [], {"k": [Handle(counter.id)]})
    assert reply[:3] == [FAILURE, reply[1], "stale_handle"]


def test_stale_argument_runs_nothing(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter")
    stale(worker, counter, "add", [Handle(10**9)])
    assert worker.ok("sb_helpers", "value_of", [counter]) == 0


def test_release_of_unknown_ids_is_harmless(worker: Worker) -> None:
    worker.release(0, 12345, 2**64 - 1)
    worker.release()
    worker.send([PING, 3])
    assert worker.recv() == [PONG, 3]
    assert worker.ok("operator", "add", [1, 1]) == 2


def test_object_count_follows_results_and_releases(worker: Worker) -> None:
    assert worker.object_count() == 0
    handles = [worker.ok("sb_helpers", "make_counter") for _ in range(3)]
    assert worker.object_count() == 3
    worker.release(*(h.id for h in handles))
    assert worker.object_count() == 0


def test_oversized_reply_registers_nothing(worker: Worker) -> None:
    before = worker.object_count()
    reply = worker.call("sb_helpers", "dates_then_blob", [_native.MAX_FRAME_LEN])
    assert reply[0] == FAILURE and reply[2] == "payload_too_large", reply[:3]
    assert worker.object_count() == before
    assert worker.ok("sb_helpers", "today").type_name == "sb_helpers.Day"


def test_dumps_without_a_hook_still_refuses_objects() -> None:
    with pytest.raises(_native.EncodeError) as info:
        _native.dumps(object())
    assert info.value.reason == "unsupported_type"


def test_codec_hooks_round_trip_handles() -> None:
    data = _native.dumps([Handle(7)], handle_id=lambda o: o.id if isinstance(o, Handle) else None)
    assert _native.loads(data, handle=Handle) == [Handle(7, None, None)]
    with pytest.raises(_native.DecodeError):
        _native.loads(data)


def test_objects_are_served_alongside_plain_calls(worker: Worker) -> None:
    counter = worker.ok("sb_helpers", "make_counter")
    ids = [worker.start(counter, "add", [1]) for _ in range(50)]
    replies = [worker.recv() for _ in ids]
    assert [r[0] for r in replies] == [OK] * 50
    assert sorted(r[2] for r in replies) == list(range(1, 51))
