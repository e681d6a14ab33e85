"""snakebridge_worker.evaluate: source code from the host, run like a REPL cell."""

from __future__ import annotations

import asyncio
import gc
import inspect
import pickle
import sys

import pytest

from conftest import OK, PY_ERROR, Worker
from snakebridge_worker import namespaces
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
    assert evaluate("__name__").startswith("snakebridge_ns_")
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


def test_a_namespace_keeps_names_between_evaluations() -> None:
    ns = namespaces.new()
    assert evaluate("import math\nx = 2\ndef area(r):\n    return round(math.pi * r ** 2, 2)", None, ns) is None
    assert evaluate("area(x)", None, ns) == 12.57
    assert evaluate("x = x + y\nx", {"y": 40}, ns) == 42
    assert ns.x == 42
    assert "x" not in evaluate("dir()", None, namespaces.new())


def test_namespaces_are_real_modules_in_sys_modules() -> None:
    ns = namespaces.new()
    other = namespaces.new()
    assert ns.__name__ != other.__name__
    assert sys.modules[ns.__name__].__dict__ is ns.__dict__
    evaluate("from dataclasses import dataclass\n@dataclass\nclass P:\n    x: int\n    y: int = 0", None, ns)
    point = evaluate("P(1, 2)", None, ns)
    assert point.__class__.__module__ == ns.__name__
    assert pickle.loads(pickle.dumps(point)) == point


def test_a_namespace_leaves_sys_modules_with_its_last_reference() -> None:
    ns = namespaces.new()
    name = ns.__name__
    evaluate("def f():\n    return 1", None, ns)
    f = ns.f
    del ns
    gc.collect()
    assert name not in sys.modules
    # Functions keep their globals, not the module.
    assert f() == 1


def test_classes_and_dataclasses_in_a_plain_evaluation() -> None:
    code = "from dataclasses import dataclass, field\n@dataclass\nclass P:\n    x: int\n    tags: list = field(default_factory=list)\nP(1)"
    point = evaluate(code)
    assert point.x == 1 and point.tags == []
    assert evaluate("class A:\n    pass\nA.__module__").startswith("snakebridge_ns_")


def test_a_namespace_must_be_a_module() -> None:
    with pytest.raises(TypeError, match="must be a module"):
        evaluate("1", None, {"x": 1})  # type: ignore[arg-type]


def test_top_level_await_in_a_namespace() -> None:
    ns = namespaces.new()
    result = evaluate("import asyncio\nawait asyncio.sleep(0)\nz = 7", None, ns)
    asyncio.run(result)
    assert evaluate("z", None, ns) == 7
