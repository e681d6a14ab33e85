"""Fails while it is imported."""

BROKEN = 1 / 0


def f() -> None:
    pass
