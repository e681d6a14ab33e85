"""How a call whose target is a module finds its function, and how an exception is reported.

A call whose target is a handle needs no resolving: the native loop looks the
object up in its table and follows the attribute path itself.
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any, Callable


def resolve(module: str, function: str | None) -> Callable[..., Any]:
    """Returns the callable named ``function`` in ``module``.

    ``module`` may be dotted (``"os.path"``); so may ``function``, to reach
    attributes of attributes (``"JSONDecoder.decode"``). ``module`` may also
    end in attributes of a module (``"datetime.date"`` with ``"today"``): the
    longest importable prefix is imported and the rest looked up on it.
    ``function`` ``None`` means what ``module`` names itself (``"datetime.date"``
    alone is the class). Raises what the import or the attribute lookup raises
    (``ModuleNotFoundError``, ``AttributeError``).
    """
    target, attributes = _import_prefix(module)
    names = attributes + (function.split(".") if function is not None else [])
    for name in names:
        target = getattr(target, name)
    if not callable(target):
        path = module if function is None else f"{module}.{function}"
        raise TypeError(f"{path} is not callable (it is a {type(target).__qualname__})")
    return target


def _import_prefix(module: str) -> tuple[object, list[str]]:
    """Imports ``module``, or its longest importable dotted prefix, and returns
    it with the remaining names. The error of the full name is raised when no
    prefix is a module."""
    try:
        return importlib.import_module(module), []
    except ModuleNotFoundError as full_error:
        # A module that exists but fails its own imports is not a naming
        # problem: report the real error.
        if not _names_part_of(full_error.name, module):
            raise
        parts = module.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                return importlib.import_module(".".join(parts[:cut])), parts[cut:]
            except ModuleNotFoundError as error:
                if not _names_part_of(error.name, module):
                    raise
        raise


def _names_part_of(name: str | None, module: str) -> bool:
    """Whether ``name`` is ``module`` or one of its dotted prefixes."""
    return name is not None and (module == name or module.startswith(f"{name}."))


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
