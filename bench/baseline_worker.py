"""Baseline Python worker for the SnakeBridge benchmark.

This is the hand-rolled design users write today, done competently: an Erlang
port with {:packet, 4} framing on stdin/stdout and the PyPI ``msgpack`` codec.

* reads stdin in large chunks into its own preallocated buffer;
* handles every complete frame in the buffer;
* writes all the replies produced by that batch with a single write;
* caches imported callables.

Request:  msgpack [module, function, args]
Reply:    msgpack [0, value] or [1, "ExceptionType: message"]

Usage: python baseline_worker.py [extra sys.path entries...]
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

import msgpack

READ_CHUNK = 256 * 1024


def resolve(cache: dict[tuple[str, str], Callable[..., Any]], module: str, function: str) -> Callable[..., Any]:
    key = (module, function)
    fn = cache.get(key)
    if fn is None:
        obj: Any = importlib.import_module(module)
        for part in function.split("."):
            obj = getattr(obj, part)
        fn = obj
        cache[key] = fn
    return fn


def handle(frame: memoryview, cache: dict, packer: msgpack.Packer) -> bytes:
    try:
        module, function, args = msgpack.unpackb(frame, raw=False)
        result = resolve(cache, module, function)(*args)
        return packer.pack([0, result])
    except Exception as exc:  # every user error is a reply, never a dead worker
        return packer.pack([1, f"{type(exc).__name__}: {exc}"])


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def serve(in_fd: int, out_fd: int) -> None:
    cache: dict[tuple[str, str], Callable[..., Any]] = {}
    packer = msgpack.Packer(use_bin_type=True)
    buf = bytearray(READ_CHUNK)
    start = end = 0  # unconsumed bytes are buf[start:end]

    while True:
        # Keep at least READ_CHUNK/4 bytes free after `end`: move a partial frame
        # to the front, and double the buffer when a big frame needs more room.
        if start == end:
            start = end = 0
        elif len(buf) - end < READ_CHUNK // 4 and start > 0:
            buf[: end - start] = buf[start:end]
            start, end = 0, end - start
        if len(buf) - end < READ_CHUNK // 4:
            buf.extend(bytes(len(buf)))

        with memoryview(buf) as mv:
            n = os.readv(in_fd, [mv[end:]])
        if n == 0:
            return  # EOF: the port was closed
        end += n

        replies: list[bytes] = []
        with memoryview(buf) as mv:
            while end - start >= 4:
                length = int.from_bytes(mv[start : start + 4], "big")
                if end - start - 4 < length:
                    break
                frame = mv[start + 4 : start + 4 + length]
                start += 4 + length
                reply = handle(frame, cache, packer)
                frame.release()
                replies.append(len(reply).to_bytes(4, "big"))
                replies.append(reply)
        if replies:
            write_all(out_fd, b"".join(replies))


def main() -> None:
    sys.path[0:0] = sys.argv[1:]
    # Keep the protocol channel private: user print() goes to stderr, never into a frame.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        serve(0, out_fd)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
