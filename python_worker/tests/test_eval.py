"""snakebridge_worker.evaluate: source code from the host, run like a REPL cell."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from conftest import OK, PY_ERROR, Worker
from snakebridge_worker.evaluate import evaluate


def test_expression_value() -> None:
    assert evaluate("1 + 2") == 3


def test_statements_only_give_none() -> None:
    assert evaluate("x = 1\ny = x + 1") is None
    assert evaluate("") is None


def test_last_expression_after_statements() -> None:
    assert evaluate("x = 2\ny = 3\nx * y") == 6


def test_globals_seed_a_fresh_namespace() -> None:
    seed = {"a": 1, "b": 2}
    assert evaluate("c = a + b\ndef f():\n    return c * 10\nf()", seed) == 30
    assert seed == {"a": 1, "b": 2}
    assert evaluate("'c' in globals()") is False


def test_name_and_builtins() -> None:
    assert evaluate("__name__") == "__snakebridge_eval__"
    assert evaluate("len([1, 2])") == 2


def test_syntax_error_propagates() -> None:
    with pytest.raises(SyntaxError) as info:
        evaluate("1 +")
    assert info.value.filename == "<eval>"


def test_runtime_error_propagates() -> None:
    with pytest.raises(ZeroDivisionError):
        evaluate("x = 1\nx / 0")


def test_top_level_await_gives_a_coroutine() -> None:
    result = evaluate("import asyncio\nawait asyncio.sleep(0)\nx = 20\nx + 1")
    assert inspect.iscoroutine(result)
    assert asyncio.run(result) == 21


def test_await_in_last_expression_only() -> None:
    result = evaluate("import asyncio\nawait asyncio.sleep(0, result=5)")
    assert asyncio.run(result) == 5


def test_eval_in_the_worker(worker: Worker) -> None:
    assert worker.ok("snakebridge_worker.evaluate", "evaluate", ["sum(range(n))", {"n": 10}]) == 45
    assert worker.ok("snakebridge_worker.evaluate", "evaluate", ["import os"]) is None


def test_eval_with_top_level_await_in_the_worker(worker: Worker) -> None:
    code = "import asyncio\nawait asyncio.sleep(0.01)\n41 + 1"
    assert worker.ok("snakebridge_worker.evaluate", "evaluate", [code]) == 42


def test_eval_syntax_error_in_the_worker(worker: Worker) -> None:
    reply = worker.call("snakebridge_worker.evaluate", "evaluate", ["def"])
    assert reply[:3] == [PY_ERROR, reply[1], "SyntaxError"], reply


def test_eval_result_without_wire_form_is_a_handle(worker: Worker) -> None:
    reply = worker.call("snakebridge_worker.evaluate", "evaluate", ["import fractions\nfractions.Fraction(1, 2)"])
    assert reply[0] == OK and reply[2].type_name == "fractions.Fraction"
