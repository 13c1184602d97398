# Two commands do all the set-up on a fresh machine (each creates .venv when missing):
#   make demo   - the main job on a default that needs no network
#   make test   - lint, format check and the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH  := .venv-bench
MEDLENS_DATA ?= $(abspath ../shared/data)
export MEDLENS_DATA

.PHONY: demo test lint bench-env bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the local CPU build: a newer one would pull gigabytes of CUDA wheels
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]' -c constraints.txt
	# fastMRI's metrics and masks: a test-only oracle; its own requirements would pull torchvision,
	# which cannot be imported beside this torch (what it needs at import is in the dev extra)
	$(BIN)/python -m pip install -q --no-deps fastmri==0.3.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medlens demo --output demo_out

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

test: lint
	$(BIN)/python -m pytest -n 2 -q

$(BENCH)/.installed: pyproject.toml constraints.txt benchmarks/requirements.txt
	test -x $(BENCH)/bin/python || $(PYTHON) -m venv $(BENCH)
	$(BENCH)/bin/python -m pip install -q --upgrade pip
	$(BENCH)/bin/python -m pip install -q torch==2.13.0
	$(BENCH)/bin/python -m pip install -q -e . -r benchmarks/requirements.txt -c constraints.txt
	touch $(BENCH)/.installed

bench-env: $(BENCH)/.installed

bench: bench-env
	$(BENCH)/bin/python benchmarks/io.py

clean:
	rm -rf $(VENV) $(BENCH) demo_out .pytest_cache .ruff_cache
