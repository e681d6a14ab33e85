"""The worker's callable cache never hides a new version of a function."""

from __future__ import annotations

from pathlib import Path

from conftest import Worker


def evaluate(worker: Worker, code: str) -> object:
    return worker.ok("snakebridge_worker.evaluate", "evaluate", [code])


def write_module(directory: Path, body: str) -> None:
    # The lengths differ, so the import system never takes an old .pyc for
    # the new source written within the same second.
    (directory / "sb_reloaded.py").write_text(body)


def test_reload_is_seen_by_the_next_call(worker: Worker, tmp_path: Path) -> None:
    write_module(tmp_path, "def version():\n    return 1\n")
    worker.ok("sb_helpers", "add_import_path", [str(tmp_path)])
    assert worker.ok("sb_reloaded", "version") == 1
    assert worker.ok("sb_reloaded", "version") == 1
    write_module(tmp_path, "def version():\n    return 'two'\n")
    evaluate(worker, "import importlib, sb_reloaded\nimportlib.reload(sb_reloaded)")
    assert worker.ok("sb_reloaded", "version") == "two"


def test_an_assigned_function_is_seen_by_the_next_call(worker: Worker) -> None:
    assert worker.ok("sb_helpers", "identity", [5]) == 5
    evaluate(worker, "import sb_helpers\nsb_helpers.identity = lambda x: [x]")
    assert worker.ok("sb_helpers", "identity", [5]) == [5]


def test_a_module_imported_again_is_seen(worker: Worker, tmp_path: Path) -> None:
    write_module(tmp_path, "class Box:\n    @staticmethod\n    def size():\n        return 1\n")
    worker.ok("sb_helpers", "add_import_path", [str(tmp_path)])
    assert worker.ok("sb_reloaded", "Box.size") == 1
    write_module(tmp_path, "class Box:\n    @staticmethod\n    def size():\n        return 222\n")
    evaluate(worker, "import sys\ndel sys.modules['sb_reloaded']")
    assert worker.ok("sb_reloaded", "Box.size") == 222


def test_a_function_that_went_away_is_an_attribute_error(worker: Worker, tmp_path: Path) -> None:
    write_module(tmp_path, "def gone():\n    return 1\n")
    worker.ok("sb_helpers", "add_import_path", [str(tmp_path)])
    assert worker.ok("sb_reloaded", "gone") == 1
    evaluate(worker, "import sb_reloaded\ndel sb_reloaded.gone")
    reply = worker.call("sb_reloaded", "gone")
    assert reply[2] == "AttributeError", reply
    evaluate(worker, "import sb_reloaded\nsb_reloaded.gone = lambda: 'back'")
    assert worker.ok("sb_reloaded", "gone") == "back"
