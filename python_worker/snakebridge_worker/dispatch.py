"""How a call finds its function, and how an exception is reported."""

from __future__ import annotations

import importlib
import traceback
from typing import Any, Callable


def resolve(module: str, function: str) -> Callable[..., Any]:
    """Returns the callable named ``function`` in ``module``.

    ``module`` may be dotted (``"os.path"``); so may ``function``, to reach
    attributes of attributes (``"JSONDecoder.decode"``). Raises what the import
    or the attribute lookup raises (``ModuleNotFoundError``, ``AttributeError``).
    """
    target: object = importlib.import_module(module)
    for name in function.split("."):
        target = getattr(target, name)
    if not callable(target):
        raise TypeError(f"{module}.{function} is not callable (it is a {type(target).__qualname__})")
    return target


def describe(exc: BaseException) -> tuple[str, str, str, list[str]]:
    """Returns ``(type, module, message, traceback_lines)`` for an exception.

    ``type`` is the class's ``__qualname__``, ``module`` its ``__module__``,
    ``message`` is ``str(exc)`` and the traceback is what
    ``traceback.format_exception`` prints. Never raises: a broken ``__str__``
    is reported instead of propagated.
    """
    cls = type(exc)
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - user code may raise anything
        message = f"<exception str() failed for {cls.__qualname__}>"
    try:
        lines = traceback.format_exception(cls, exc, exc.__traceback__)
    except BaseException:  # noqa: BLE001
        lines = []
    return cls.__qualname__, str(cls.__module__), message, lines
