# The two commands (see README):  make pipeline  |  make test
# Both create .venv and install what they need first; nothing else has to be set up by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: pipeline test setup data-source plots-offline team-up team-down docs

pipeline: setup data-source
	dvc repro

test: setup
	python -m pytest $(PYTEST_ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# `dvc plots show` without internet: vega from the npm registry, inlined (docs/experiments.md)
plots-offline: setup
	python scripts/install-plots-js.py

# Offline machines: the download stage reads the Debian package's folder when it is there.
data-source:
	@bash scripts/ensure-data-source.sh

# The team stack on 127.0.0.1: PostgreSQL, SeaweedFS S3, MLflow with accounts (docs/team.md)
team-up: setup
	python -m fmnist.team up

team-down:
	$(BIN)/python -m fmnist.team down

# The documentation site (mkdocs.yml, docs/) on http://127.0.0.1:8000, rebuilt as pages change
docs: setup
	mkdocs serve --dev-addr 127.0.0.1:8000
