"""print(), sys.stderr and logging reach the host as output messages, tagged with their call."""

from __future__ import annotations

from conftest import OK, OUTPUT, Worker, loads

STDOUT, STDERR, LOGGING = 0, 1, 2


def lines(worker: Worker) -> list[tuple[int, int, int, str, str | None, str | None]]:
    return [tuple(message[1:]) for message in worker.output]  # type: ignore[misc]


def test_lines_carry_their_call_and_come_before_its_reply(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "chatty", [2])
    # recv() files output away as it goes: all of it arrived before the reply.
    assert worker.recv() == [OK, call_id, "done"]
    assert lines(worker) == [
        (call_id, STDOUT, 20, "stdout line 0", "sb_helpers", "chatty"),
        (call_id, STDOUT, 20, "stdout line 1", "sb_helpers", "chatty"),
        (call_id, STDERR, 30, "to stderr", "sb_helpers", "chatty"),
        (call_id, STDERR, 30, "written to stderr", "sb_helpers", "chatty"),
    ]
    assert worker.output[0][0] == OUTPUT
    assert worker.close() == 0
    assert worker.stdout == [] and worker.stderr == []


def test_text_without_newline_is_sent_when_the_call_ends(worker: Worker) -> None:
    first = worker.start("sb_helpers", "write", ["no newline"])
    assert worker.recv()[:2] == [OK, first]
    second = worker.start("sb_helpers", "write", ["one\ntwo\r\nand a half"])
    assert worker.recv()[:2] == [OK, second]
    assert [(line[0], line[3]) for line in lines(worker)] == [
        (first, "no newline"),
        (second, "one"),
        (second, "two"),
        (second, "and a half"),
    ]


def test_logging_records_keep_their_level(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "log_levels")
    assert worker.recv() == [OK, call_id, None]
    got = lines(worker)
    assert {line[:2] for line in got} == {(call_id, LOGGING)}
    assert [(line[2], line[3]) for line in got[:6]] == [
        (10, "debug record"),
        (20, "info record"),
        (25, "between info and warning"),
        (30, "warning record"),
        (40, "error record"),
        (50, "critical record"),
    ]
    level, text = got[6][2], got[6][3]
    assert level == 40
    assert text.startswith("it failed\nTraceback (most recent call last):")
    assert text.endswith("ValueError: logged exception")


def test_writes_to_the_file_descriptor_still_go_to_the_pipe(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "write_fd", ["raw line\n"]) is None
    assert worker.close() == 0
    assert worker.stdout == ["raw line\n"]
    assert worker.output == []


def test_lines_of_other_threads_belong_to_no_call(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "print_in_thread", ["from a thread"]) is None
    assert worker.ok("operator", "add", [1, 1]) == 2
    assert lines(worker) == [(0, STDOUT, 20, "from a thread", None, None)]


def test_a_task_writes_as_its_own_call(worker: Worker) -> None:
    task = worker.start("sb_helpers", "print_in_task", ["from a task"])
    # A sync call runs while the task waits; the task's line is still its own.
    assert worker.ok("operator", "add", [1, 2]) == 3
    assert worker.recv() == [OK, task, "from a task"]
    assert lines(worker) == [(task, STDOUT, 20, "from a task", "sb_helpers", "print_in_task")]


def test_a_lot_of_output_does_not_disturb_replies(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "chatty", [20_000]) == "done"
    assert worker.ok("operator", "add", [1, 2]) == 3
    assert len(worker.output) == 20_002
    assert worker.output[-3][4] == "stdout line 19999"


def test_flush_sends_the_lines_so_far_while_the_call_runs(worker: Worker) -> None:
    call_id = worker.start("sb_helpers", "flushed_then_sleep", [0.5])
    # The line comes long before the reply: read it while the call sleeps.
    worker.sock.settimeout(0.3)
    message = loads(worker.recv_body())
    worker.sock.settimeout(None)
    assert message[:5] == [OUTPUT, call_id, STDOUT, 20, "flushed"]
    assert worker.recv() == [OK, call_id, "slept"]
