"""A module reached through a dotted path: sbpkg.sub.mod."""

from __future__ import annotations


def where() -> str:
    return __name__


class Greeter:
    @staticmethod
    def greet(name: str) -> str:
        return f"hello {name}"
