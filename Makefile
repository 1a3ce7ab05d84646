# coldstart: `make demo` runs the nightly DAG through Airflow on the bundled sample; `make test` runs ruff and
# mypy, then the tests.
# Both create or refresh .venv from the pinned files first.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(CURDIR)/$(PY)
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(PY)

.PHONY: venv demo lint test clean check-java

check-java:
	@command -v java >/dev/null 2>&1 || { echo "error: Java not found. Spark needs Java 17: install it (e.g. apt-get install openjdk-17-jre-headless) or put it on PATH." >&2; exit 1; }
	@java -version 2>&1 | head -1 | grep -Eq '"(17|21)[."]' || { echo "warning: Spark 4.2 is tested with Java 17; found: $$(java -version 2>&1 | head -1)" >&2; }

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: Python 3.11 is required, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --quiet --no-deps -e . 2>/dev/null || $(PY) -m pip install --no-deps -e .
	$(PY) -m pip check
	@touch $(STAMP)

venv: $(STAMP)

demo: check-java venv
	bash scripts/demo.sh

# Lint and types first (settings in pyproject.toml): a failure stops before the slow tests.
lint: venv
	$(PY) -m ruff check coldstart jobs dags tests bench
	$(PY) -m mypy

# Two workers: the Airflow stack's tests beside the others (tests/conftest.py); PYTEST_ARGS= runs them in one process.
PYTEST_ARGS ?= -n 2
test: check-java venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var .pytest_cache
