"""resolve() and describe(), in-process."""

from __future__ import annotations

import os.path

import pytest

from snakebridge_worker.dispatch import (
    MAX_ATTRIBUTE_BYTES,
    MAX_ATTRIBUTE_REPR,
    attribute,
    describe,
    locate,
    module_attribute,
    public_attributes,
    resolve,
    set_attribute,
)


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
        exc_type, module, message, lines, attributes = describe(exc)
    assert (exc_type, module, message) == ("ZeroDivisionError", "builtins", "division by zero")
    assert lines[0].startswith("Traceback") and "1 / 0" in "".join(lines)
    assert attributes == {"args": ("division by zero",)}


def test_describe_nested_class_and_broken_str() -> None:
    class Outer:
        class Broken(Exception):
            def __str__(self) -> str:
                raise ValueError("nope")

    exc_type, module, message, lines, _ = describe(Outer.Broken())
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


def test_locate_says_what_the_callable_was_found_through() -> None:
    import datetime
    import os.path

    assert locate("os.path", "join") == (os.path.join, "os.path", os.path, "join")
    assert locate("datetime.date", "today") == (datetime.date.today, "datetime", datetime, "date")
    assert locate("json", "JSONDecoder.decode")[3] == "JSONDecoder"


def test_attribute_paths() -> None:
    import types

    ns = types.SimpleNamespace(inner=types.SimpleNamespace(value=1))
    assert attribute(ns, "inner.value") == 1
    set_attribute(ns, "inner.value", 2)
    assert ns.inner.value == 2
    import sys

    assert module_attribute("sys", "version_info.major") == sys.version_info.major
    assert module_attribute("os.path", "sep") == "/"
    with pytest.raises(AttributeError):
        attribute(ns, "inner.nope")
    with pytest.raises(ModuleNotFoundError):
        module_attribute("no_such_module_xyz", "x")


def test_public_attributes_by_value_or_repr() -> None:
    class Needs(Exception):
        def __init__(self, needed: int) -> None:
            super().__init__(f"need {needed}")
            self.needed = needed
            self.big = "x" * (MAX_ATTRIBUTE_BYTES + 1)
            self.thing = object()
            self._private = 1

    found = public_attributes(Needs(3))
    assert found["needed"] == 3 and found["args"] == ("need 3",)
    assert found["big"].startswith("'xxx") and len(found["big"]) == MAX_ATTRIBUTE_REPR
    assert found["thing"].startswith("<object object")
    assert "_private" not in found and "with_traceback" not in found


def test_public_attributes_skip_raising_properties() -> None:
    class Odd(Exception):
        @property
        def broken(self) -> int:
            raise RuntimeError("no")

    assert "broken" not in public_attributes(Odd())
