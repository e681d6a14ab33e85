"""Cancels and deadlines, against a real worker over a real socketpair.

The harness cancels like the host: it writes the Cancel frame, then sends
SIGUSR1 to the worker process. A cancel of a call that has not started turns
it into a ``cancelled`` Failure; a cancel of the running call raises
``CallCancelled`` in it (the signal's handler reads the Cancel frame); a
cancel of an answered call is ignored. Every call still gets exactly one
reply.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import CANCEL, FAILURE, OK, PY_ERROR, TIMEOUT, Worker, call_frame, frame, monotonic_micros
from snakebridge_worker import CallCancelled, _native
from snakebridge_worker.dispatch import describe, resolve

# Generous bound for "promptly" on a loaded 2-core machine; a cancel that
# did not interrupt would take the full 30 s sleep.
PROMPT = 1.0


def wait_for_line(path: Path, line: str, timeout: float = 10.0) -> None:
    """Waits until the worker recorded ``line``: the call is running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.005)
    raise AssertionError(f"{line!r} never recorded in {path}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def assert_cancelled_error(reply: list[Any], call_id: int) -> None:
    assert reply[:4] == [PY_ERROR, call_id, "CallCancelled", "snakebridge_worker"], reply
    assert reply[4] == "the caller cancelled the call"
    assert reply[5][-1] == "snakebridge_worker.CallCancelled: the caller cancelled the call\n"


def assert_cancelled_failure(reply: list[Any], call_id: int) -> None:
    assert reply == [FAILURE, call_id, "cancelled", "the call was cancelled before it started"], reply


# ---- in this process ------------------------------------------------------------


def test_call_cancelled_is_not_an_exception() -> None:
    assert issubclass(CallCancelled, BaseException) and not issubclass(CallCancelled, Exception)
    assert (CallCancelled.__module__, CallCancelled.__qualname__) == ("snakebridge_worker", "CallCancelled")


def test_handler_does_nothing_when_no_call_runs() -> None:
    assert _native.cancel_signal(signal.SIGUSR1, None) is None


def test_serve_refuses_to_run_off_the_main_thread() -> None:
    host, ours = socket.socketpair()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _native.serve(ours.fileno(), resolve, describe)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    host.close()
    ours.close()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert "main thread" in str(errors[0])


# ---- the running call ---------------------------------------------------------


def test_cancel_interrupts_a_running_sleep(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "sleep_marked", [str(marks), "sleeping", 30])
    wait_for_line(marks, "sleeping")
    started = time.monotonic()
    worker.cancel(call_id)
    reply = worker.recv()
    elapsed = time.monotonic() - started
    assert_cancelled_error(reply, call_id)
    assert "in sleep_marked" in "".join(reply[5])
    assert elapsed < PROMPT, elapsed
    # The same worker goes on serving, Python code included.
    assert worker.ok("sb_helpers", "spin", [1000]) == sum(range(1000))
    assert worker.proc.poll() is None


def test_cancel_interrupts_time_sleep_called_directly(worker: Worker) -> None:
    call_id = worker.start("time", "sleep", [30])
    time.sleep(0.3)  # let it start: a C function records nothing
    started = time.monotonic()
    worker.cancel(call_id)
    reply = worker.recv()
    assert time.monotonic() - started < PROMPT
    assert_cancelled_error(reply, call_id)
    assert worker.ok("operator", "add", [1, 2]) == 3


def test_except_exception_does_not_swallow_the_cancel(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "stubborn_sleep", [str(marks), 30])
    wait_for_line(marks, "stubborn")
    started = time.monotonic()
    worker.cancel(call_id)
    reply = worker.recv()
    assert time.monotonic() - started < PROMPT
    assert_cancelled_error(reply, call_id)


def test_user_code_may_catch_call_cancelled_on_purpose(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "catch_cancel", [str(marks), 30])
    wait_for_line(marks, "catching")
    worker.cancel(call_id)
    assert worker.recv() == [OK, call_id, "caught"]
    # A cancel of an answered call is ignored.
    worker.cancel(call_id)
    assert worker.ok("sb_helpers", "spin", [10]) == 45


def test_cancel_of_a_slow_import_interrupts_it(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    (tmp_path / "sb_slow_import.py").write_text(
        "import time\n"
        f"with open({str(marks)!r}, 'a') as f:\n"
        "    f.write('importing\\n')\n"
        "time.sleep(30)\n"
        "def f():\n"
        "    return 1\n"
    )
    worker.ok("sb_helpers", "add_import_path", [str(tmp_path)])
    call_id = worker.start("sb_slow_import", "f")
    wait_for_line(marks, "importing")
    started = time.monotonic()
    worker.cancel(call_id)
    reply = worker.recv()
    assert time.monotonic() - started < PROMPT
    assert_cancelled_error(reply, call_id)
    assert worker.ok("operator", "add", [2, 2]) == 4


def test_cancel_of_the_running_call_leaves_the_queued_ones(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    first = worker.start("sb_helpers", "sleep_marked", [str(marks), "first", 30])
    second = worker.start("sb_helpers", "record", [str(marks), "second"])
    wait_for_line(marks, "first")
    worker.cancel(first)
    assert_cancelled_error(worker.recv(), first)
    assert worker.recv() == [OK, second, "second"]
    assert lines(marks) == ["first", "second"]


def test_libc_sleep_through_ctypes_is_interrupted(worker: Worker, tmp_path: Path) -> None:
    # sleep(3) returns early when a signal handler runs (it does not retry);
    # the exception is raised as soon as the call is back in Python.
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "libc_sleep", [str(marks), 30])
    wait_for_line(marks, "libc_sleep")
    time.sleep(0.05)  # from record() into sleep(3)
    started = time.monotonic()
    worker.cancel(call_id)
    reply = worker.recv()
    assert time.monotonic() - started < PROMPT
    assert_cancelled_error(reply, call_id)


def test_c_code_that_ignores_signals_is_cancelled_when_it_returns(worker: Worker, tmp_path: Path) -> None:
    # pthread_mutex_timedlock never fails with EINTR: glibc resumes the wait
    # after the signal. The cancel takes effect only when the C call comes
    # back to Python; a C call that never does must be handled by the host
    # (it kills the worker).
    marks = tmp_path / "marks"
    blocked_for = 1.5
    call_id = worker.start("sb_helpers", "blocked_in_c", [str(marks), blocked_for])
    wait_for_line(marks, "blocked")
    started = time.monotonic()
    worker.cancel(call_id)
    reply = worker.recv()
    elapsed = time.monotonic() - started
    assert_cancelled_error(reply, call_id)
    assert elapsed > blocked_for - 0.5, f"the C wait ended early ({elapsed:.2f} s): it was interruptible after all"
    assert worker.ok("operator", "add", [1, 2]) == 3


# ---- calls that have not started ---------------------------------------------


@pytest.mark.parametrize("same_write", [True, False], ids=["in-the-running-batch", "read-by-the-handler"])
def test_cancel_of_a_queued_call_replies_cancelled_and_never_runs(
    worker: Worker, tmp_path: Path, same_write: bool
) -> None:
    marks = tmp_path / "marks"
    if same_write:
        # All three in one write: the loop took them in one batch.
        first, queued, last = (worker.next_id + i for i in (1, 2, 3))
        worker.send_raw(
            call_frame(first, "sb_helpers", "sleep_marked", [str(marks), "first", 0.5], {})
            + call_frame(queued, "sb_helpers", "record", [str(marks), "queued"], {})
            + call_frame(last, "sb_helpers", "record", [str(marks), "last"], {})
        )
        worker.next_id = last
        wait_for_line(marks, "first")
    else:
        # The others arrive while the first runs: still in the socket, until
        # the cancel's handler reads them.
        first = worker.start("sb_helpers", "sleep_marked", [str(marks), "first", 0.5])
        wait_for_line(marks, "first")
        queued = worker.start("sb_helpers", "record", [str(marks), "queued"])
        last = worker.start("sb_helpers", "record", [str(marks), "last"])
    worker.cancel(queued)
    assert worker.recv() == [OK, first, "first"]
    assert_cancelled_failure(worker.recv(), queued)
    assert worker.recv() == [OK, last, "last"]
    assert lines(marks) == ["first", "last"]


def test_cancel_right_behind_its_call_in_one_write(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    worker.send_raw(call_frame(5, "sb_helpers", "record", [str(marks), "cancelled"], {}) + frame([CANCEL, 5]))
    assert_cancelled_failure(worker.recv(), 5)
    assert worker.ok("sb_helpers", "record", [str(marks), "next"]) == "next"
    assert lines(marks) == ["next"]


def test_cancel_frame_in_the_same_read_needs_no_signal(worker: Worker, tmp_path: Path) -> None:
    # The loop scans every chunk it reads for Cancel frames before running
    # the calls in it: the cancel skips its call even though it comes after
    # it, and without SIGUSR1.
    marks = tmp_path / "marks"
    first, queued, last = (worker.next_id + i for i in (1, 2, 3))
    worker.next_id = last
    worker.send_raw(
        call_frame(first, "sb_helpers", "record", [str(marks), "first"], {})
        + call_frame(queued, "sb_helpers", "record", [str(marks), "queued"], {})
        + call_frame(last, "sb_helpers", "record", [str(marks), "last"], {})
        + frame([CANCEL, queued])
    )
    assert worker.recv() == [OK, first, "first"]
    assert_cancelled_failure(worker.recv(), queued)
    assert worker.recv() == [OK, last, "last"]
    assert lines(marks) == ["first", "last"]


def test_signals_without_a_cancel_for_the_running_call_do_nothing(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "sleep_marked", [str(marks), "sleeping", 0.5])
    wait_for_line(marks, "sleeping")
    for _ in range(20):
        os.kill(worker.proc.pid, signal.SIGUSR1)
        time.sleep(0.005)
    # A cancel of another (unknown) id, with its signal, does not hit it either.
    worker.cancel(call_id + 1000)
    assert worker.recv() == [OK, call_id, "sleeping"]


def test_large_frames_read_by_the_handler_are_handled_in_order(worker: Worker, tmp_path: Path) -> None:
    # The handler reads everything the host sent, partial frames included,
    # into the loop's queue: big calls queued behind a cancelled one arrive
    # intact and in order.
    marks = tmp_path / "marks"
    first = worker.start("sb_helpers", "sleep_marked", [str(marks), "first", 30])
    wait_for_line(marks, "first")
    blob = bytes(range(256)) * (12 * 1024)  # 3 MiB: more than the socket buffer
    sender = threading.Thread(
        target=lambda: [worker.start("sb_helpers", "identity", [blob]) for _ in range(3)]
    )
    sender.start()
    # The worker reads only in the handler while the call sleeps: bare
    # signals make it drain the socket, partial frames and all, so the
    # sender can finish; the call is not interrupted by them.
    while sender.is_alive():
        os.kill(worker.proc.pid, signal.SIGUSR1)
        sender.join(0.02)
    ids = [first + 1, first + 2, first + 3]
    # The socket may still be full: like the host must, keep signalling
    # while the Cancel frame is being written, and once more after it.
    canceller = threading.Thread(target=worker.cancel, args=(first, False))
    canceller.start()
    while canceller.is_alive():
        os.kill(worker.proc.pid, signal.SIGUSR1)
        canceller.join(0.02)
    os.kill(worker.proc.pid, signal.SIGUSR1)
    assert_cancelled_error(worker.recv(), first)
    for call_id in ids:
        assert worker.recv() == [OK, call_id, blob]


def test_cancel_racing_completion_never_hits_the_next_call(worker: Worker) -> None:
    # Each round: a short Python call and another one behind it, in one
    # write, then the first one's cancel at once or after up to a
    # millisecond. The first may end in any of the three ways; the second
    # must always succeed, even though a late SIGUSR1 may land while it runs.
    rng = random.Random(1234)
    outcomes = {"ok": 0, "interrupted": 0, "skipped": 0}
    for round_ in range(400):
        n = rng.choice([0, 100, 1000, 3000, 10_000, 30_000])  # up to ~1 ms
        target, bystander = worker.next_id + 1, worker.next_id + 2
        worker.next_id = bystander
        worker.send_raw(
            call_frame(target, "sb_helpers", "spin", [n], {}) + call_frame(bystander, "sb_helpers", "spin", [2000], {})
        )
        if round_ % 2:
            spin_until = time.perf_counter() + rng.uniform(0, 1e-3)
            while time.perf_counter() < spin_until:
                pass
        worker.cancel(target)
        first, second = worker.recv(), worker.recv()
        assert first[1] == target and second[1] == bystander
        if first[0] == OK:
            outcomes["ok"] += 1
            assert first[2] == sum(range(n))
        elif first[0] == PY_ERROR:
            outcomes["interrupted"] += 1
            assert_cancelled_error(first, target)
        else:
            outcomes["skipped"] += 1
            assert_cancelled_failure(first, target)
        assert second == [OK, bystander, sum(range(2000))], (round_, outcomes, second)
    print("cancel race outcomes:", outcomes)
    # No stray cancel is left behind for a longer call either.
    assert worker.ok("time", "sleep", [0.2]) is None


def test_a_cancel_that_lands_after_its_call_ended_is_dropped(worker: Worker) -> None:
    # Deterministic version of the race above. pbkdf2_hmac runs in C (GIL
    # released) and never looks at signals: the SIGUSR1 sent while it runs
    # reaches Python only after the call has returned, when the bystander
    # (Python code) or the idle loop runs, and must not raise there.
    started = time.monotonic()
    worker.ok("hashlib", "pbkdf2_hmac", ["sha256", b"pw", b"salt", 100_000])
    per_100k = time.monotonic() - started
    iterations = max(100_000, int(100_000 * 0.6 / max(per_100k, 1e-3)))  # about 0.6 s
    # One write, so that the main thread runs both from one batch, without
    # going through its idle loop in between.
    target, bystander = worker.next_id + 1, worker.next_id + 2
    worker.next_id = bystander
    worker.send_raw(
        call_frame(target, "hashlib", "pbkdf2_hmac", ["sha256", b"pw", b"salt", iterations], {})
        + call_frame(bystander, "sb_helpers", "spin", [100_000], {})
    )
    time.sleep(0.15)
    worker.cancel(target)
    first = worker.recv()
    assert first[:2] == [OK, target] and len(first[2]) == 32, first
    assert worker.recv() == [OK, bystander, sum(range(100_000))]

    # The same with nothing queued behind: the idle loop runs the handler.
    target = worker.start("hashlib", "pbkdf2_hmac", ["sha256", b"pw", b"salt", iterations])
    time.sleep(0.15)
    worker.cancel(target)
    assert worker.recv()[:2] == [OK, target]
    time.sleep(0.05)
    assert worker.ok("sb_helpers", "spin", [100_000]) == sum(range(100_000))


def test_sigusr1_while_idle_is_harmless(worker: Worker) -> None:
    assert worker.ok("operator", "add", [1, 1]) == 2
    os.kill(worker.proc.pid, signal.SIGUSR1)
    time.sleep(0.1)
    assert worker.ok("sb_helpers", "spin", [1000]) == sum(range(1000))
    assert worker.proc.poll() is None


# ---- deadlines ------------------------------------------------------------------


def test_call_past_its_deadline_is_not_run(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "record", [str(marks), "late"], deadline=monotonic_micros() - 1000)
    assert worker.recv() == [FAILURE, call_id, "timeout", "the caller stopped waiting before the call started"]
    assert lines(marks) == []
    assert worker.ok("operator", "add", [1, 2]) == 3


def test_deadline_that_passes_in_the_queue(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    first = worker.start("sb_helpers", "sleep_marked", [str(marks), "first", 0.3])
    late = worker.start("sb_helpers", "record", [str(marks), "late"], deadline=monotonic_micros() + 100_000)
    assert worker.recv() == [OK, first, "first"]
    assert worker.recv()[:3] == [FAILURE, late, "timeout"]
    assert lines(marks) == ["first"]


def test_future_deadline_and_no_deadline_run(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    soon = worker.start("sb_helpers", "record", [str(marks), "future"], deadline=monotonic_micros() + 10_000_000)
    assert worker.recv() == [OK, soon, "future"]
    none = worker.start("sb_helpers", "record", [str(marks), "none"], deadline=0)
    assert worker.recv() == [OK, none, "none"]
    assert lines(marks) == ["future", "none"]


def test_a_running_call_is_not_interrupted_by_its_deadline(worker: Worker, tmp_path: Path) -> None:
    # The host sends a cancel for that; the worker only checks before starting.
    marks = tmp_path / "marks"
    call_id = worker.start("sb_helpers", "sleep_marked", [str(marks), "slow", 0.3], deadline=monotonic_micros() + 50_000)
    assert worker.recv() == [OK, call_id, "slow"]


# ---- end of stream ----------------------------------------------------------------


def test_eof_with_calls_queued_finishes_them_then_exits_zero(worker: Worker, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    ids = [
        worker.start("sb_helpers", "sleep_marked", [str(marks), "a", 0.2]),
        worker.start("sb_helpers", "record", [str(marks), "b"]),
        worker.start("sb_helpers", "record", [str(marks), "c"]),
    ]
    worker.sock.shutdown(socket.SHUT_WR)
    assert [worker.recv()[:2] for _ in ids] == [[OK, i] for i in ids]
    assert worker.wait() == 0
    assert lines(marks) == ["a", "b", "c"]
