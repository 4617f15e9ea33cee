# Two entry points: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip's cache is kept on purpose: torch is several GB and reinstalls should not download it again.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e ".[weights,ray,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/blocktune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
