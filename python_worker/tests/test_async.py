"""Awaitable results run as tasks on the worker's event loop, between frames;
async iterators stream under credit like sync ones."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from conftest import CALL_AS_HANDLE, CALL_STREAM, FAILURE, ITEMS, OK, PY_ERROR, Worker
from test_cancel import PROMPT, lines, wait_for_line
from test_streams import assert_nothing_more_then_pong, collect, items


def test_async_def_result_is_awaited(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "sleep_return", [42, 0.01]) == 42


def test_hundred_concurrent_sleeps_overlap(worker: Worker) -> None:
    started = time.monotonic()
    ids = [worker.start("sb_helpers", "sleep_return", [i, 0.1]) for i in range(100)]
    replies = [worker.recv() for _ in ids]
    elapsed = time.monotonic() - started
    assert sorted((r[1], r[2]) for r in replies) == [(call_id, i) for i, call_id in enumerate(ids)]
    assert all(r[0] == OK for r in replies)
    # One after the other they would take 10 s.
    assert elapsed < 1.0, elapsed


def test_sync_calls_are_served_while_tasks_wait(worker: Worker) -> None:
    slow = worker.start("sb_helpers", "sleep_return", ["late", 1.0])
    started = time.monotonic()
    assert worker.ok("operator", "add", [1, 2]) == 3
    assert worker.ok("sb_helpers", "spin", [1000]) == sum(range(1000))
    assert time.monotonic() - started < 0.9
    assert worker.recv() == [OK, slow, "late"]


def test_async_exception_is_a_python_error(worker: Worker) -> None:
    reply = worker.call("sb_helpers", "async_fail", ["async boom"])
    assert reply[:5] == [PY_ERROR, reply[1], "CustomError", "sb_helpers", "async boom"]
    assert "in async_fail" in "".join(reply[5])


def test_tasks_and_streams_are_announced_as_started(worker: Worker) -> None:
    plain = worker.call("operator", "add", [1, 2])[1]
    task = worker.call("sb_helpers", "sleep_return", [1, 0.01])[1]
    sync_stream = worker.start("builtins", "range", [3], flags=CALL_STREAM, window=10)
    collect(worker, sync_stream)
    async_stream = worker.start("sb_helpers", "async_numbers", ["s", 2, 0.001], flags=CALL_STREAM, window=10)
    collect(worker, async_stream)
    assert worker.started == [task, sync_stream, async_stream]
    assert plain not in worker.started


def test_tasks_answer_after_the_hosts_last_frame(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "sleep_return", ["done", 0.2])
    # Answered after the task was set up: the loop has handled both frames.
    assert worker.ok("operator", "add", [1, 1]) == 2
    worker.sock.shutdown(socket.SHUT_WR)
    assert worker.recv() == [OK, call_id, "done"]
    assert worker.wait() == 0


def test_async_result_as_handle(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "async_date").repr == "Day(2024, 1, 2)"
    handle = worker.ok("sb_helpers", "sleep_return", [5, 0], flags=CALL_AS_HANDLE)
    assert (handle.type_name, handle.repr) == ("int", "5")


@pytest.mark.parametrize("signal_too", [True, False])
def test_cancel_of_a_pending_task(worker: Worker, tmp_path: Path, signal_too: bool) -> None:
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "async_sleep_marked", [str(marks), 30])
    wait_for_line(marks, "started")
    started = time.monotonic()
    worker.cancel(call_id, signal_too=signal_too)
    assert worker.recv() == [FAILURE, call_id, "cancelled", "the caller cancelled the call"]
    assert time.monotonic() - started < PROMPT
    assert lines(marks) == ["started", "async finally"]
    assert worker.ok("sb_helpers", "sleep_return", [1, 0]) == 1


def test_cancel_signal_handled_inside_a_task_still_wakes_the_loop(worker: Worker, tmp_path: Path) -> None:
    # The signal's handler runs in the task's own Python code and reads the
    # Cancel frame there: the socket is empty by the time the event loop
    # waits again, so only the handler's wake-up can end that wait early.
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "spin_then_sleep", [str(marks), 0.5, 30])
    wait_for_line(marks, "spinning")
    started = time.monotonic()
    worker.cancel(call_id)
    assert worker.recv() == [FAILURE, call_id, "cancelled", "the caller cancelled the call"]
    assert time.monotonic() - started < 0.5 + PROMPT


def test_cancel_leaves_other_tasks_running(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    other = worker.start("sb_helpers", "sleep_return", ["other", 0.3])
    call_id = worker.start("sb_helpers", "async_sleep_marked", [str(marks), 30])
    wait_for_line(marks, "started")
    worker.cancel(call_id)
    replies = {tuple(worker.recv()[:3]) for _ in range(2)}
    assert replies == {(FAILURE, call_id, "cancelled"), (OK, other, "other")}


def test_expired_async_call_is_not_started(worker: Worker, tmp_path: Path) -> None:
    from conftest import call_frame, monotonic_micros

    marks = tmp_path / "marks"
    worker.send_raw(call_frame(77, "sb_helpers", "async_sleep_marked", [str(marks), 0], {}, monotonic_micros() - 1))
    assert worker.recv()[:3] == [FAILURE, 77, "timeout"]
    assert lines(marks) == []


def test_async_generator_stream(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "async_numbers", ["a", 5, 0.001], flags=CALL_STREAM, window=100)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [0, 1, 2, 3, 4]
    assert end == [OK, call_id, None]


def test_async_stream_respects_credit(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "async_numbers", ["c", 50, 0], flags=CALL_STREAM, window=3)
    assert items(worker, call_id, 3) == [0, 1, 2]
    assert_nothing_more_then_pong(worker)
    assert worker.ok("sb_helpers", "produced", ["c"]) <= 4
    worker.credit(call_id, 2)
    assert items(worker, call_id, 2) == [3, 4]
    worker.credit(call_id, 100)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == list(range(5, 50))
    assert end == [OK, call_id, None]


def test_fast_async_stream_is_batched(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "async_numbers", ["f", 5000, 0], flags=CALL_STREAM, window=10_000)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == list(range(5000))
    assert len(batches) < 5000 and all(len(batch) <= 1024 for batch in batches)
    assert end == [OK, call_id, None]


def test_async_stream_exception_follows_its_items(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "async_failing_after", [2], flags=CALL_STREAM, window=10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [0, 1]
    assert end[:5] == [PY_ERROR, call_id, "CustomError", "sb_helpers", "async stream broke"]


@pytest.mark.parametrize("window", [1, 1000])
def test_cancel_closes_an_async_generator(worker: Worker, tmp_path: Path, window: int) -> None:
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "async_guarded", [str(marks), 0.01], flags=CALL_STREAM, window=window)
    message = worker.recv()
    assert message[:2] == [ITEMS, call_id]
    worker.cancel(call_id)
    while True:
        message = worker.recv()
        if message[0] != ITEMS:
            break
    assert message == [FAILURE, call_id, "cancelled", "the caller cancelled the call"]
    assert lines(marks) == ["closed"]


def test_unsendable_async_item_ends_the_stream(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "async_unsendable", flags=CALL_STREAM, window=10)
    batches, end = collect(worker, call_id)
    assert [i for batch in batches for i in batch] == [1]
    assert end[:3] == [FAILURE, call_id, "unsupported_type"]
