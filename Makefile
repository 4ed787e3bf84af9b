# The two commands (see README):  make pipeline  |  make test
# Both create .venv and install what they need first; nothing else has to be set up by hand.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: pipeline test setup setup-test setup-team setup-bench setup-docs lock data-source plots-offline team-up team-down docs

pipeline: setup data-source
	dvc repro

test: setup-test
	python -m pytest $(PYTEST_ARGS)

# The environment comes from the lock (docs/environment.md): uv.lock pins every package with its
# hashes; requirements/<set>.txt is its export for one set, which pip installs hash-checked.
# `setup` is what the pipeline runs on; setup-test adds the test, team, bench and docs extras,
# setup-team, setup-bench and setup-docs one extra each. VENV=<folder> builds another venv.
LOCK_SETS := runtime test team bench docs
PIP_VERSION := 26.3

setup: $(VENV)/.installed-runtime
setup-test: $(VENV)/.installed-test
setup-team: $(VENV)/.installed-team
setup-bench: $(VENV)/.installed-bench
setup-docs: $(VENV)/.installed-docs

$(VENV)/.installed-%: requirements/%.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/python -m pip install --quiet --require-hashes -r $<
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# After changing the dependencies in pyproject.toml: resolve uv.lock again (keeping every version
# that still fits; UV_LOCK_ARGS="--upgrade-package NAME" moves one) and write the exports.
lock: setup-test
	uv lock $(UV_LOCK_ARGS)
	for set in $(LOCK_SETS); do \
	  uv export --frozen --no-emit-project --format requirements-txt --quiet \
	    $$(test $$set = runtime || echo --extra $$set) -o requirements/$$set.txt; \
	done

# `dvc plots show` without internet: vega from the npm registry, inlined (docs/experiments.md)
plots-offline: setup
	python scripts/install-plots-js.py

# Offline machines: the download stage reads the Debian package's folder when it is there.
data-source:
	@bash scripts/ensure-data-source.sh

# The team stack on 127.0.0.1: PostgreSQL, SeaweedFS S3, MLflow with accounts (docs/team.md)
team-up: setup-team
	python -m fmnist.team up

team-down:
	$(BIN)/python -m fmnist.team down

# The documentation site (mkdocs.yml, docs/) on http://127.0.0.1:8000, rebuilt as pages change
docs: setup-docs
	mkdocs serve --dev-addr 127.0.0.1:8000
