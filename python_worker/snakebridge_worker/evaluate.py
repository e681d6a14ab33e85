"""``evaluate(code, globals, namespace)``: run Python source sent by the host, like a REPL cell.

Called through an ordinary call (``"snakebridge_worker.evaluate"``,
``"evaluate"``). Code that uses top-level ``await`` evaluates to a coroutine,
which the worker awaits on its event loop like any ``async def`` result.

The code runs in a module (see ``snakebridge_worker.namespaces``): a
namespace the host keeps, or a fresh one that lives as long as what the code
made refers to it. Classes defined in it (dataclasses too) have a real
module, so ``dataclasses`` and ``pickle`` find them.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import types
from typing import Any, Coroutine, Optional

from snakebridge_worker import namespaces

FILENAME = "<eval>"
FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def evaluate(code: str, globals: dict[str, Any] | None = None, namespace: types.ModuleType | None = None) -> Any:
    """Runs ``code`` in ``namespace`` (a fresh one if ``None``), after
    setting the names in ``globals`` in it.

    Every statement but the last runs; if the last one is an expression, its
    value is returned, else ``None``. With top-level ``await``, the same
    happens in the coroutine returned. What the code assigns, imports and
    defines stays in ``namespace``. ``SyntaxError`` and whatever the code
    raises propagate.
    """
    if namespace is None:
        namespace = namespaces.new()
    elif not isinstance(namespace, types.ModuleType):
        raise TypeError(f"a namespace must be a module, not {type(namespace).__qualname__}")
    tree = compile(code, FILENAME, "exec", ast.PyCF_ONLY_AST | FLAGS)
    assert isinstance(tree, ast.Module)
    last: Optional[ast.expr] = None
    body = tree.body
    if body and isinstance(body[-1], ast.Expr):
        last = body[-1].value
        body = body[:-1]
    statements = compile(ast.Module(body=body, type_ignores=[]), FILENAME, "exec", FLAGS)
    expression = compile(ast.Expression(body=last), FILENAME, "eval", FLAGS) if last is not None else None
    names = namespace.__dict__
    names.setdefault("__builtins__", builtins)
    names.update(globals or {})
    if _is_async(statements) or (expression is not None and _is_async(expression)):
        # The coroutine's frame holds the module while it runs.
        return _evaluate_async(statements, expression, names, namespace)
    exec(statements, names)
    return eval(expression, names) if expression is not None else None


def _is_async(code: Any) -> bool:
    return bool(code.co_flags & inspect.CO_COROUTINE)


async def _evaluate_async(statements: Any, expression: Any, namespace: dict[str, Any], module: types.ModuleType) -> Any:
    # Code compiled with top-level await evaluates to a coroutine only if it
    # awaits; the rest runs at once.
    result: Coroutine[Any, Any, Any] | None = eval(statements, namespace)
    if inspect.iscoroutine(result):
        await result
    if expression is None:
        return None
    value = eval(expression, namespace)
    return await value if _is_async(expression) else value
