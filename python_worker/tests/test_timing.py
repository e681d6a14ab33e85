"""Calls flagged CALL_TIMED: the worker reports when it started them and
how long they ran, in a timing message just before the reply."""

from __future__ import annotations

import time

from conftest import OK, PY_ERROR, FAILURE, Worker

TIMING = 20
CALL_TIMED = 8


def monotonic_us() -> int:
    # CLOCK_MONOTONIC, the clock of deadlines and of the timing message.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_a_timed_call_reports_its_start_and_python_time(worker: Worker) -> None:
    before = monotonic_us()
    call_id = worker.start("time", "sleep", [0.05], flags=CALL_TIMED)
    timing = worker.recv()
    reply = worker.recv()
    after = monotonic_us()

    assert timing[0] == TIMING and timing[1] == call_id, timing
    started_at, python_us = timing[2], timing[3]
    assert before <= started_at <= after
    assert python_us >= 50_000
    assert started_at + python_us <= after
    assert reply == [OK, call_id, None]


def test_untimed_calls_get_no_timing_message(worker: Worker) -> None:
    assert worker.call("operator", "add", [1, 2])[0] == OK
    assert worker.call("time", "sleep", [0.01])[0] == OK


def test_an_exception_is_timed_too(worker: Worker) -> None:
    call_id = worker.start("operator", "truediv", [1, 0], flags=CALL_TIMED)
    timing = worker.recv()
    assert timing[:2] == [TIMING, call_id]
    reply = worker.recv()
    assert reply[0] == PY_ERROR and reply[2] == "ZeroDivisionError", reply


def test_a_call_that_never_ran_is_not_timed(worker: Worker) -> None:
    call_id = worker.start("operator", "add", [1, 2], deadline=1, flags=CALL_TIMED)
    reply = worker.recv()
    assert reply[:2] == [FAILURE, call_id]
    assert reply[2] == "timeout"
    # The next timed call's messages follow, and nothing stray before them.
    call_id = worker.start("operator", "add", [1, 2], flags=CALL_TIMED)
    assert worker.recv()[:2] == [TIMING, call_id]
    assert worker.recv() == [OK, call_id, 3]
