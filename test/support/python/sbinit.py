"""Set up by a pool's per-worker init in the ExUnit suite: each worker
records which process ran its init, so a test can tell that every worker
(restarted and recycled ones included) ran it."""

from __future__ import annotations

import os

marked_by: int | None = None
label: str | None = None


def mark(text: str) -> None:
    global marked_by, label
    marked_by = os.getpid()
    label = text


def check() -> list:
    """[pid that ran the init, this worker's pid, the init's label]."""
    return [marked_by, os.getpid(), label]
