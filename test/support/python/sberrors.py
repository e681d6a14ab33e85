"""Exceptions for the ExUnit error suite."""

from __future__ import annotations

from typing import Any


class NeedMore(Exception):
    """An exception with attributes of its own."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"need {needed} more")
        self.needed = needed
        self.detail = {"unit": "bytes", "sizes": [1, 2]}
        self.where = object()
        self._hidden = "no"


def need_more(n: int) -> None:
    raise NeedMore(n)


def deep(depth: int) -> Any:
    """Raises ValueError ``depth`` frames down (two functions in turn, so
    that Python does not fold the repeated frames)."""
    if depth <= 1:
        raise ValueError("bottom")
    return down(depth - 1)


def down(depth: int) -> Any:
    if depth <= 1:
        raise ValueError("bottom")
    return deep(depth - 1)


def chained() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise RuntimeError("while looking up") from exc
