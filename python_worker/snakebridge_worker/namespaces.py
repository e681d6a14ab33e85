"""Namespaces: module objects that keep ``eval`` state from one call to the next.

A namespace is a real module (``types.ModuleType``) named
``snakebridge_ns_<n>``, unique within the worker, and findable in
``sys.modules`` under that name while it lives, so that what needs a class's
module finds it: ``dataclasses``, ``pickle``, ``typing.get_type_hints``.

``sys.modules`` holds only a weak proxy of it: the module lives as long as
the host holds its handle (or something else holds the module), and its
entry in ``sys.modules`` goes with it. Functions and classes defined in it
keep its ``__dict__`` (their globals), not the module object.
"""

from __future__ import annotations

import builtins
import itertools
import sys
import types
import weakref

PREFIX = "snakebridge_ns_"

_numbers = itertools.count(1)


def new() -> types.ModuleType:
    """Returns a new, empty namespace, registered in ``sys.modules``."""
    name = f"{PREFIX}{next(_numbers)}"
    module = types.ModuleType(name)
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules[name] = weakref.proxy(module)  # type: ignore[assignment]
    weakref.finalize(module, _forget, name)
    return module


def _forget(name: str) -> None:
    # Only the dead proxy: user code may have put something else there.
    if type(sys.modules.get(name)) is weakref.ProxyType:
        del sys.modules[name]
