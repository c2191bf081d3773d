# Two commands on a fresh machine with only Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test chaos bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

CONSTRAINTS := requirements/constraints.txt

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py $(if $(V),-v)

# Test processes (pytest-xdist): most of a test waits on the processes it started, so two share
# 2 cores well. Each takes whole modules (--dist loadfile: a module's stack is built once) and
# its own Redis database (tests/support.py: redis_db).
TEST_WORKERS ?= 2

test: $(VENV)/.dev-installed
	sh scripts/ensure_browser.sh
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

chaos: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests/chaos -m chaos -s

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.run --jobs 5000 --latency-jobs 100 --repeat 3

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check app workers tests bench
	$(BIN)/lint-imports

clean:
	rm -rf .kiln
