"""Helpers for the affinity, output and restart suites."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterator


class Model:
    """Stands in for a model loaded once and used by many requests."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def predict(self, features: "Features") -> float:
        return self.weight * features.total()


class Features:
    """Stands in for a per-request array."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def total(self) -> float:
        return sum(self.values)


def pid(*_objects: Any) -> int:
    return os.getpid()


def busy(seconds: float, *_objects: Any) -> int:
    """Keeps the worker of the objects passed busy for a while."""
    time.sleep(seconds)
    return os.getpid()


def print_lines(n: int, stream: str = "stdout") -> int:
    out = sys.stderr if stream == "stderr" else sys.stdout
    for i in range(n):
        print(f"line {i}", file=out)
    return n


def print_both(tag: str) -> str:
    print(f"out 1 {tag}")
    print(f"err 2 {tag}", file=sys.stderr)
    print(f"out 3 {tag}")
    return tag


def print_then_sleep(tag: str, seconds: float) -> None:
    print(f"before sleep {tag}", flush=True)
    time.sleep(seconds)
    print(f"after sleep {tag}")


def write_partial(text: str) -> None:
    sys.stdout.write(text)


def counting(n: int) -> Iterator[int]:
    for i in range(n):
        print(f"making {i}")
        yield i


def pid_stream() -> Iterator[int]:
    yield os.getpid()
