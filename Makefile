# SnakeBridge: build, test, demo and benchmark.
#
#   make test   Rust tests, native build, pytest, ExUnit, package check (what CI runs)
#   make package-check  the Hex package's files alone, compiled by fresh
#               projects (with cargo, and from prebuilt libraries without it)
#   make demo   a few calls from Elixir to Python
#   make bench  the benchmark in bench/
#   make soak   1,000,000 mixed calls; prints BEAM and worker memory growth
#               (SOAK_CALLS=200000 make soak for a shorter run)
#   make soak-objects  1,000,000 short-lived Python objects; prints the
#               worker's object table and memory (SOAK_OBJECTS=200000 ...)
#   make soak-cluster  100,000 objects of a peer node's clustered pool held
#               here; prints what the peer holds and its memory
#               (SOAK_REMOTE_OBJECTS=20000 ... for a shorter run)
#   make soak-chaos  200,000 mixed calls while workers are SIGKILLed and
#               SIGSTOPped; every call must end exactly once
#
# Missing tools are installed on the way: Elixir/Erlang with apt-get when mix
# is absent, and a virtualenv in .venv with python_worker/requirements-test.txt
# for pytest. Rust (cargo) and Python 3 must be present.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:
.NOTPARALLEL:

# cargo installed by rustup lives here and is often not on PATH in CI.
export PATH := $(HOME)/.cargo/bin:$(PATH)

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
REQUIREMENTS := python_worker/requirements-test.txt

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo bench soak soak-objects soak-cluster soak-chaos setup tools elixir rust venv compile format-check cargo-test pytest mix-test package-check clean

# compile first: the runtime's Rust tests and pytest run real workers from
# _build/dev/lib/snakebridge/priv/python.
test: setup compile format-check cargo-test pytest mix-test package-check

demo: setup compile
	mix run demo/demo.exs

bench: setup compile
	mix run bench/run.exs
	mix run bench/arrays.exs

soak: setup compile
	mix run soak/soak.exs

soak-objects: setup compile
	mix run soak/objects.exs

soak-cluster: setup compile
	epmd -daemon
	mix run soak/cluster_objects.exs

soak-chaos: setup compile
	mix run soak/chaos.exs

setup: tools venv

tools: elixir rust
	@command -v make >/dev/null

elixir:
	@if ! command -v mix >/dev/null 2>&1; then \
	  echo "==> mix not found: installing Elixir and Erlang with apt-get"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y elixir erlang-dev erlang-nox; \
	fi
	@mix --version | tail -n 1

rust:
	@command -v cargo >/dev/null 2>&1 || { echo "==> cargo not found: install a Rust toolchain and retry" >&2; exit 1; }
	@command -v cc >/dev/null 2>&1 || { echo "==> no C compiler/linker: installing build-essential"; \
	  $(SUDO) apt-get update; $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y build-essential; }
	@cargo --version

# The stamp file is rebuilt whenever the requirements change.
venv: $(VENV)/.requirements-stamp

$(VENV)/.requirements-stamp: $(REQUIREMENTS)
	@if [ ! -x "$(VENV_PYTHON)" ]; then \
	  echo "==> creating $(VENV)"; \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    echo "==> $(PYTHON) -m venv failed: installing python3-venv"; \
	    rm -rf $(VENV); \
	    $(SUDO) apt-get update; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y python3 python3-venv; \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(VENV_PYTHON) -m pip install --quiet --disable-pip-version-check -r $(REQUIREMENTS)
	@touch $@

# The pyo3 crate's unit tests link and run too (they do not call into libpython).
cargo-test:
	cargo test --workspace

# Builds the NIF and the worker's extension (cargo's target directory is
# _build/snakebridge_native/target) and installs them into
# _build/<env>/lib/snakebridge/priv.
compile:
	mix compile

pytest:
	$(VENV_PYTHON) -m pytest python_worker/tests -q

# The cluster suites run peer nodes over Erlang distribution, which needs epmd.
# Elixir sources, tests, demo, bench and soak scripts as `mix format` writes them.
format-check:
	mix format --check-formatted

mix-test:
	epmd -daemon
	mix test

package-check:
	test/package/check.sh

clean:
	mix clean
