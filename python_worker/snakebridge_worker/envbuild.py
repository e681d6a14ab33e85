"""Builds, or finds in the cache, a virtualenv with a pool's requirements.

Run by the base interpreter as a script (``python -I envbuild.py ...``), by
``SnakeBridge.PythonEnv``; it needs only the standard library. Everything it
and the installer print goes to stdout, one line at a time, for the host to
log. Lines of its own start with ``snakebridge: ``; on success the last line
is ``snakebridge-python: <the environment's interpreter>``.

The environment's directory is named after the interpreter's version and a
hash of the interpreter, the requirements and the install options, so a
change to any of them gives a new environment. Builds of one directory are
serialised by an exclusive ``flock`` on a lock file beside it, which the
kernel releases when the process dies, so a crashed build never leaves the
lock held. A directory is complete once it holds its marker file; a
directory without one is a build that failed or was killed, and is rebuilt.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys

MARKER = ".snakebridge-ready"
REQUIREMENTS_FILE = "snakebridge-requirements.txt"


def say(text: str) -> None:
    print(f"snakebridge: {text}", flush=True)


def pyproject_dependencies(path: str) -> list[str]:
    """The ``[project] dependencies`` of a pyproject.toml."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11: pip vendors the same parser.
        from pip._vendor import tomli as tomllib
    with open(path, "rb") as f:
        project = tomllib.load(f).get("project", {})
    dependencies = project.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise ValueError(f"{path}: [project] dependencies must be a list of strings")
    return dependencies


def env_dir(args: argparse.Namespace, requirements: list[str]) -> str:
    identity = {
        "python": sys.version,
        "implementation": sys.implementation.name,
        "executable": os.path.realpath(sys.executable),
        "requirements": requirements,
        "find_links": [os.path.realpath(d) for d in args.find_links],
        "offline": args.offline,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return os.path.join(args.cache_dir, f"py{version}-{digest}")


def run(command: list[str]) -> int:
    """Runs ``command``, passing its output on line by line; its exit status."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace"
    )
    assert process.stdout is not None
    for line in process.stdout:
        print(line.rstrip("\n"), flush=True)
    return process.wait()


def build(directory: str, requirements: list[str], args: argparse.Namespace) -> bool:
    python = os.path.join(directory, "bin", "python")
    uv = args.uv if args.installer in ("auto", "uv") else None
    installer = "uv" if uv else "pip"
    say(f"creating the Python environment {directory} from {sys.executable} with {installer}")
    if uv:
        create = [uv, "venv", "--quiet", "--python", sys.executable, directory]
    else:
        create = [sys.executable, "-m", "venv", directory]
    status = run(create)
    if status != 0:
        say(f"{' '.join(create[:3])} exited with status {status}")
        return False
    if requirements:
        with open(os.path.join(directory, REQUIREMENTS_FILE), "w") as f:
            f.write("".join(f"{r}\n" for r in requirements))
        links = [option for d in args.find_links for option in ("--find-links", d)]
        if uv:
            install = [uv, "pip", "install", "--python", python, *links]
            install += ["--offline", "--no-index"] if args.offline else []
        else:
            install = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off", *links]
            install += ["--no-index"] if args.offline else []
        install += ["-r", os.path.join(directory, REQUIREMENTS_FILE)]
        say(f"installing {len(requirements)} requirement(s) with {installer}: {', '.join(requirements)}")
        status = run(install)
        if status != 0:
            say(f"{installer} install exited with status {status}")
            return False
    with open(os.path.join(directory, MARKER), "w") as f:
        json.dump({"requirements": requirements, "installer": installer}, f)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--requirement", dest="requirements", action="append", default=[])
    parser.add_argument("--pyproject")
    parser.add_argument("--find-links", action="append", default=[])
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--installer", choices=["auto", "uv", "pip"], default="auto")
    parser.add_argument("--uv", help="the uv executable, when there is one")
    args = parser.parse_args(argv)
    if args.installer == "uv" and not args.uv:
        say("installer uv was asked for, but no uv executable was found")
        return 1

    requirements = list(args.requirements)
    if args.pyproject:
        try:
            requirements += pyproject_dependencies(args.pyproject)
        except (OSError, ValueError, ImportError) as exc:
            say(f"cannot read the dependencies of {args.pyproject}: {exc}")
            return 1

    directory = env_dir(args, requirements)
    python = os.path.join(directory, "bin", "python")
    os.makedirs(args.cache_dir, exist_ok=True)
    if not os.path.exists(os.path.join(directory, MARKER)):
        with open(directory + ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"waiting for another build of {directory}")
                fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(os.path.join(directory, MARKER)):
                say(f"built by another process: {directory}")
            else:
                if os.path.exists(directory):
                    say(f"removing an unfinished build of {directory}")
                    shutil.rmtree(directory)
                if not build(directory, requirements, args):
                    shutil.rmtree(directory, ignore_errors=True)
                    return 1
                say(f"built {directory}")
    print(f"snakebridge-python: {python}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
