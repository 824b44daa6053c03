# Defect detection, from raw images to served models. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REQS   := datatools/requirements.txt asset/requirements.txt asset/requirements-runtime.txt asset/requirements-train.txt \
          requirements-dev.txt \
          requirements-docs.txt
PROJECTS := datatools/pyproject.toml $(wildcard asset/pyproject.toml)

RAW  ?=
OUT  ?= data
DEMO ?= out/demo
ARGS ?=

.PHONY: help setup test test-fast demo bench bench-smoke lint lock serve clean \
        datatool-dagm datatool-kolektorsdd datatool-kolektorsdd2 datatool-synthetic datatool-folder

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_ -]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): $(REQS) $(PROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r datatools/requirements.txt -r asset/requirements.txt -r requirements-dev.txt \
	    -r requirements-docs.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e ./datatools $(if $(wildcard asset/pyproject.toml),-e ./asset)
	@touch $(STAMP)

setup: $(STAMP) ## create .venv with every pinned dependency (idempotent)

test: setup ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest

test-fast: setup ## the edit loop: every test but the slow ones (training, exports, pipelines), under 2 minutes
	$(BIN)/python -m pytest -m "not slow and not containers and not scaleout" $(ARGS)

demo: setup ## end to end on the embedded synthetic dataset: generate, convert, validate, report, ...
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO)

QUICK ?=
bench: setup ## benchmarks, each against a baseline measured in the same run; writes README's performance table (QUICK=1: smoke run)
	PATH="$(abspath $(BIN)):$$PATH" QUICK="$(QUICK)" bash scripts/bench.sh $(if $(QUICK),out/bench-smoke,out/bench)

bench-smoke: setup ## every benchmark script end to end at tiny sizes (checks the rows, not the timings; make test runs it too)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/bench.sh out/bench-smoke --quick

MODEL ?= $(DEMO)/model
HOST  ?= 127.0.0.1
PORT  ?= 8000
serve: setup ## serve a model over HTTP until Ctrl-C: make serve [MODEL=out/demo/model] [PORT=8000] (page at /)
	@test -f "$(MODEL)/model.json" || { echo "error: no model at $(MODEL): run make demo first, or set MODEL=..." >&2; exit 2; }
	$(BIN)/asset serve --model "$(MODEL)" --backend onnxruntime --host $(HOST) --port $(PORT)

lint: setup ## ruff over the Python code
	$(BIN)/ruff check datatools asset tests scripts

lock: ## re-resolve the images' hash locks (*/requirements.lock) against PyPI after a requirement file changed
	$(PYTHON) ci/lock.py

# Containers. Builds need BuildKit (RUN --mount): Docker >= 23, or DOCKER_BUILDKIT=1 with 20.10
# (a client that refuses BuildKit without buildx can be swapped: make images DOCKER=/usr/bin/docker).
# NETWORK=none proves an offline build (with WHEELS); ci/engine.py's engine has no default bridge.
DOCKER    ?= docker
REGISTRY  ?= defect
TAG       ?= dev
BASE      ?=
WHEELS    ?=
NATIVE    ?=
NETWORK   ?=
DATASETS  := dagm kolektorsdd kolektorsdd2 synthetic folder
PLATFORMS := x86-cuda x86-cpu jetson rpi4
BUILD      = DOCKER_BUILDKIT=1 $(DOCKER) build $(if $(NETWORK),--network $(NETWORK)) \
             $(if $(BASE),--build-arg BASE=$(BASE)) $(if $(WHEELS),--build-arg WHEELS=$(WHEELS))
ARCH_x86-cuda := linux/amd64
ARCH_x86-cpu  := linux/amd64
ARCH_jetson   := linux/arm64
ARCH_rpi4     := linux/arm64

.PHONY: images image-asset test-containers $(addprefix image-,$(PLATFORMS)) $(addprefix image-datatool-,$(DATASETS))

images: $(addprefix image-datatool-,$(DATASETS)) image-asset $(addprefix image-,$(PLATFORMS)) ## build every image (BASE=..., WHEELS=... for offline builds, TAG=dev)

image-datatool-dagm image-datatool-kolektorsdd image-datatool-kolektorsdd2 image-datatool-synthetic image-datatool-folder: image-datatool-%: ## build one datatool image, e.g. make image-datatool-dagm
	$(BUILD) --build-arg DATASET=$* -t $(REGISTRY)/datatool-$*:$(TAG) datatools

image-asset: ## build the full asset image (train, export, serve; torch included)
	$(BUILD) -f asset/Dockerfile -t $(REGISTRY)/asset:$(TAG) .

image-x86-cuda image-x86-cpu image-jetson image-rpi4: image-%: ## build one platform image: make image-x86-cpu (arm64 ones under QEMU)
	$(BUILD) --platform $(ARCH_$*) -f platforms/$*/Dockerfile -t $(REGISTRY)/asset:$*-$(TAG) .

test-containers: setup ## build and run the real images (starts a private Docker engine as root when none is reachable)
	$(BIN)/python -m pytest -m containers tests/containers --timeout 3600 $(ARGS)

