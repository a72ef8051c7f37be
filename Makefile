# realtime-server: `make serve` runs the server, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: serve demo test lint typecheck pytest bench bench-deps clean js-deps lock upgrade

# Installs come from the hash-pinned locks in requirements/ (`make lock` writes them from
# pyproject.toml; `make upgrade` moves every pin to its newest release and runs the tests).
# The project itself is installed without its dependencies and without build isolation,
# so nothing unpinned is ever fetched.
PIP_LOCKED := $(BIN)/pip install --quiet --require-hashes --no-deps
PIP_SELF   := $(BIN)/pip install --quiet --no-deps --no-build-isolation -e .

$(BIN)/.installed: requirements/main.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "Python 3.11+ is needed: '$(PYTHON)' is older or missing (make PYTHON=python3.12 ...)"; \
	  exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) -r requirements/main.txt
	$(PIP_SELF)
	touch $@

$(BIN)/.test-installed: $(BIN)/.installed requirements/dev.txt
	$(PIP_LOCKED) -r requirements/dev.txt
	$(PIP_SELF)
	touch $@

tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

## The Node SDK and playwright-core for the JS and browser tests, when npm is there
## (without it those tests skip, naming what is missing; on CI they fail).
js-deps:
	@if command -v npm >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory tests/js/node_modules/.installed; \
	else echo "npm not found: the JS SDK and browser tests will be skipped (install Node.js 20+)"; fi

## Run the server (needs REALTIME_JWT_SECRET or REALTIME_JWT_PUBLIC_KEY in the environment).
serve: $(BIN)/.installed
	$(BIN)/realtime-server serve

## The live demo page at http://127.0.0.1:8000/ (generated secret, simulated signing flow).
demo: $(BIN)/.installed
	$(BIN)/realtime-server serve --demo

## Install test dependencies (the benchmark peers' too: tests/test_loadtest_peers.py
## drives them), then lint, type-check and run every test. Nothing is installed
## system-wide: tests whose prerequisite (redis-server, PostgreSQL, Node.js, Chromium,
## docker) is missing skip with one line naming it (README, "Tests").
test: $(BIN)/.test-installed js-deps bench-deps
	$(MAKE) --no-print-directory lint typecheck pytest

lint: $(BIN)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.test-installed
	$(BIN)/mypy

## The core's unit tests and the engine contract suites in asyncio debug mode, then the
## whole suite (contract suites on both asyncio and uvloop) with the core's branch
## coverage floor (pyproject.toml, [tool.coverage]).
DEBUG_SUITES := tests/test_subscriptions.py tests/test_core_adversity.py \
	tests/test_engine_contract.py tests/test_expiry.py tests/test_hub.py tests/test_protocol.py
pytest: $(BIN)/.test-installed
	$(BIN)/pytest -q --asyncio-debug $(DEBUG_SUITES)
	$(BIN)/pytest -q --cov --cov-report=term

## Fan-out benchmark: our server vs a bare websockets broadcast server (prints a table).
bench: $(BIN)/.test-installed
	$(BIN)/python bench/fanout.py

## Rewrite the locks from pyproject.toml (after changing a dependency there).
UV_COMPILE = $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(UV_FLAGS)
lock: $(BIN)/.test-installed
	$(UV_COMPILE) pyproject.toml requirements/build.in -o requirements/main.txt
	$(UV_COMPILE) pyproject.toml requirements/build.in requirements/tools.in --extra test \
		-c requirements/main.txt -o requirements/dev.txt
	$(UV_COMPILE) pyproject.toml requirements/build.in requirements/tools.in --extra test \
		--extra bench -c requirements/dev.txt -o requirements/bench.txt

## Move every pin to its newest release, reinstall, and run the whole suite.
upgrade: $(BIN)/.test-installed
	$(MAKE) --no-print-directory lock UV_FLAGS=--upgrade
	$(MAKE) --no-print-directory test

## The benchmark peers' dependencies: Starlette + broadcaster, python-socketio, py-spy
## (requirements/bench.txt) and, when npm is there, Node.js socket.io (bench/peers/socketio).
bench-deps: $(BIN)/.bench-installed
	@if command -v npm >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory bench/peers/socketio/node_modules/.installed; \
	else echo "npm not found: the socket.io peer (bench, tests) is skipped (install Node.js 20+)"; fi

$(BIN)/.bench-installed: $(BIN)/.test-installed requirements/bench.txt
	$(PIP_LOCKED) -r requirements/bench.txt
	touch $@

bench/peers/socketio/node_modules/.installed: bench/peers/socketio/package.json \
		bench/peers/socketio/package-lock.json
	npm ci --prefix bench/peers/socketio --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) tests/js/node_modules bench/peers/socketio/node_modules .mypy_cache .ruff_cache .pytest_cache
