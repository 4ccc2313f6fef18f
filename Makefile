# stabilizer-asgi developer commands. Every target creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BSTAMP := $(VENV)/.installed-bench
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: demo test check-install lint docs tools format bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	touch $@

$(BSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,docs,bench]"
	touch $@

## make demo: serve the chat demo on http://127.0.0.1:8000 (dashboard at /_stabilizer/)
demo: $(STAMP)
	$(BIN)/stabilizer-asgi serve examples.chat:app --host $(HOST) --port $(PORT)

## make test: lint, type-check, build the docs site, run the whole test suite, then the
## clean-install check
test: lint docs tools
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory check-install

## make check-install: build the wheel, install it (bare, and with [server,client]) into fresh
## venvs on the oldest and newest Python the package claims, import it, serve a bare app with
## `stabilizer-asgi serve` and round-trip a message with the Python client (~1 min)
check-install: $(STAMP)
	$(BIN)/python tests/install/check_install.py

## make tools: the external tools the tests drive (Debian's chromium for the browser client,
## Debian's redis-server for cluster mode)
tools:
	@for tool in chromium:chromium redis-server:redis-server; do \
	  cmd=$${tool%%:*}; pkg=$${tool#*:}; \
	  command -v $$cmd >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$pkg >/dev/null || exit 1; \
	  else \
	    echo "make test needs Debian's $$pkg: sudo apt-get install $$pkg" >&2; exit 1; \
	  fi; \
	done

lint: $(STAMP)
	$(BIN)/ruff check stabilizer_asgi tests benchmarks examples
	$(BIN)/ruff format --check stabilizer_asgi tests benchmarks examples
	$(BIN)/mypy

## make docs: build the documentation site (docs/, mkdocs.yml) into site/, offline; any
## warning (a broken link, a page missing from the nav) is an error
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

format: $(STAMP)
	$(BIN)/ruff format stabilizer_asgi tests benchmarks examples
	$(BIN)/ruff check --fix stabilizer_asgi tests benchmarks examples

## make bench: every benchmark (~15 min); results in benchmarks/results/
bench: $(BSTAMP)
	$(BIN)/python -m benchmarks.run

## make bench-quick: reduced sizes, under a minute
bench-quick: $(BSTAMP)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache site
