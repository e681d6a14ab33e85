"""``python -m snakebridge_worker --fd N [--shm CALLS,REPLIES] [--max-payload BYTES]``: serve calls on socket ``N``.

With ``--shm``, large call and reply bodies go through the two shared-memory
arenas (memfds) the host passes; ``--max-payload`` bounds the results sent.

Exits 0 when the host closes the socket, 2 when it sends a malformed frame,
3 when the per-worker init (``--import MODULE``, repeatable, then
``--init CODE``) raises; the init runs before the worker says hello.
The worker owns SIGUSR1: it is how a cancel from the host interrupts the
running call or stream step (with ``snakebridge_worker.CallCancelled``), or
wakes the asyncio event loop so that it sees the cancel of a task.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from snakebridge_worker import _native, init, output
from snakebridge_worker.dispatch import describe, locate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snakebridge_worker", description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the protocol socket's file descriptor")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE", help="a module to import before serving")
    parser.add_argument("--init", dest="init_code", metavar="CODE", help="Python code to run before serving")
    parser.add_argument(
        "--shm",
        metavar="CALLS,REPLIES",
        help="memfds of the shared memory for large calls and large replies",
    )
    parser.add_argument("--max-payload", type=int, help="the largest result to send, in bytes")
    args = parser.parse_args(argv)
    if args.max_payload is not None:
        _native.set_max_payload(args.max_payload)
    if args.shm:
        calls, replies = (int(fd) for fd in args.shm.split(","))
        _native.attach_shared(calls, replies)
    # Subprocesses started by user code must not inherit the channel, or the
    # host would not see EOF when this process dies.
    os.set_inheritable(args.fd, False)
    # To cancel a call, the host writes a Cancel frame, then sends SIGUSR1.
    # This handler (native, run by Python on the main thread) reads the
    # pending frames without blocking, records their cancels, and raises
    # CallCancelled only if the call running now is one of them (or wakes
    # the event loop, when tasks are pending: see snakebridge_worker.aio).
    signal.signal(signal.SIGUSR1, _native.cancel_signal)
    # Before output.install(): until hello, the socket carries no output
    # frames, so what the init prints goes to the pipes the host logs.
    if not init.run(args.fd, args.imports, args.init_code):
        return 3
    # print() and logging reach the host on the socket, with their call.
    output.install()
    try:
        _native.serve(args.fd, locate, describe)
    except _native.ProtocolError as exc:
        output.uninstall()
        print(f"snakebridge_worker: {exc}", file=sys.stderr, flush=True)
        return 2
    output.uninstall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
