# Two commands matter: `make demo` and `make test`. Both set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup system demo test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Reinstall only when the package metadata changes; quick when already done.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[local,listen,dev,llm]'
	touch $@

system:
	@scripts/install-system.sh

setup: $(STAMP) system

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check fish_notebook tests bench
	$(BIN)/ruff format --check fish_notebook tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: setup lint typecheck pytest

demo: setup
	$(BIN)/python scripts/demo.py

bench: setup
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
