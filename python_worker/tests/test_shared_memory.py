"""The worker's side of the shared-memory transport, with this test as the host.

An arena is a memfd: a bitmap of its 4 KiB blocks (whole blocks of it),
then the blocks. The sender sets the bits of the blocks it fills and sends
``[13, 0, offset, length]`` in place of the frame body; the receiver clears
them when it is done. A fresh, zeroed memfd is an empty arena.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import pytest

from conftest import FAILURE, OK, Worker, call_frame, frame, loads

BLOCK = 4096
SHARED = 13
SHARED_MIN = 32 * 1024


class Arena:
    """One direction's shared memory, as the host maps it."""

    def __init__(self, name: str, capacity: int) -> None:
        self.blocks = capacity // BLOCK
        self.data = ((self.blocks + 7) // 8 + BLOCK - 1) // BLOCK * BLOCK
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.data + self.blocks * BLOCK)
        self.map = mmap.mmap(self.fd, self.data + self.blocks * BLOCK)

    def bits(self) -> int:
        return int.from_bytes(self.map[: self.data], "little")

    def set_bits(self, first: int, count: int, used: bool) -> None:
        value = self.bits()
        mask = ((1 << count) - 1) << first
        value = value | mask if used else value & ~mask
        self.map[: self.data] = value.to_bytes(self.data, "little")

    def place(self, body: bytes, offset: int = 0) -> bytes:
        """Copies ``body`` in at ``offset`` and returns the descriptor frame."""
        self.map[self.data + offset : self.data + offset + len(body)] = body
        self.set_bits(offset // BLOCK, -(-len(body) // BLOCK), True)
        return frame([SHARED, 0, offset, len(body)])

    def read(self, offset: int, length: int) -> bytes:
        return self.map[self.data + offset : self.data + offset + length]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@pytest.fixture
def shared() -> Any:
    calls, replies = Arena("calls", 1 << 20), Arena("replies", 1 << 20)
    worker = Worker(("--shm", f"{calls.fd},{replies.fd}"), (calls.fd, replies.fd))
    try:
        yield worker, calls, replies
    finally:
        worker.kill()
        calls.close()
        replies.close()


def reply_of(worker: Worker, replies: Arena) -> tuple[list[Any], bool]:
    """The next reply, read from shared memory if it was sent there (then
    freed, as the host does), and whether it was."""
    message = worker.recv()
    if message[0] != SHARED:
        return message, False
    _, _, offset, length = message
    assert replies.bits() >> (offset // BLOCK) & 1, "the worker marks what it fills"
    body = replies.read(offset, length)
    replies.set_bits(offset // BLOCK, -(-length // BLOCK), False)
    return loads(body), True


def test_a_large_call_and_its_large_reply_cross_shared_memory(shared: Any) -> None:
    worker, calls, replies = shared
    data = bytes(range(256)) * 1024
    body = call_frame(1, "sb_helpers", "identity", [data], {})[4:]
    worker.send_raw(calls.place(body))
    reply, through_memory = reply_of(worker, replies)
    assert through_memory
    assert reply == [OK, 1, data]
    assert calls.bits() == 0, "the worker frees the call's blocks once it has read them"
    assert replies.bits() == 0


def test_small_replies_stay_on_the_socket(shared: Any) -> None:
    worker, _, replies = shared
    worker.send_raw(call_frame(2, "operator", "add", [1, 2], {}))
    assert reply_of(worker, replies) == ([OK, 2, 3], False)
    worker.send_raw(call_frame(3, "sb_helpers", "blob", [SHARED_MIN - 100], {}))
    reply, through_memory = reply_of(worker, replies)
    assert not through_memory and len(reply[2]) == SHARED_MIN - 100


def test_a_reply_finds_a_free_run_past_blocks_the_host_still_holds(shared: Any) -> None:
    worker, _, replies = shared
    replies.set_bits(0, 3, True)
    worker.send_raw(call_frame(4, "sb_helpers", "blob", [40_000], {}))
    message = worker.recv()
    assert message[0] == SHARED and message[2] == 3 * BLOCK
    assert loads(replies.read(message[2], message[3])) == [OK, 4, b"x" * 40_000]


def test_a_reply_goes_over_the_socket_when_shared_memory_is_full(shared: Any) -> None:
    worker, _, replies = shared
    replies.set_bits(0, replies.blocks, True)
    worker.send_raw(call_frame(5, "sb_helpers", "blob", [100_000], {}))
    assert reply_of(worker, replies) == ([OK, 5, b"x" * 100_000], False)


def test_the_worker_maps_its_arenas_and_keeps_no_descriptor_of_them(shared: Any) -> None:
    worker, _, _ = shared
    pid = worker.proc.pid
    links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert not [link for link in links if "memfd:" in link], links
    with open(f"/proc/{pid}/maps") as maps:
        mapped = maps.read()
    assert "memfd:calls" in mapped and "memfd:replies" in mapped


def test_a_descriptor_outside_the_arena_is_a_protocol_error(shared: Any) -> None:
    worker, calls, _ = shared
    worker.send_raw(frame([SHARED, 0, calls.blocks * BLOCK, 10]))
    assert worker.wait() == 2
    assert "outside" in "".join(worker.stderr)


def test_max_payload_bounds_results() -> None:
    worker = Worker(("--max-payload", str(1 << 20)))
    try:
        reply = worker.call("sb_helpers", "blob", [(1 << 20) + 1])
        assert reply[0] == FAILURE and reply[2] == "payload_too_large", reply[:3]
        assert str(1 << 20) in reply[3]
        assert len(worker.ok("sb_helpers", "blob", [(1 << 20) - 100])) == (1 << 20) - 100
    finally:
        worker.kill()


def test_without_shared_memory_a_descriptor_is_a_protocol_error(worker: Worker) -> None:
    worker.send_raw(frame([SHARED, 0, 0, 10]))
    assert worker.wait() == 2
    assert "no shared memory" in "".join(worker.stderr)


def test_a_result_over_the_socket_limit_with_no_room_fails_as_too_large() -> None:
    calls, replies = Arena("calls", 1 << 20), Arena("replies", 1 << 20)
    worker = Worker(
        ("--shm", f"{calls.fd},{replies.fd}", "--max-payload", str(100 << 20)),
        (calls.fd, replies.fd),
    )
    try:
        reply = worker.call("sb_helpers", "blob", [65 << 20])
        assert reply[0] == FAILURE and reply[2] == "payload_too_large", reply[:3]
        assert "no room" in reply[3]
        assert worker.ok("operator", "add", [1, 2]) == 3
    finally:
        worker.kill()
        calls.close()
        replies.close()
