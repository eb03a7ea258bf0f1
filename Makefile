# Two entry points (see README): `make serve` and `make test`. Each installs what is missing into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
HOST ?= 127.0.0.1
PORT ?= 8080
# Test modules run on this many worker processes, each module whole on one (its fixtures are per module).
TEST_WORKERS ?= 2

.PHONY: serve test lint install install-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(VENV)/bin/tunehouse serve --host $(HOST) --port $(PORT)

lint: install-test
	$(VENV)/bin/ruff check .

test: install-test
	scripts/ensure-postgres
	scripts/ensure-chromium
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15
