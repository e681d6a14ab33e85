"""Functions the benchmark calls on both systems (SnakeBridge and the baseline)."""
from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def identity(x: T) -> T:
    """Return the argument unchanged: the round trip measures pure transport cost."""
    return x


def add(a: int, b: int) -> int:
    return a + b
