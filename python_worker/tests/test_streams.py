"""Streamed calls (CALL_STREAM): items in batches under the host's credit,
the end of the stream, cancels, and the loop serving other frames meanwhile."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import CALL_AS_HANDLE, CALL_STREAM, FAILURE, ITEMS, OK, PING, PONG, PY_ERROR, Handle, Worker
from test_cancel import PROMPT, lines, wait_for_line

MANY = 1 << 30


def stream(worker: Worker, function: str, args: list[Any], window: int, flags: int = 0) -> int:
    return worker.start("sb_helpers", function, args, flags=CALL_STREAM | flags, window=window)


def collect(worker: Worker, call_id: int) -> tuple[list[list[Any]], list[Any]]:
    """The items messages of a stream, and the message that ends it."""
    batches: list[list[Any]] = []
    while True:
        message = worker.recv()
        assert message[1] == call_id, message
        if message[0] != ITEMS:
            return batches, message
        batches.append(message[2])


def items(worker: Worker, call_id: int, count: int) -> list[Any]:
    """Exactly ``count`` items of a stream that is not over yet."""
    got: list[Any] = []
    while len(got) < count:
        message = worker.recv()
        assert message[:2] == [ITEMS, call_id], message
        got += message[2]
    assert len(got) == count, got
    return got


def assert_nothing_more_then_pong(worker: Worker) -> None:
    """A ping is answered, and nothing was sent before its pong."""
    worker.send([PING, 999])
    assert worker.recv() == [PONG, 999]


def test_items_arrive_in_order_in_batches(worker: Worker) -> None:
    call_id = stream(worker, "numbers", [5000], MANY)
    batches, end = collect(worker, call_id)
    assert end == [OK, call_id, None]
    assert [i for batch in batches for i in batch] == list(range(5000))
    # The first item goes alone (the next one might be slow to come).
    assert batches[0] == [0]
    assert len(batches) < 5000 and all(len(batch) <= 1024 for batch in batches)


def test_window_bounds_what_is_sent_and_produced(worker: Worker) -> None:
    call_id = stream(worker, "counted", ["w", 100], 5)
    assert items(worker, call_id, 5) == [0, 1, 2, 3, 4]
    # Calls and pings are served while the stream waits for credit, and
    # nothing else was sent before their replies.
    assert_nothing_more_then_pong(worker)
    assert worker.ok("sb_helpers", "produced", ["w"]) <= 6
    worker.credit(call_id, 3)
    assert items(worker, call_id, 3) == [5, 6, 7]
    assert_nothing_more_then_pong(worker)
    assert worker.ok("sb_helpers", "produced", ["w"]) <= 9
    worker.credit(call_id, 1000)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == list(range(8, 100))
    assert end == [OK, call_id, None]


def test_zero_window_sends_nothing_until_credit(worker: Worker) -> None:
    call_id = stream(worker, "counted", ["z", 3], 0)
    assert_nothing_more_then_pong(worker)
    assert worker.ok("sb_helpers", "produced", ["z"]) == 0
    worker.credit(call_id, 10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [0, 1, 2]
    assert end == [OK, call_id, None]


def test_credit_for_an_unknown_stream_is_ignored(worker: Worker) -> None:
    worker.credit(4242, 10)
    assert_nothing_more_then_pong(worker)


def test_empty_stream_ends_with_ok_nil(worker: Worker) -> None:
    call_id = worker.start("builtins", "list", [[]], flags=CALL_STREAM, window=1)
    assert worker.recv() == [OK, call_id, None]


def test_any_iterable_streams(worker: Worker) -> None:
    call_id = worker.start("builtins", "range", [3], flags=CALL_STREAM, window=10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [0, 1, 2] and end == [OK, call_id, None]


def test_exception_mid_stream_follows_the_items(worker: Worker) -> None:
    call_id = stream(worker, "failing_after", [3], 10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [0, 1, 2]
    assert end[:5] == [PY_ERROR, call_id, "CustomError", "sb_helpers", "stream broke"]


def test_non_iterable_result_is_a_python_error(worker: Worker) -> None:
    call_id = worker.start("operator", "add", [1, 2], flags=CALL_STREAM, window=10)
    reply = worker.recv()
    assert reply[:3] == [PY_ERROR, call_id, "TypeError"], reply


def test_unsendable_item_ends_the_stream_and_closes_it(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = stream(worker, "unsendable_third", [str(marks)], 10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [1, 2]
    assert end[:3] == [FAILURE, call_id, "unsupported_type"]
    assert "stream item" in end[3]
    assert lines(marks) == ["closed"]


def test_items_may_be_handles(worker: Worker) -> None:
    call_id = stream(worker, "dates", [3], 10)
    batches, end = collect(worker, call_id)
    dates = [i for batch in batches for i in batch]
    assert [d.repr for d in dates] == [f"Day(2024, 1, {day})" for day in (1, 2, 3)]
    assert worker.ok(dates[1], "isoformat") == "2024-01-02"
    assert end == [OK, call_id, None]


def test_as_handle_stream_sends_every_item_as_a_handle(worker: Worker) -> None:
    call_id = stream(worker, "numbers", [2], 10, flags=CALL_AS_HANDLE)
    batches, end = collect(worker, call_id)
    assert [(h.type_name, h.repr) for batch in batches for h in batch] == [("int", "0"), ("int", "1")]


def test_cancel_closes_the_generator(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = stream(worker, "guarded", [str(marks), 100], 2)
    assert items(worker, call_id, 2) == [0, 1]
    worker.cancel(call_id)
    assert worker.recv() == [FAILURE, call_id, "cancelled", "the caller cancelled the call"]
    assert lines(marks) == ["closed"]
    assert worker.ok("operator", "add", [1, 2]) == 3


def test_cancel_without_signal_closes_a_waiting_stream(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = stream(worker, "guarded", [str(marks), 100], 1)
    assert items(worker, call_id, 1) == [0]
    worker.cancel(call_id, signal_too=False)
    assert worker.recv()[:3] == [FAILURE, call_id, "cancelled"]
    assert lines(marks) == ["closed"]


def test_cancel_interrupts_a_generator_blocked_in_next(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = stream(worker, "blocking_stream", [str(marks), 30], 5)
    assert items(worker, call_id, 1) == [1]
    wait_for_line(marks, "blocking")
    started = time.monotonic()
    worker.cancel(call_id)
    assert worker.recv()[:3] == [FAILURE, call_id, "cancelled"]
    assert time.monotonic() - started < PROMPT
    assert lines(marks) == ["blocking", "finally"]
    assert worker.ok("operator", "add", [1, 2]) == 3


def test_streams_take_turns(worker: Worker) -> None:
    first = stream(worker, "numbers", [5000], MANY)
    second = stream(worker, "numbers", [5000], MANY)
    order = []
    ended: set[int] = set()
    got: dict[int, list[int]] = {first: [], second: []}
    while len(ended) < 2:
        message = worker.recv()
        order.append((message[0], message[1]))
        if message[0] == ITEMS:
            got[message[1]] += message[2]
        else:
            assert message[0] == OK
            ended.add(message[1])
    assert got == {first: list(range(5000)), second: list(range(5000))}
    # The second stream sent items before the first one was over.
    assert order.index((ITEMS, second)) < order.index((OK, first))


def test_stream_of_a_coroutine_result(worker: Worker) -> None:
    call_id = stream(worker, "async_list", [3], 10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [0, 1, 2]
    assert end == [OK, call_id, None]


def test_handle_target_can_stream(worker: Worker) -> None:
    items_list = worker.ok("builtins", "list", [[1, 2, 3]], flags=CALL_AS_HANDLE)
    assert isinstance(items_list, Handle)
    call_id = worker.start(items_list, "__iter__", flags=CALL_STREAM, window=10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [1, 2, 3] and end == [OK, call_id, None]
