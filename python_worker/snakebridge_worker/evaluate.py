"""``evaluate(code, globals)``: run Python source sent by the host, like a REPL cell.

Called through an ordinary call (``"snakebridge_worker.evaluate"``,
``"evaluate"``). Code that uses top-level ``await`` evaluates to a coroutine,
which the worker awaits on its event loop like any ``async def`` result.
"""

from __future__ import annotations

import ast
import builtins
import inspect
from typing import Any, Coroutine, Optional

FILENAME = "<eval>"
FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def evaluate(code: str, globals: dict[str, Any] | None = None) -> Any:
    """Runs ``code`` in a fresh namespace seeded with ``globals``.

    Every statement but the last runs; if the last one is an expression, its
    value is returned, else ``None``. With top-level ``await``, the same
    happens in the coroutine returned. ``SyntaxError`` and whatever the code
    raises propagate.
    """
    tree = compile(code, FILENAME, "exec", ast.PyCF_ONLY_AST | FLAGS)
    assert isinstance(tree, ast.Module)
    last: Optional[ast.expr] = None
    body = tree.body
    if body and isinstance(body[-1], ast.Expr):
        last = body[-1].value
        body = body[:-1]
    statements = compile(ast.Module(body=body, type_ignores=[]), FILENAME, "exec", FLAGS)
    expression = compile(ast.Expression(body=last), FILENAME, "eval", FLAGS) if last is not None else None
    namespace: dict[str, Any] = {"__builtins__": builtins}
    namespace.update(globals or {})
    namespace["__name__"] = "__snakebridge_eval__"
    if _is_async(statements) or (expression is not None and _is_async(expression)):
        return _evaluate_async(statements, expression, namespace)
    exec(statements, namespace)
    return eval(expression, namespace) if expression is not None else None


def _is_async(code: Any) -> bool:
    return bool(code.co_flags & inspect.CO_COROUTINE)


async def _evaluate_async(statements: Any, expression: Any, namespace: dict[str, Any]) -> Any:
    # Code compiled with top-level await evaluates to a coroutine only if it
    # awaits; the rest runs at once.
    result: Coroutine[Any, Any, Any] | None = eval(statements, namespace)
    if inspect.iscoroutine(result):
        await result
    if expression is None:
        return None
    value = eval(expression, namespace)
    return await value if _is_async(expression) else value
