# tipim: `make help` lists the targets. Every target sets itself up on a fresh clone.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS_STAMP := $(VENV)/.models
LFW ?= ../shared/data/lfw
LFW_LISTS ?= ../shared/data/lfw-lists
ALIGNED ?= data/lfw-aligned
PROBES ?=
STAGES ?= table3 schedule ensemble gamma
HELD ?=
ENSEMBLE_EVERY ?= 1
EVALUATE ?= 1
PROTECT_ARGS ?=

.DEFAULT_GOAL := help

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(MODELS_STAMP): $(STAMP) src/tipim/zoo/registry.py
	$(BIN)/tipim models fetch
	touch $@

setup: $(MODELS_STAMP) ## create .venv, install the package, fetch and verify model weights
	@$(BIN)/tipim models list

demo: setup ## protect the packaged sample faces with TIP-IM on arcface-mbf (runs/demo)
	$(BIN)/tipim data demo --out data/demo
	$(BIN)/tipim protect --config configs/protect.yaml --config configs/method/tipim.yaml --config configs/demo.yaml

bench: setup ## engine vs the official algorithm's loop, ablations, the zoo's graph vs onnx2torch's, seconds per photo by preset and against issue 25's filing commit, 12 MP detection (benchmarks/results)
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_prelu.py
	$(BIN)/python benchmarks/bench_presets.py
	$(BIN)/python benchmarks/bench_against.py 01144fd
	$(BIN)/python benchmarks/bench_detect.py

adaptive: setup ## issue 24's adaptive attackers: protect 240 photos of people outside every test set, train a purifier, an adapted recogniser and a student on them (~30 min on 2 cores; runs/adaptive)
	$(BIN)/python benchmarks/adaptive_attack.py prepare --lfw $(LFW) --out runs/adaptive/train
	$(BIN)/tipim protect runs/adaptive/train/photos --out runs/adaptive/train/run --check none
	$(BIN)/python benchmarks/adaptive_attack.py pairs --photos runs/adaptive/train/photos --run runs/adaptive/train/run
	for c in purifier adapted student; do $(BIN)/python -m tipim.adaptive fit --config configs/adaptive/$$c.yaml || exit 1; done

test: setup ## run the test suite (CPU only; about 5 minutes on 2 cores)
	$(BIN)/pytest -q --durations=12

test-quick: setup ## the tests not marked slow (no CLI runs, DDP or notebook): well under a minute
	$(BIN)/pytest -q -m "not slow"

align-lfw: setup ## align all of LFW from $(LFW) into $(ALIGNED)
	$(BIN)/tipim data align --src $(LFW) --out $(ALIGNED)

verify: align-lfw ## LFW 10-fold verification of every zoo model; writes results/lfw_verification.*
	$(BIN)/tipim models verify --aligned $(ALIGNED) --pairs $(LFW_LISTS)/pairs.txt --out results

reproduce: align-lfw ## the paper's LFW tables (PROBES=100 for a seeded subset; STAGES to pick parts; `tipim reproduce --help`)
	$(BIN)/tipim reproduce --aligned $(ALIGNED) --stages $(STAGES) --ensemble-every $(ENSEMBLE_EVERY) \
	  $(if $(PROBES),--probes $(PROBES)) $(if $(HELD),--held $(HELD)) $(if $(filter 0,$(EVALUATE)),--no-evaluate) \
	  $(if $(PROTECT_ARGS),--protect-args="$(PROTECT_ARGS)")

clean: ## remove caches and run outputs (keeps .venv and fetched models)
	rm -rf .pytest_cache runs outputs lightning_logs wandb

.PHONY: help setup demo bench adaptive test test-quick align-lfw verify reproduce clean
