# realtime-server: `make serve` runs the server, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: serve demo test lint typecheck pytest bench clean chromium

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.'
	touch $@

$(BIN)/.test-installed: $(BIN)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,redis,postgres]'
	touch $@

tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
	touch $@

## Debian's Chromium for the browser tests (tests/test_browser.py drives /usr/bin/chromium
## with playwright-core; never a downloaded browser build). Needs root, as CI runs.
chromium:
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }

## Run the server (needs REALTIME_JWT_SECRET or REALTIME_JWT_PUBLIC_KEY in the environment).
serve: $(BIN)/.installed
	$(BIN)/realtime-server serve

## The live demo page at http://127.0.0.1:8000/ (generated secret, simulated signing flow).
demo: $(BIN)/.installed
	$(BIN)/realtime-server serve --demo

## Install test dependencies, then lint, type-check and run every test.
test: $(BIN)/.test-installed tests/js/node_modules/.installed chromium
	$(MAKE) --no-print-directory lint typecheck pytest

lint: $(BIN)/.test-installed
	$(BIN)/ruff check .

typecheck: $(BIN)/.test-installed
	$(BIN)/mypy

pytest: $(BIN)/.test-installed
	$(BIN)/pytest -q

## Fan-out benchmark: our server vs a bare websockets broadcast server (prints a table).
bench: $(BIN)/.test-installed
	$(BIN)/python bench/fanout.py

clean:
	rm -rf $(VENV) tests/js/node_modules .mypy_cache .ruff_cache .pytest_cache
