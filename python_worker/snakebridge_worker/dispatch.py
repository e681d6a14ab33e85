"""How a call whose target is a module finds its function, and how an exception is reported.

A call whose target is a handle needs no resolving: the native loop looks the
object up in its table and follows the attribute path itself.

The native loop caches what ``locate`` finds, and checks before each call
that ``sys.modules`` still holds the same module and that the module still
binds the same object to the path's first name: ``importlib.reload``, a
module imported again, or a monkeypatched function are seen by the next
call.
"""

from __future__ import annotations

import importlib
import inspect
import os
import traceback
import types
from typing import Any, Callable, Optional, Tuple

from snakebridge_worker import _native

#: What ``locate`` returns: the callable, the name of the module imported
#: (its key in ``sys.modules``), that module, and the first name looked up
#: on it (``None`` when there is none).
Located = Tuple[Callable[..., Any], str, object, Optional[str]]

# Exception attributes sent with an error reply: at most this many, and a
# value whose encoding is larger than MAX_ATTRIBUTE_BYTES (or that has no
# by-value form) is sent as its repr, cut at MAX_ATTRIBUTE_REPR characters.
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_BYTES = 64 * 1024
MAX_ATTRIBUTE_REPR = 1000

_WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_IMPORTLIB = os.path.abspath(importlib.__file__)
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(inspect.getfile(__import__("asyncio")))) + os.sep


def locate(module: str, function: str | None) -> Located:
    """Like ``resolve``, and says what the callable was found through, for
    the native loop's cache to check (see the module's docs)."""
    target, attributes = _import_prefix(module)
    names = attributes + (function.split(".") if function is not None else [])
    imported = ".".join(module.split(".")[: len(module.split(".")) - len(attributes)])
    found = target
    for name in names:
        found = getattr(found, name)
    if not callable(found):
        path = module if function is None else f"{module}.{function}"
        raise TypeError(f"{path} is not callable (it is a {type(found).__qualname__})")
    return found, imported, target, names[0] if names else None


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
    return locate(module, function)[0]


def module_attribute(module: str, path: str) -> Any:
    """The attribute at the dotted ``path`` of ``module`` (which may itself
    end in attributes, as in ``resolve``): ``sys.version``, ``numpy.__version__``."""
    target, attributes = _import_prefix(module)
    return attribute(target, ".".join(attributes + [path]))


def attribute(target: Any, path: str) -> Any:
    """The attribute at the dotted ``path`` of ``target``: ``dtype.name``."""
    for name in path.split("."):
        target = getattr(target, name)
    return target


def set_attribute(target: Any, path: str, value: Any) -> None:
    """Sets the attribute at the dotted ``path`` of ``target``."""
    *parents, last = path.split(".")
    for name in parents:
        target = getattr(target, name)
    setattr(target, last, value)


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


def describe(exc: BaseException) -> tuple[str, str, str, list[str], dict[str, Any]]:
    """Returns ``(type, module, message, traceback_lines, attributes)`` for an exception.

    ``type`` is the class's ``__qualname__``, ``module`` its ``__module__``,
    ``message`` is ``str(exc)`` and the traceback is what
    ``traceback.format_exception`` prints, without the worker's own frames
    (see ``trim``). ``attributes`` are the exception's public attributes
    (see ``public_attributes``). Never raises: a broken ``__str__`` is
    reported instead of propagated.
    """
    cls = type(exc)
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - user code may raise anything
        message = f"<exception str() failed for {cls.__qualname__}>"
    try:
        trim(exc)
        lines = traceback.format_exception(cls, exc, exc.__traceback__)
    except BaseException:  # noqa: BLE001
        lines = []
    try:
        attributes = public_attributes(exc)
    except BaseException:  # noqa: BLE001
        attributes = {}
    return cls.__qualname__, str(cls.__module__), message, lines, attributes


def trim(exc: BaseException) -> None:
    """Removes the worker's own frames from the tracebacks of ``exc`` and
    of the exceptions chained to it.

    Those are frames of this package (dispatch, evaluate, the event loop's
    runner), of ``importlib.import_module`` and of the import machinery
    (``<frozen importlib._bootstrap>``), anywhere in the traceback, and
    asyncio's frames before the first frame of user code.
    """
    seen: set[int] = set()
    pending: list[Optional[BaseException]] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = _trimmed(current.__traceback__)
        pending.extend([current.__cause__, current.__context__])


def _trimmed(tb: Optional[types.TracebackType]) -> Optional[types.TracebackType]:
    entries = []
    while tb is not None:
        if not _internal(tb.tb_frame.f_code.co_filename):
            entries.append(tb)
        tb = tb.tb_next
    while entries and entries[0].tb_frame.f_code.co_filename.startswith(_ASYNCIO_DIR):
        entries.pop(0)
    trimmed: Optional[types.TracebackType] = None
    for entry in reversed(entries):
        trimmed = types.TracebackType(trimmed, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return trimmed


def _internal(filename: str) -> bool:
    return filename.startswith(_WORKER_DIR) or filename.startswith("<frozen importlib") or filename == _IMPORTLIB


def public_attributes(exc: BaseException) -> dict[str, Any]:
    """The exception's attributes whose names do not start with ``_``,
    methods left out: ``args``, and what the class adds (``OSError.errno``,
    ``SyntaxError.lineno``, a user's ``e.needed``).

    A value is sent as it is when it has a by-value form no larger than
    ``MAX_ATTRIBUTE_BYTES``, else as its ``repr()``.
    """
    found: dict[str, Any] = {}
    for name in dir(exc):
        if len(found) >= MAX_ATTRIBUTES:
            break
        if name.startswith("_"):
            continue
        try:
            value = getattr(exc, name)
        except Exception:  # noqa: BLE001 - a property may raise anything
            continue
        if inspect.isroutine(value):
            continue
        found[name] = _by_value(value)
    return found


def _by_value(value: Any) -> Any:
    try:
        if len(_native.dumps(value)) <= MAX_ATTRIBUTE_BYTES:
            return value
    except Exception:  # noqa: BLE001 - no by-value form, or a broken value
        pass
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"<{type(value).__qualname__} object>"
    return text[:MAX_ATTRIBUTE_REPR]
