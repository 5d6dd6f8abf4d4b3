# The README's commands and the docs' make targets. Everything the project needs is installed from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The project's own byte-code, written before the pipeline and the tests: pip compiles the dependencies, but where
# PYTHONDONTWRITEBYTECODE is set (many CI images and containers set it) every stage, server and test subprocess would
# compile src/ again (about 0.5 s each).
BYTECODE := $(BIN)/python -m compileall -q -j 0 src tests benchmarks
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

# `make postgres`: a local PostgreSQL for parallel sweep workers and the tracking server (trust auth on loopback:
# for trying things out on one machine; a team's server needs passwords). Debian keeps initdb outside PATH, and
# initdb refuses to run as root: as root the cluster belongs to the `postgres` user (or `nobody`).
PG_BIN  ?= $(firstword $(wildcard /usr/lib/postgresql/*/bin) $(patsubst %/,%,$(dir $(shell command -v initdb))))
PG_DIR  ?= $(CURDIR)/.postgres
PG_PORT ?= 5433
PG_USER := $(shell id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
PG_RUN  := $(if $(filter 0,$(shell id -u)),runuser -u $(PG_USER) --,)
PG_URL  := postgresql://postgres@127.0.0.1:$(PG_PORT)
# `make server`: the tracking server's store; the SQLite file unless set, e.g. MLFLOW_BACKEND=$(PG_URL)/mlflow
MLFLOW_BACKEND ?= sqlite:///$(CURDIR)/mlflow.db
MLFLOW_PORT    ?= 5000
# `make server AUTH=1`: MLflow's basic-auth app with config/mlflow-auth.ini (users in mlflow-auth.db). The first start
# creates the user admin with the password in MLFLOW_AUTH_ADMIN_PASSWORD. The CSRF key of the login pages is
# MLFLOW_FLASK_SERVER_SECRET_KEY, or a random one per start (set it when several servers share the users).
MLFLOW_AUTH_CONFIG_PATH ?= $(CURDIR)/config/mlflow-auth.ini
SERVER_APP := $(if $(filter 1,$(AUTH)),--app-name basic-auth)
SERVER_ENV := $(if $(filter 1,$(AUTH)),MLFLOW_AUTH_CONFIG_PATH=$(MLFLOW_AUTH_CONFIG_PATH) \
	MLFLOW_FLASK_SERVER_SECRET_KEY="$${MLFLOW_FLASK_SERVER_SECRET_KEY:-$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(32))')}")

# `make quick`: the pipeline with config/quick.yaml's small settings in the workspace .quick/ (its own data, MLflow
# store and registry). QUICK=1 points `make serve` and `make ui` at that workspace instead of the repository.
QUICK_DIR := .quick
WORKSPACE := $(if $(filter 1,$(QUICK)),$(CURDIR)/$(QUICK_DIR),$(CURDIR))

.PHONY: setup quick repro test test-fast ui serve server postgres postgres-stop hooks lint bench docs docs-serve

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## Run the whole pipeline (download -> ... -> monitor) and push the data to the local DVC remote.
repro: setup
	@$(BYTECODE)
	$(BIN)/dvc repro
	$(BIN)/dvc push
	@echo "dvc, rotmnist and mlflow live in $(VENV)/bin: run 'source $(VENV)/bin/activate' in a new shell before the documented commands."

## The pipeline up to the gate with small settings in .quick/: a champion to serve within 3 minutes (after set-up).
quick: setup
	$(BIN)/rotmnist workspace $(QUICK_DIR) --overlay config/quick.yaml --repro monitor
	@cd $(QUICK_DIR) && dvc metrics show metrics/train.json metrics/monitor.json
	@echo
	@echo "The quick champion is registered in $(QUICK_DIR)/mlflow.db. Next:"
	@echo "  make serve QUICK=1   # serve it: draw a digit on http://127.0.0.1:8000"
	@echo "  make ui QUICK=1      # its runs, models and plots in the MLflow UI on http://127.0.0.1:5000"
	@echo "  make repro           # the full pipeline (about 40 minutes on 2 cores): the repository's own champion"

## Run the test suite with a coverage summary, on every core (pytest-xdist: the tests of a module on one worker).
test: setup
	@$(BYTECODE)
	$(BIN)/python -m pytest -n auto --dist loadfile

## The fast tests only (what the pre-commit hook runs).
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" -q --no-cov

## MLflow UI on http://127.0.0.1:5000 over the repository's store; prints the address of the experiment's runs page.
ui: setup
	@cd $(WORKSPACE) && python -c "$$UI_ADDRESS" '$(WORKSPACE)/mlflow.db'
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(WORKSPACE)/mlflow.db \
		--default-artifact-root $(WORKSPACE)/mlartifacts --host 127.0.0.1 --port 5000

## The champion over HTTP on http://127.0.0.1:8000 (page /, API /score and /invocations); the Dockerfile runs the same.
serve: setup
	cd $(WORKSPACE) && rotmnist serve

## MLflow tracking server on http://127.0.0.1:$(MLFLOW_PORT): store $(MLFLOW_BACKEND), artifacts proxied into mlartifacts/.
## Loopback only, MLflow's security middleware on (Host and CORS checks); docs/scaling-out.md says how to expose it.
## AUTH=1: with MLflow's logins (basic-auth app); the first start needs MLFLOW_AUTH_ADMIN_PASSWORD, 12+ characters.
## MLflow's job runner (GenAI scorers and trace roll-ups, nine more processes at start) is off: nothing here uses it.
server: setup
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(SERVER_ENV) $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) --backend-store-uri $(MLFLOW_BACKEND) \
		--artifacts-destination $(CURDIR)/mlartifacts $(SERVER_APP)

## A local PostgreSQL on 127.0.0.1:$(PG_PORT) in .postgres/ with databases optuna and mlflow (make postgres-stop).
postgres:
	@test -x "$(PG_BIN)/initdb" || { echo "make postgres: initdb not found: install the postgresql package"; exit 1; }
	@mkdir -p $(PG_DIR)
	@if [ ! -d $(PG_DIR)/data ]; then \
		$(if $(PG_RUN),chown $(PG_USER) $(PG_DIR) &&) $(PG_RUN) $(PG_BIN)/initdb -D $(PG_DIR)/data -U postgres \
			--auth=trust -E UTF8 >$(PG_DIR)/initdb.log; fi
	@$(PG_RUN) $(PG_BIN)/pg_ctl -D $(PG_DIR)/data status >/dev/null || $(PG_RUN) $(PG_BIN)/pg_ctl -D $(PG_DIR)/data \
		-l $(PG_DIR)/server.log -w -o "-p $(PG_PORT) -c listen_addresses=127.0.0.1 -k $(PG_DIR)" start
	@for db in optuna mlflow; do $(PG_BIN)/createdb -h 127.0.0.1 -p $(PG_PORT) -U postgres $$db 2>/dev/null || true; done
	@echo "Optuna:  export ROTMNIST_OPTUNA_STORAGE=$(PG_URL)/optuna"
	@echo "MLflow:  make server MLFLOW_BACKEND=$(PG_URL)/mlflow   (then export MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT))"

postgres-stop:
	$(PG_RUN) $(PG_BIN)/pg_ctl -D $(PG_DIR)/data -w stop

## Install the pre-commit hook (ruff + fast tests).
hooks: setup
	$(BIN)/pre-commit install

## ruff, and the import-linter contracts of pyproject.toml (layers pointing down, independent stages, no cycles).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m benchmarks.augment
	$(BIN)/python -m benchmarks.train
	$(BIN)/python -m benchmarks.serve

## The API documentation (MkDocs + mkdocstrings, from the docstrings) built into site/; fails on any warning.
docs: setup
	$(BIN)/mkdocs build --strict

## The API documentation served with live reload on http://127.0.0.1:8001.
docs-serve: setup
	$(BIN)/mkdocs serve -a 127.0.0.1:8001
