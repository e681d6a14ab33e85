"""A module whose import takes 2 s, as a heavy library's can. Each import
appends the worker's pid to the file named by SBSLOWIMPORT_LOG, so a test
can count how often it ran."""

from __future__ import annotations

import os
import time

time.sleep(2.0)

_log = os.environ.get("SBSLOWIMPORT_LOG")
if _log:
    with open(_log, "a") as f:
        f.write(f"{os.getpid()}\n")


def pid() -> int:
    return os.getpid()
