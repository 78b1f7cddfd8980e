# Two commands set a fresh machine up: `make serve` runs the server, `make test` runs every test.
# Each target installs what it needs first (a virtualenv in .venv, npm packages, the web build).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: serve test install web node-deps bench-deps lint bench-smoke bench bench-scaleout

serve: install web
	$(BIN)/collab-server serve

test: install web node-deps bench-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

web: collab_server/web_dist/index.html

collab_server/web_dist/index.html: web/package.json web/package-lock.json web/tsconfig.json $(shell find web/src web/index.html web/vite.config.ts -type f 2>/dev/null)
	cd web && npm ci --no-audit --no-fund && npm run build

node-deps: tests/node/node_modules/.package-lock.json

tests/node/node_modules/.package-lock.json: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund

# The peer servers and Node clients of bench/suite.py (the smoke test runs them too).
bench-deps: bench/peers/node_modules/.package-lock.json

bench/peers/node_modules/.package-lock.json: bench/peers/package-lock.json
	cd bench/peers && npm ci --no-audit --no-fund

LINTED := collab_server crdt_store tests $(wildcard bench)

lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

bench-smoke: install
	$(BIN)/python -m bench.compaction --smoke

# The side-by-side suite (several minutes; writes the Servers section of docs/benchmarks.md).
bench: install bench-deps
	$(BIN)/python -m bench.suite

# 1, 2 and 3 server processes on one database, PostgreSQL and Redis fan-out (a few minutes;
# needs PostgreSQL and Redis; writes the Scale-out section of docs/benchmarks.md).
bench-scaleout: install bench-deps
	$(BIN)/python -m bench.scaleout
