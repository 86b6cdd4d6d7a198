# `make run` serves on the embedded defaults; `make test` runs every suite. Both create .venv if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tap migrate
	$(BIN)/tap serve

test: $(STAMP)
	$(BIN)/pytest tests props

lint: $(STAMP)
	$(BIN)/ruff check tap actors loadgen tests props
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m loadgen bench --quick --out report.json

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
