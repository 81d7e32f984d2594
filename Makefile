# annlab: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
PORT ?= 5000
# `make serve`'s model; empty: the champion of params.yaml's dataset (`annlab champion`)
MODEL ?=
# Grid cells trained at once by `make repro` (warm local workers), experiments at once by
# `make sweep`: one per core.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# pytest-xdist workers for `make test`: a test mostly waits on one subprocess at a time (a
# cold stage, a server), so one worker per core keeps the cores busy. Each test file stays on
# one worker (--dist loadfile), so a module's shared fixture (a trained grid) is built once.
TEST_JOBS ?= $(JOBS)
# Where `make repro` trains the stale cells: auto (a Ray cluster when RAY_ADDRESS is set, else
# JOBS local workers), local, ray, or dvc (JOBS cold `dvc repro` processes).
EXECUTOR ?= auto
# `make sweep`: one queued experiment per value (space-separated overrides, comma-separated values).
SET ?= optimizers.sgd.learning_rate=0.05,0.1

# Everything below (and DVC queue workers started from here) finds dvc, mlflow and python in .venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 3
TRACKING_URI = $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}
# `make server`: a shared tracking server. A PostgreSQL URI works as the backend too
# (postgresql://user:pass@db/mlflow, with psycopg2 installed); HOST=0.0.0.0 opens it to the network.
HOST ?= 127.0.0.1
# MLflow 3's server also starts a job runner and 7 huey consumers for its GenAI jobs, which annlab
# never submits: 15 processes and ~3 GiB instead of 7 and ~1.3 GiB. MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true
# in the environment turns them back on.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
SERVER_STORE ?= sqlite:///$(CURDIR)/mlflow-server/mlflow.db
SERVER_ARTIFACTS ?= $(CURDIR)/mlflow-server/artifacts

.PHONY: help venv repro sweep sync bench test test-fast lint hooks format ui serve server clean

help: ## List the targets with their purpose
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "annlab needs Python 3.11+ (found $$($(PYTHON) --version)); set PYTHON=..." >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## Create .venv from the pinned requirements (done by the other targets)

repro: venv ## Run the pipeline: only what changed; stale cells on JOBS warm workers (or Ray: RAY_ADDRESS)
	@# Before DVC itself reads params.yaml to expand the grid, so even a broken grid gets our message.
	@PYTHONPATH=src python -m annlab.stages.validate --params params.yaml --params-only
	PYTHONPATH=src python -m annlab.run.repro --jobs $(JOBS) --executor $(EXECUTOR)

sweep: venv ## Queue one experiment per value of SET (key=v1,v2), run JOBS at a time, show them
	@PYTHONPATH=src python -m annlab.stages.validate --params params.yaml --params-only
	dvc exp run --queue $(foreach s,$(SET),-S '$(s)')
	dvc queue start -j $(JOBS)
	@echo "waiting for the queue; follow one with: dvc queue logs -f <name>"
	@while dvc queue status | grep -qwE 'Queued|Running'; do sleep 10; done
	dvc queue status
	@# the experiments' headline metrics (reports/summary.json) and the params that differ
	dvc exp show --md --only-changed \
		--drop 'Created|Executor|^models|^data/|^src/|^params.yaml$$|^reports/(eval|history|figures|metrics)|:(cells|runs|tested_cells)$$'

sync: venv ## Upload to MLflow the runs it lacks (trained with ANNLAB_OFFLINE=1 or while the server was down)
	annlab sync

bench: venv ## Benchmark annlab beside the tutorial's code (about 23 min); writes reports/benchmarks.md
	python benchmarks/bench.py

test: venv ## The full test suite, as CI runs it (end-to-end pipelines, servers, bench smoke): TEST_JOBS workers
	python -m pytest -n $(TEST_JOBS) --dist loadfile

test-fast: venv ## The quick loop (under 2 min): tests that run no pipeline, server or benchmark
	python -m pytest -n $(TEST_JOBS) --dist loadfile -m "not slow"

lint: venv ## Check style (ruff) and the layer rule between annlab's parts (import-linter, pyproject.toml)
	ruff check src tests benchmarks && ruff format --check src tests benchmarks
	PYTHONPATH=src lint-imports --no-cache

hooks: venv ## Install the git pre-commit hook that runs `make lint`'s checks on each commit
	pre-commit install

format: venv ## Format the code with ruff
	ruff check --fix src tests benchmarks && ruff format src tests benchmarks

ui: venv ## Serve the MLflow UI on 127.0.0.1:$(PORT) over the project's store
	mlflow ui --backend-store-uri "$(TRACKING_URI)" --host 127.0.0.1 --port $(PORT)

serve: venv ## Serve a model on 127.0.0.1:$(PORT) for raw inputs (MODEL, default models:/annlab-<dataset>@champion)
	@model="$(or $(MODEL),$$(annlab champion))" && echo "serving $$model" && \
	MLFLOW_TRACKING_URI="$(TRACKING_URI)" mlflow models serve -m "$$model" \
		--host 127.0.0.1 --port $(PORT) --env-manager local

server: venv ## A shared MLflow tracking server (127.0.0.1:5000; HOST, PORT): database backend, proxied artifacts
	@mkdir -p mlflow-server
	@echo "point the pipeline at it: export MLFLOW_TRACKING_URI=http://$(HOST):$(PORT)"
	mlflow server --backend-store-uri "$(SERVER_STORE)" --artifacts-destination "$(SERVER_ARTIFACTS)" \
		--serve-artifacts --host $(HOST) --port $(PORT)

clean: ## Remove Python caches (not data, models or the MLflow store)
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
