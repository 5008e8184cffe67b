# helixrt's tasks. `make help` lists them. Everything runs in .venv at the repository root,
# which the targets create and fill themselves: nothing needs installing by hand first.

.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.helixrt-built
RUST_SOURCES := $(shell find rust -name '*.rs') Cargo.toml Cargo.lock build.rs
PY_SOURCES := $(shell find python -type f -not -path '*/__pycache__/*')
PY_DIRS := $(wildcard python tests benches examples)

# Build against the venv's interpreter everywhere (maturin, cargo test, clippy), so cargo
# does not rebuild PyO3 each time a different Python is found first.
export PYO3_PYTHON := $(abspath $(PY))

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The build backend and every optional dependency group of pyproject.toml (tests, linters, peers).
$(DEPS): pyproject.toml | $(PY)
	$(PY) -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb")); \
	  print("\n".join(p["build-system"]["requires"] + [r for g in p["project"]["optional-dependencies"].values() for r in g]))' \
	  > $(VENV)/requirements-dev.txt
	$(PY) -m pip install --quiet -r $(VENV)/requirements-dev.txt
	touch $@

.PHONY: rust-tools
rust-tools:
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt

$(BUILT): $(DEPS) $(RUST_SOURCES) $(PY_SOURCES) pyproject.toml
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release --quiet
	touch $@

.PHONY: dev
dev: $(BUILT) ## build helixrt (release) into .venv with the test, lint and benchmark dependencies

.PHONY: redis
redis: ## make sure redis-server is installed (installs Debian's package when root)
	@command -v redis-server >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing redis-server from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	else \
	  echo "redis-server is missing: install it (Debian: sudo apt-get install redis-server) and rerun"; exit 1; \
	fi

.PHONY: chromium
chromium: ## make sure chromium is installed, for the dashboard's browser test (installs Debian's package when root)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium from Debian's packages"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "chromium is missing: install it (Debian: sudo apt-get install chromium) and rerun"; exit 1; \
	fi

.PHONY: lint
lint: $(BUILT) rust-tools ## ruff, ruff format, cargo fmt, clippy, mypy --strict and stubtest
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest helixrt._core

.PHONY: format
format: $(DEPS) rust-tools ## format the Python and Rust sources in place
	$(VENV)/bin/ruff check --fix --quiet $(PY_DIRS)
	$(VENV)/bin/ruff format --quiet $(PY_DIRS)
	cargo fmt

# The MCP servers the tests run (tests/mcp_servers.json: npm and PyPI packages, pinned), installed
# by helixrt's own Preinstaller into .cache/mcp; the tests then launch them offline.
export HELIXRT_MCP_ROOT := $(abspath .cache/mcp)
export HELIXRT_MCP_TEST_ROOT := $(HELIXRT_MCP_ROOT)

.PHONY: mcp-servers
mcp-servers: $(BUILT) ## install the MCP servers the tests use (needs node and npm)
	$(PY) -m helixrt mcp install --config tests/mcp_servers.json

.PHONY: test
test: $(BUILT) redis chromium mcp-servers ## cargo test, the linters and the whole pytest suite
	cargo test --quiet
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest

.PHONY: bench
bench: $(BUILT) ## the full benchmark table (with a throwaway redis-server when one is on PATH)
	$(PY) -m helixrt._redis_server -- $(VENV)/bin/helixrt bench --json bench.json

.PHONY: demo
demo: $(BUILT) ## build helixrt and its peers into .venv and print the quick benchmark table
	$(PY) -m helixrt._redis_server -- $(VENV)/bin/helixrt bench --quick

.PHONY: criterion
criterion: ## the Rust core's criterion benches
	cargo bench

.PHONY: wheel
wheel: $(DEPS) ## build a release wheel into dist/
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin build --release --out dist

.PHONY: clean
clean: ## remove build products and the venv
	rm -rf target dist $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis
