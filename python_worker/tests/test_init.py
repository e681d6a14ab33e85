"""The per-worker init (``--import``, ``--init``): it runs before hello, and
a failing one sends its traceback instead of hello and exits 3."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

import pytest

from conftest import FAILURE, PRIV_PYTHON, TESTS_DIR, TIMEOUT, loads
from snakebridge_worker import init


def start(*args: str) -> tuple[subprocess.Popen, socket.socket]:
    parent, child = socket.socketpair()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PRIV_PYTHON), str(TESTS_DIR)]), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakebridge_worker", "--fd", str(child.fileno()), *args],
        pass_fds=[child.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    child.close()
    parent.settimeout(TIMEOUT)
    return proc, parent


def first_message(sock: socket.socket) -> list:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        chunk = sock.recv(1 << 16)
        assert chunk, "the worker closed the socket before its first frame"
        data += chunk
    (length,) = struct.unpack(">I", data[:4])
    return loads(data[4 : 4 + length])


def test_imports_and_code_run_before_hello_and_print_to_the_pipe() -> None:
    proc, sock = start("--import=json", "--import=sb_helpers", "--init=import sys\nprint('init ran', sorted(m for m in ('json', 'sb_helpers') if m in sys.modules))")
    try:
        hello = first_message(sock)
        assert hello[0] == 0
    finally:
        sock.close()
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    assert out.decode().splitlines() == ["init ran ['json', 'sb_helpers']"]


def test_a_failing_init_sends_its_traceback_instead_of_hello_and_exits_3() -> None:
    proc, sock = start("--import=json", "--init=x = 1\nraise KeyError('missing setting')")
    try:
        message = first_message(sock)
    finally:
        sock.close()
    proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 3
    assert message[:3] == [FAILURE, 0, init.INIT_FAILED]
    assert message[3].startswith("Traceback (most recent call last):\n")
    assert 'File "<snakebridge init>", line 2, in <module>' in message[3]
    assert message[3].rstrip().endswith("KeyError: 'missing setting'")


def test_a_failing_import_names_the_module() -> None:
    proc, sock = start("--import=sb_no_such_module")
    try:
        message = first_message(sock)
    finally:
        sock.close()
    proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 3
    assert message[3].rstrip().endswith("ModuleNotFoundError: No module named 'sb_no_such_module'")


@pytest.mark.parametrize("filler", ["x", "é", "\U0001F40D"])
def test_a_long_traceback_keeps_its_end_within_the_hello_limit(filler: str) -> None:
    read, write = os.pipe()
    try:
        init.report(write, filler * 200_000 + "\nValueError: the end")
        os.close(write)
        data = b""
        while chunk := os.read(read, 1 << 16):
            data += chunk
    finally:
        os.close(read)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4 < 64 * 1024
    message = loads(data[4:])
    assert message[3].startswith("...\n")
    assert message[3].endswith("\nValueError: the end")
