# The README's commands. Everything the project needs is installed from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# dvc.yaml's stages call `rotmnist`: put the venv's console scripts first on PATH for every recipe.
export PATH := $(CURDIR)/$(BIN):$(PATH)

# `make ui`: the address of the runs page of params.yaml's experiment (MLflow 3 opens an experiment on a
# GenAI overview page instead), read from the SQLite store directly: no mlflow import, so it is instant.
define UI_ADDRESS
import pathlib, sqlite3, sys
from rotmnist.config import load_config
from rotmnist.errors import ConfigError
try:
    name = load_config().mlflow.experiment
except ConfigError as err:
    sys.exit(f"make ui: {err}")
try:
    db = sqlite3.connect(pathlib.Path(sys.argv[1]).as_uri() + "?mode=ro", uri=True)
    row = db.execute("SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (name,)).fetchone()
except sqlite3.Error:
    row = None
print(f"http://127.0.0.1:5000/#/experiments/{row[0]}/runs" if row else "http://127.0.0.1:5000 (no runs yet: run make repro first)")
endef
export UI_ADDRESS

.PHONY: setup repro test test-fast ui serve hooks lint bench clean-stores docs docs-serve

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## Run the whole pipeline (download -> ... -> monitor) and push the data to the local DVC remote.
repro: setup
	$(BIN)/dvc repro
	$(BIN)/dvc push

## Run the test suite with a coverage summary.
test: setup
	$(BIN)/python -m pytest

## The fast tests only (what the pre-commit hook runs).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -q --no-cov

## MLflow UI on http://127.0.0.1:5000 over the repository's store; prints the address of the experiment's runs page.
ui: setup
	@$(BIN)/python -c "$$UI_ADDRESS" '$(CURDIR)/mlflow.db'
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port 5000

## The champion over HTTP on http://127.0.0.1:8000 (page /, API /score and /invocations); the Dockerfile runs the same.
serve: setup
	$(BIN)/rotmnist serve

## Install the pre-commit hook (ruff + fast tests).
hooks: setup
	$(BIN)/pre-commit install

## ruff, and the import-linter contracts of pyproject.toml (layers pointing down, independent stages, no cycles).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/serve.py

## The API documentation (MkDocs + mkdocstrings, from the docstrings) built into site/; fails on any warning.
docs: setup
	$(BIN)/mkdocs build --strict

## The API documentation served with live reload on http://127.0.0.1:8001.
docs-serve: setup
	$(BIN)/mkdocs serve -a 127.0.0.1:8001
