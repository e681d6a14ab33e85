"""The worker loop over a real socketpair: handshake, replies, pipelining, exit status."""

from __future__ import annotations

import os
import platform
import signal
import struct
import time

from conftest import CALL, CANCEL, FAILURE, OK, PING, PONG, Worker, call_frame, frame, frame_body
from snakebridge_worker import _native


def test_hello_comes_first(worker: Worker) -> None:
    assert worker.hello == [0, 0, _native.PROTOCOL_VERSION, worker.proc.pid, platform.python_version()]


def test_ok_reply(worker: Worker) -> None:
    assert worker.call("operator", "add", [1, 2]) == [OK, worker.next_id, 3]


def test_whole_message_dumps_matches_the_field_by_field_frame() -> None:
    assert frame([CALL, 7, 0, "operator", "add", [1, 2], {}, 0, 0]) == call_frame(7, "operator", "add", [1, 2], {})


def test_kwargs_reach_the_function(worker: Worker) -> None:
    assert worker.ok("builtins", "sorted", [[3, 1, 2]], {"reverse": True}) == [3, 2, 1]


def test_dotted_module_and_function_paths(worker: Worker) -> None:
    assert worker.ok("os.path", "join", ["a", "b"]) == os.path.join("a", "b")
    assert worker.ok("builtins", "str.upper", ["abc"]) == "ABC"
    assert worker.ok("collections", "OrderedDict.fromkeys", [["a", "b"]]) == {"a": None, "b": None}
    assert worker.ok("json", "decoder.scanstring", ['"abc" tail', 1]) == ("abc", 5)


def test_dotted_function_path_reaches_unbound_methods(worker: Worker) -> None:
    # json.JSONDecoder.decode resolves; called without an instance it is the
    # call, not the lookup, that fails.
    reply = worker.call("json", "JSONDecoder.decode", [])
    assert reply[0] == 3 and reply[2] == "TypeError", reply
    assert "required positional arguments" in reply[4]


def test_builtins_module(worker: Worker) -> None:
    assert worker.ok("builtins", "len", [[1, 2, 3]]) == 3


def test_ping_pong(worker: Worker) -> None:
    worker.send([PING, 77])
    assert worker.recv() == [PONG, 77]


def test_cancel_of_an_unknown_id_is_ignored(worker: Worker) -> None:
    worker.send([CANCEL, 5])
    worker.send([PING, 6])
    assert worker.recv() == [PONG, 6]
    assert worker.ok("operator", "mul", [6, 7]) == 42


def test_pipelining_keeps_order_and_ids(worker: Worker) -> None:
    count = 1000
    batch = b"".join(frame([CALL, 10_000 + i, 0, "operator", "add", [i, i], {}, 0, 0]) for i in range(count))
    worker.send_raw(batch)
    replies = [worker.recv() for _ in range(count)]
    assert replies == [[OK, 10_000 + i, 2 * i] for i in range(count)]


CALL_BURST = 16


def test_calls_of_a_burst_answer_like_any_other(worker: Worker) -> None:
    # CALL_BURST only shortens the worker's poll for the next input.
    for i in range(50):
        assert worker.call("operator", "add", [i, 1], flags=CALL_BURST) == [OK, worker.next_id, i + 1]
        time.sleep(0.0002)
    assert worker.call("operator", "add", [1, 2]) == [OK, worker.next_id, 3]


def test_pipelined_mixed_messages(worker: Worker) -> None:
    batch = b"".join(
        [
            frame([CALL, 1, 0, "operator", "neg", [1], {}, 0, 0]),
            frame([PING, 2]),
            frame([CALL, 3, 0, "operator", "truediv", [1, 0], {}, 0, 0]),
            frame([CANCEL, 3]),
            frame([CALL, 4, 0, "sb_helpers", "today", [], {}, 0, 0]),
            frame([CALL, 5, 0, "operator", "pos", [5], {}, 0, 0]),
        ]
    )
    worker.send_raw(batch)
    replies = [worker.recv() for _ in range(5)]
    # Call 3 is cancelled before it starts: a Failure in its place.
    assert [r[:2] for r in replies] == [[OK, 1], [PONG, 2], [FAILURE, 3], [OK, 4], [OK, 5]]
    assert replies[2][2] == "cancelled" and replies[3][2].type_name == "sb_helpers.Day"


def test_frames_split_across_writes(worker: Worker) -> None:
    data = frame([CALL, 9, 0, "operator", "add", ["ab", "cd"], {}, 0, 0])
    for byte in data:
        worker.send_raw(bytes([byte]))
    assert worker.recv() == [OK, 9, "abcd"]


def test_eof_exits_zero(worker: Worker) -> None:
    worker.ok("operator", "add", [1, 1])
    assert worker.close() == 0
    assert worker.stderr == []


def test_eof_right_after_hello_exits_zero(worker: Worker) -> None:
    assert worker.close() == 0


def test_garbage_frame_exits_two(worker: Worker) -> None:
    worker.send_raw(frame_body(b"abc"))
    assert worker.wait() == 2
    assert "malformed frame" in "".join(worker.stderr)


def test_unknown_kind_exits_two(worker: Worker) -> None:
    worker.send([99, 1])
    assert worker.wait() == 2
    assert "unknown message kind 99" in "".join(worker.stderr)


def test_host_only_message_from_host_exits_two(worker: Worker) -> None:
    worker.send([OK, 1, None])
    assert worker.wait() == 2
    assert "unexpected Ok message" in "".join(worker.stderr)


def test_oversized_length_header_exits_two(worker: Worker) -> None:
    worker.send_raw(struct.pack(">I", 0xFFFFFFFF))
    assert worker.wait() == 2
    assert "exceeds" in "".join(worker.stderr)


def test_corrupt_arguments_exit_two(worker: Worker) -> None:
    # A valid header, then an argument string that is not UTF-8.
    body = b"\x99" + _native.dumps(CALL) + _native.dumps(1) + _native.dumps(0) + _native.dumps("m") + _native.dumps("f") + b"\x91\xa2\xff\xfe\x80\x00\x00"
    worker.send_raw(frame_body(body))
    assert worker.wait() == 2


def test_replies_before_a_bad_frame_are_still_sent(worker: Worker) -> None:
    worker.send_raw(frame([CALL, 1, 0, "operator", "add", [1, 2], {}, 0, 0]) + frame_body(b"\xc1"))
    assert worker.recv() == [OK, 1, 3]
    assert worker.wait() == 2


def test_subprocesses_do_not_inherit_the_channel(worker: Worker) -> None:
    # A child that outlives the worker would otherwise keep the socket open
    # and the host would never see EOF.
    assert worker.ok("os", "get_inheritable", [worker.fd]) is False


def test_sigint_while_idle_does_not_hit_the_next_call(worker: Worker) -> None:
    assert worker.ok("operator", "add", [1, 1]) == 2
    os.kill(worker.proc.pid, signal.SIGINT)
    time.sleep(0.2)
    # Python code: a pending KeyboardInterrupt would fire on entry.
    assert worker.ok("sb_helpers", "identity", [3]) == 3
    assert worker.proc.poll() is None


def test_sigint_during_a_call_interrupts_it(worker: Worker) -> None:
    worker.send([CALL, 1, 0, "time", "sleep", [30], {}, 0, 0])
    time.sleep(0.3)
    os.kill(worker.proc.pid, signal.SIGINT)
    reply = worker.recv()
    assert reply[:4] == [3, 1, "KeyboardInterrupt", "builtins"]
    assert worker.ok("operator", "add", [1, 2]) == 3
