# qana-keras: every target bootstraps .venv itself (Python 3.11), so a fresh clone needs nothing else.
# Real data: set QANA_DATA_DIR (default data/ham10000; this workplace keeps a copy in ../shared/data/ham10000).

PYTHON ?= python3.11
VENV := .venv
QANA := $(VENV)/bin/qana
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data/ham10000)
export QANA_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/HAM10000_metadata.csv),$(SHARED_DATA),$(CURDIR)/data/ham10000)
RUN ?= runs/qana
CONFIG ?= configs/qana.yaml
ifeq ($(QUICK),1)
TRAIN_FLAGS := --quick --overwrite
RUN := runs/qana-quick
endif

.PHONY: all help venv test test-slow data validate split cache train train-paper resume convert deploy-akida evaluate bench clean

all: train convert deploy-akida ## the main job: train, quantize + convert, run on Akida (RUN)

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo "  variables: QANA_DATA_DIR=$(QANA_DATA_DIR) RUN=$(RUN) CONFIG=$(CONFIG) QUICK=1 (smoke profile)"

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP) ## create or refresh .venv (Python 3.11, pinned BrainChip stack)

test: $(STAMP) ## run the default test suite (< 15 min on 2 cores)
	$(VENV)/bin/python -m pytest

test-slow: $(STAMP) ## run the slow tests (training on real data, notebooks)
	$(VENV)/bin/python -m pytest -m slow

data: $(STAMP) ## download HAM10000 into data/ham10000 (needs internet), then validate it
	$(QANA) data download --dest data/ham10000
	$(QANA) data validate --data data/ham10000

validate: $(STAMP) ## check every metadata row and image of QANA_DATA_DIR
	$(QANA) data validate

split: $(STAMP) ## re-create the committed lesion-level split (unchanged if identical)
	$(QANA) data split --seed 42

cache: $(STAMP) ## decode and resize all images into cache/
	$(QANA) data cache

train: $(STAMP) ## train QANA into RUN (QUICK=1: a few-minute smoke run)
	$(QANA) train --config $(CONFIG) --run $(RUN) $(TRAIN_FLAGS)

train-paper: $(STAMP) ## train the paper's gated QANA into runs/qana-paper
	$(QANA) train --config configs/qana-paper.yaml --run runs/qana-paper

resume: $(STAMP) ## continue a killed training run: make resume RUN=runs/qana
	$(QANA) train --resume $(RUN)

convert: $(STAMP) ## quantize (8-bit) and convert RUN to Akida
	$(QANA) convert --run $(RUN)

deploy-akida: $(STAMP) ## map RUN on Akida devices and run the test split on Akida
	$(QANA) deploy --run $(RUN)

evaluate: $(STAMP) ## evaluate RUN's Akida model on the test split
	$(QANA) evaluate --model $(RUN)/qana.fbz --data $(QANA_DATA_DIR) --split test --json $(RUN)/evaluate_test.json

bench: $(STAMP) ## CPU speed of float, quantized and Akida-simulator models of RUN
	$(QANA) bench --run $(RUN)

clean: ## remove caches (keeps runs/ and .venv)
	rm -rf cache .pytest_cache
