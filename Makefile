# The README's commands. Everything the project needs is installed from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# dvc.yaml's stages call `rotmnist`: put the venv's console scripts first on PATH for every recipe.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast ui hooks lint bench clean-stores

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

## MLflow UI on http://127.0.0.1:5000 over the repository's store.
ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port 5000

## Install the pre-commit hook (ruff + fast tests).
hooks: setup
	$(BIN)/pre-commit install

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/augment.py
	$(BIN)/python benchmarks/train.py
