"""envbuild.py, the builder of SnakeBridge's cached virtualenvs, run as the
host runs it: offline, from a wheel made here, with pip."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import PRIV_PYTHON

SCRIPT = PRIV_PYTHON / "snakebridge_worker" / "envbuild.py"
BUILD_TIMEOUT = 300


def make_wheel(directory: Path, name: str, version: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: snakebridge-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = directory / f"{name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as whl:
        for member, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={digest},{len(data)}")
            whl.writestr(member, data)
        record.append(f"{dist}/RECORD,,")
        whl.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    make_wheel(tmp_path / "wheels", "sbenvtest", "1.0", "VALUE = 7\n")
    return tmp_path / "wheels"


def builder(cache: Path, wheels: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-I", str(SCRIPT), f"--cache-dir={cache}", f"--find-links={wheels}", "--offline", "--installer=pip", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> tuple[int, list[str]]:
    out, _ = process.communicate(timeout=BUILD_TIMEOUT)
    return process.returncode, out.splitlines()


def test_two_processes_building_one_environment_share_one_build(tmp_path: Path, wheels: Path) -> None:
    cache = tmp_path / "cache"
    first = builder(cache, wheels, "--requirement=sbenvtest==1.0")
    second = builder(cache, wheels, "--requirement=sbenvtest==1.0")
    (status1, out1), (status2, out2) = finish(first), finish(second)
    assert (status1, status2) == (0, 0), out1 + out2
    lines = out1 + out2
    assert sum("creating the Python environment" in line for line in lines) == 1
    assert out1[-1] == out2[-1]
    python = out1[-1].removeprefix("snakebridge-python: ")
    value = subprocess.run([python, "-c", "import sbenvtest; print(sbenvtest.VALUE)"], capture_output=True, text=True)
    assert value.stdout == "7\n"

    # A third run finds the environment and says nothing but where it is.
    status, out = finish(builder(cache, wheels, "--requirement=sbenvtest==1.0"))
    assert (status, out) == (0, [f"snakebridge-python: {python}"])

    # A directory without its marker is an unfinished build: it is rebuilt.
    env_dir = Path(python).parents[1]
    (env_dir / ".snakebridge-ready").unlink()
    status, out = finish(builder(cache, wheels, "--requirement=sbenvtest==1.0"))
    assert status == 0
    assert f"snakebridge: removing an unfinished build of {env_dir}" in out
    assert out[-1] == f"snakebridge-python: {python}"


def test_an_unreadable_pyproject_is_reported(tmp_path: Path, wheels: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[project]\ndependencies = 'sbenvtest'\n")
    status, out = finish(builder(tmp_path / "cache", wheels, f"--pyproject={pyproject}"))
    assert status == 1
    assert out == [f"snakebridge: cannot read the dependencies of {pyproject}: {pyproject}: [project] dependencies must be a list of strings"]

    pyproject.write_text("[project\n")
    status, out = finish(builder(tmp_path / "cache", wheels, f"--pyproject={pyproject}"))
    assert status == 1
    assert out[0].startswith(f"snakebridge: cannot read the dependencies of {pyproject}: ")


def test_uv_asked_for_but_missing(tmp_path: Path, wheels: Path) -> None:
    command = [sys.executable, "-I", str(SCRIPT), f"--cache-dir={tmp_path}", "--requirement=x", "--installer=uv"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert result.returncode == 1
    assert result.stdout == "snakebridge: installer uv was asked for, but no uv executable was found\n"
