"""resolve() and describe(), in-process."""

from __future__ import annotations

import os.path

import pytest

from snakebridge_worker.dispatch import describe, resolve


def test_resolve_plain_and_dotted() -> None:
    assert resolve("os.path", "join") is os.path.join
    assert resolve("builtins", "len") is len
    assert resolve("json", "JSONDecoder.decode").__qualname__ == "JSONDecoder.decode"


def test_resolve_errors() -> None:
    with pytest.raises(ModuleNotFoundError):
        resolve("no_such_module_xyz", "f")
    with pytest.raises(AttributeError):
        resolve("math", "nope")
    with pytest.raises(TypeError, match="not callable"):
        resolve("math", "pi")


def test_describe() -> None:
    try:
        1 / 0
    except ZeroDivisionError as exc:
        exc_type, module, message, lines = describe(exc)
    assert (exc_type, module, message) == ("ZeroDivisionError", "builtins", "division by zero")
    assert lines[0].startswith("Traceback") and "1 / 0" in "".join(lines)


def test_describe_nested_class_and_broken_str() -> None:
    class Outer:
        class Broken(Exception):
            def __str__(self) -> str:
                raise ValueError("nope")

    exc_type, module, message, lines = describe(Outer.Broken())
    assert exc_type.endswith("Outer.Broken")
    assert module == __name__
    assert "str() failed" in message
    assert isinstance(lines, list)


def test_resolve_attribute_path_in_module_name() -> None:
    import datetime
    import json

    assert resolve("datetime.date", "today") == datetime.date.today
    assert resolve("json.JSONDecoder", "decode") is json.JSONDecoder.decode


def test_resolve_reports_the_missing_module_for_unknown_dotted_names() -> None:
    with pytest.raises(ModuleNotFoundError) as info:
        resolve("no_such_pkg_xyz.sub", "f")
    assert info.value.name == "no_such_pkg_xyz.sub" or info.value.name == "no_such_pkg_xyz"
