# The two commands of the README: `make demo` and `make test` (both set everything up first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false

.PHONY: setup assets demo test lint bench-smoke clean

setup: $(VENV)/.installed

# Reinstall when pyproject.toml changes. torch==2.13.0 is the cached CPU build (see pyproject).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

assets: setup
	$(PY) scripts/fetch_assets.py

demo: assets
	$(PY) scripts/demo.py

test: assets
	$(PY) -m ruff check flaxdistil scripts configs tests
	$(PY) -m pytest -n 2 --durations=15 tests

lint: setup
	$(PY) -m ruff format --check flaxdistil scripts configs tests
	$(PY) -m ruff check flaxdistil scripts configs tests

clean:
	rm -rf $(VENV) workdirs
