# qana-keras: every target bootstraps .venv itself (Python 3.11), so a fresh clone needs nothing else.
# Real data: set QANA_DATA_DIR (default data/ham10000; this workplace keeps a copy in ../shared/data/ham10000).

PYTHON ?= python3.11
VENV := .venv
QANA := $(VENV)/bin/qana
STAMP := $(VENV)/.installed
SHARED_DATA := $(abspath ../shared/data/ham10000)
export QANA_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/HAM10000_metadata.csv),$(SHARED_DATA),$(CURDIR)/data/ham10000)
SHARED_PAD := $(abspath ../shared/data/pad_ufes_20_partial)
export QANA_PAD_UFES_DIR ?= $(if $(wildcard $(SHARED_PAD)/metadata.csv),$(SHARED_PAD),$(CURDIR)/data/pad_ufes_20)
SHARED_ISIC := $(abspath ../shared/data/isic2019_partial)
export QANA_ISIC2019_DIR ?= $(if $(wildcard $(SHARED_ISIC)/ISIC_2019_Training_GroundTruth.csv),$(SHARED_ISIC),$(CURDIR)/data/isic2019)
# `make report` rewrites the marked blocks of these files: each README/docs block in the one file holding its markers.
REPORT_FLAGS ?= --model-card MODEL_CARD.md --readme README.md $(sort $(wildcard docs/*.md))
# The default model: ImageNet Lite0 cut after block 10 at 112 px, HAM10000 + ISIC 2019 (docs/pretrained.md).
# The paper's QANA on HAM10000 alone: make all CONFIG=configs/qana.yaml RUN=runs/qana
RUN ?= runs/lite0-b10-112-isic
CONFIG ?= configs/lite0-b10-112-isic.yaml
CROP_OUT ?= reports/crop/$(notdir $(RUN))
ifeq ($(QUICK),1)
# No --overwrite: it would move the last smoke run aside to runs/qana-quick.replaced-* on every `make all QUICK=1`.
# The train recipe deletes runs/qana-quick itself instead (the project's own scratch folder, only when RUN is it),
# so a RUN=... given on the command line is never replaced by a smoke run: train refuses a folder holding a run.
QUICK_SCRATCH := runs/qana-quick
TRAIN_FLAGS := --quick
CONVERT_FLAGS := --quick --overwrite
DEPLOY_FLAGS := --quick
RUN := runs/qana-quick
endif

.PHONY: all help venv test test-slow data validate split cache train train-paper resume convert deploy-akida export hardware-table predict evaluate bench report head head-ablation crop hardware-cost ablations clean

all: train convert deploy-akida ## the main job: train, quantize + convert, run on Akida (RUN)

help: ## list the targets
	@grep -E '^[a-z0-9%-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'
	@echo "  variables: QANA_DATA_DIR=$(QANA_DATA_DIR) RUN=$(RUN) CONFIG=$(CONFIG) QUICK=1 (smoke profile)"

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP) ## create or refresh .venv (Python 3.11, pinned BrainChip stack)

# Most of a test's time is quantizeml rebuilding Keras graphs in one Python thread, so two workers use both cores;
# tests of one module stay on one worker (tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP) ## run the default test suite on TEST_WORKERS processes (see README for its time)
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

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

train: $(STAMP) ## train CONFIG into RUN (QUICK=1: a few-minute smoke run)
	$(if $(and $(QUICK_SCRATCH),$(filter $(QUICK_SCRATCH),$(RUN))),rm -rf $(QUICK_SCRATCH))
	$(QANA) train --config $(CONFIG) --run $(RUN) $(TRAIN_FLAGS)

train-paper: $(STAMP) ## train the paper's gated QANA into runs/qana-paper
	$(QANA) train --config configs/qana-paper.yaml --run runs/qana-paper

resume: $(STAMP) ## continue a killed training run: make resume RUN=runs/NAME
	$(QANA) train --resume $(RUN)

convert: $(STAMP) ## quantize (8-bit) and convert RUN to Akida
	$(QANA) convert --run $(RUN) $(CONVERT_FLAGS)

deploy-akida: $(STAMP) ## run RUN on an Akida board, else map it (DEVICE=akd1000|six-nodes-v2|...) and simulate
	$(QANA) deploy --run $(RUN) $(if $(DEVICE),--device $(DEVICE)) $(DEPLOY_FLAGS)

export: $(STAMP) ## RUN's float model as a fully-int8 TFLite model for CPUs/MCUs (not Akida), test metrics in export.json
	$(QANA) export --run $(RUN) $(EXPORT_FLAGS)

hardware-table: $(STAMP) ## every published .fbz x every standard Akida device -> reports/hardware/, README block
	$(QANA) hardware-table --readme README.md

IMAGES ?=
MODEL ?= models/qana/qana.fbz
predict: $(STAMP) ## classify images: make predict IMAGES=file-or-folder [MODEL=models/qana/qana.fbz]
	@test -n "$(IMAGES)" || { echo "error: pass IMAGES=an image or a folder, e.g. make predict IMAGES=photos/" >&2; exit 2; }
	$(QANA) predict $(IMAGES) --model $(MODEL)

evaluate: $(STAMP) ## evaluate RUN's Akida model on the test split
	$(QANA) evaluate --model $(RUN) --data $(QANA_DATA_DIR) --split test --json $(RUN)/evaluate_test.json

bench: $(STAMP) ## CPU speed of float, quantized and Akida-simulator models of RUN
	$(QANA) bench --run $(RUN)

report: $(STAMP) ## reports/ (Markdown + PNG) from models/*/ JSON and fresh evaluations; MODEL_CARD.md numbers
	$(QANA) report $(REPORT_FLAGS)

head: $(STAMP) ## refit RUN's head with embedding-space SMOTE; writes <variant>_head_float.h5 beside it
	$(QANA) head --run $(RUN)

head-ablation: $(STAMP) ## head ablation (as trained / refit / class weights / SMOTE +- safe anchors), float and Akida
	$(VENV)/bin/python scripts/head_ablation.py $(RUN) --akida

crop: $(STAMP) ## saliency crop + 2x2 tiling vs whole image and mask crop for RUN, with heat-map overlays (CROP_OUT)
	$(QANA) crop --run $(RUN) --json $(CROP_OUT)/crop_eval.json --overlays $(CROP_OUT)

ABLATIONS ?= qana qana-no-sa-eca qana-no-se qana-no-attention qana-32 qana-48 qana-96 akidanet-0.25 akidanet-0.5 plain-cnn plain-cnn-96 plain-cnn-128 plain-cnn-24np
ABLATION_EPOCHS ?= 60
# e.g. ABLATION_FLAGS="--reference-run runs/qana-e60" pairs against an existing run instead of runs/ablations/qana
ABLATION_FLAGS ?=

hardware-cost: $(STAMP) ## params, MACs, NPs, one pass, program size of every ablation/baseline on Akida 2.0 (untrained)
	$(QANA) hardware-cost --json runs/ablations/hardware_cost.json --markdown runs/ablations/hardware_cost.md

ablations: $(STAMP) ## train+convert+evaluate ABLATIONS into runs/ablations/<name>.json (one: make ablation-<name>)
	$(VENV)/bin/python scripts/ablations.py $(ABLATIONS) --epochs $(ABLATION_EPOCHS) $(ABLATION_FLAGS)

ablation-%: $(STAMP) ## one ablation of ABLATIONS, e.g. make ablation-qana-32
	$(VENV)/bin/python scripts/ablations.py $* --epochs $(ABLATION_EPOCHS) $(ABLATION_FLAGS)

# Quick mode (synthetic fixture, tiny model, 1 epoch; what CI runs) starts from an empty runs/nb-quick. FULL=1: the
# real data (QANA_DATA_DIR) and the committed models/qana, outputs written back into notebooks/*.ipynb.
.PHONY: notebooks
notebooks: $(STAMP) ## execute notebooks/ in quick mode and fail on any failed assertion; FULL=1: real data, save outputs
	$(if $(filter 1,$(FULL)),,rm -rf runs/nb-quick)
	QANA_NOTEBOOK_QUICK=$(if $(filter 1,$(FULL)),0,1) $(VENV)/bin/python -m pytest -p no:cacheprovider --nbmake \
	  $(if $(filter 1,$(FULL)),--overwrite --nbmake-timeout=7200,--nbmake-timeout=900) notebooks/

AKD7_CONFIG ?= configs/akd1000-7class.yaml
AKD7_RUN ?= runs/akd1000-7class
.PHONY: akd1000-7class
akd1000-7class: $(STAMP) ## 7 classes on Akida 1.0 (plain CNN, 4 bits, distilled): train, convert, deploy (AKD7_CONFIG, AKD7_RUN, DEVICE=)
	$(QANA) train --config $(AKD7_CONFIG) --run $(AKD7_RUN)
	$(QANA) convert --run $(AKD7_RUN) --bits 4 --qat-epochs 10 --qat-lr 1e-4
	$(QANA) deploy --run $(AKD7_RUN) --bits 4 $(if $(DEVICE),--device $(DEVICE))

.PHONY: calibrate learn train-akd1000 convert-akd1000 edge-learn
AKD1000_RUN ?= runs/qana-akd1000
train-akd1000: $(STAMP) ## train qana-akd1000 (Akida 1.0, 5 classes) into AKD1000_RUN
	$(QANA) train --config configs/qana-akd1000.yaml --run $(AKD1000_RUN)

convert-akd1000: $(STAMP) ## 4-bit Akida 1.0 conversion of AKD1000_RUN (spike layer tuned to fire, 1 bit)
	$(QANA) convert --run $(AKD1000_RUN) --bits 4

edge-learn: $(STAMP) ## Akida 1.0 on-chip learning protocols on AKD1000_RUN (class-incremental, PAD-UFES-20, SCC)
	$(QANA) edge-learn --run $(AKD1000_RUN) --pad-ufes $(QANA_PAD_UFES_DIR)

calibrate: $(STAMP) ## decision offsets (val macro-F1) folded into RUN's head/dense + Akida; temperature, ECE, reliability PNG
	$(QANA) calibrate --run $(RUN)

learn: $(STAMP) ## refit RUN's Akida readout on Akida features: PAD-UFES-20 domain update, SCC as 8th class
	$(QANA) learn --run $(RUN) --pad-ufes $(QANA_PAD_UFES_DIR)

clean: ## remove caches (keeps runs/ and .venv)
	rm -rf cache .pytest_cache