.PHONY: test-scaleout
test-scaleout: setup ## SLURM (a private slurmctld + slurmd + munged; apt-installs slurm-wlm, munge as root) and torchrun DDP tests
	$(BIN)/python -m pytest -m scaleout tests/scaleout --timeout 1800 $(ARGS)

# A datatool runs in its container when an engine answers, with the host's Python otherwise (or NATIVE=1).
DATATOOL_IMAGE = $(REGISTRY)/datatool-$*:$(TAG)
define run_datatool
	@if [ -z "$(NATIVE)" ] && $(DOCKER) info >/dev/null 2>&1; then \
	  $(DOCKER) image inspect $(DATATOOL_IMAGE) >/dev/null 2>&1 || $(MAKE) --no-print-directory image-datatool-$*; \
	  mkdir -p "$(OUT)" && echo "== datatool-$* in its container ($(DATATOOL_IMAGE)), output in $(OUT)"; \
	  $(DOCKER) run --rm --network none --user "$$(id -u):$$(id -g)" -e HOME=/tmp \
	    $(if $(RAW),-v "$(abspath $(RAW)):/raw$(1)") -v "$(abspath $(OUT)):/data" \
	    $(DATATOOL_IMAGE) $(if $(RAW),--raw /raw) --out /data $(ARGS); \
	else \
	  [ -n "$(NATIVE)" ] || echo "note: no Docker engine answers ($(DOCKER) info failed): converting with the host's Python instead"; \
	  $(MAKE) --no-print-directory setup && $(BIN)/datatool convert $* $(if $(RAW),--raw "$(RAW)") --out "$(OUT)" $(ARGS); \
	fi
endef

datatool-dagm datatool-kolektorsdd datatool-kolektorsdd2: datatool-%: ## convert in its container: make datatool-dagm RAW=/path/to/DAGM [OUT=data] [ARGS=...] [NATIVE=1]
	@test -n "$(RAW)" || { echo "error: set RAW=/path/to/the/raw/dataset" >&2; exit 2; }
	@test -d "$(RAW)" || { echo "error: RAW=$(RAW) is not a folder" >&2; exit 2; }
	$(call run_datatool,:ro)

datatool-folder: datatool-%: ## your own images (RAW/good/, RAW/defective/, masks optional): make datatool-folder RAW=/path/to/parts [OUT=data] [ARGS="--masks masks --mask-suffix _mask"]
	@test -n "$(RAW)" || { echo "error: set RAW=/path/to/your/images (holding good/ and defective/)" >&2; exit 2; }
	@test -d "$(RAW)" || { echo "error: RAW=$(RAW) is not a folder" >&2; exit 2; }
	$(call run_datatool,:ro)

datatool-synthetic: datatool-%: ## generate and convert the synthetic DAGM-like set: make datatool-synthetic [RAW=keep/raw/here] [OUT=data]
	$(if $(RAW),@mkdir -p "$(RAW)")
	$(call run_datatool,)

clean: ## remove generated outputs (keeps .venv)
	rm -rf out .pytest_cache

.PHONY: pipeline
pipeline: ## the CI pipeline on this machine (lint, unit, images: build, test, push to a loopback registry): make pipeline [ARGS="--units x86-cpu-amd64 --offline"]
	bash ci/run-local.sh $(ARGS)

.PHONY: sweep-demo
SWEEP ?= out/sweep-demo
sweep-demo: setup ## a small real sweep (6 mobile-encoder models on the synthetic set, CPU, ~20 min) and its report: make sweep-demo [SWEEP=out/sweep-demo]
	HF_HUB_OFFLINE=1 PATH="$(abspath $(BIN)):$$PATH" SWEEP="$(SWEEP)" bash scripts/sweep_demo.sh

.PHONY: train-dagm train-kolektorsdd train-kolektorsdd2
train-dagm train-kolektorsdd train-kolektorsdd2: train-%: setup ## train the dataset's recipe (asset/configs/DATASET.yaml, 25 min on 2 CPU cores): make train-kolektorsdd DATA=data/kolektorsdd/latest [TRAIN_OUT=models/kolektorsdd] [ARGS="--set trainer.max_time=null"]
	@test -n "$(DATA)" || { echo "error: set DATA=ROOT/NAME/VERSION (a dataset made by datatool convert)" >&2; exit 2; }
	HF_HUB_OFFLINE=1 $(BIN)/asset train --config asset/configs/$*.yaml --data "$(DATA)" --out "$(or $(TRAIN_OUT),models/$*)" $(ARGS)

.PHONY: docs docs-serve
DOCS_ENV := NO_MKDOCS_2_WARNING=1
docs: setup ## build the documentation site (docs/, MkDocs + Material) into out/site, --strict, offline
	$(DOCS_ENV) $(BIN)/python -m mkdocs build --strict --clean --site-dir out/site
	@echo "site: out/site/index.html"

docs-serve: setup ## serve the documentation site at http://127.0.0.1:8001, rebuilt on every change in docs/
	$(DOCS_ENV) $(BIN)/python -m mkdocs serve --dev-addr 127.0.0.1:8001
