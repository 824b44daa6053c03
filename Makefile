# Defect detection, from raw images to served models. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REQS   := datatools/requirements.txt asset/requirements.txt asset/requirements-runtime.txt requirements-dev.txt
PROJECTS := datatools/pyproject.toml $(wildcard asset/pyproject.toml)

RAW  ?=
OUT  ?= data
DEMO ?= out/demo
ARGS ?=

.PHONY: help setup test demo bench lint serve clean \
        datatool-dagm datatool-kolektorsdd datatool-kolektorsdd2 datatool-synthetic docker-datatools

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): $(REQS) $(PROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r datatools/requirements.txt -r asset/requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e ./datatools $(if $(wildcard asset/pyproject.toml),-e ./asset)
	@touch $(STAMP)

setup: $(STAMP) ## create .venv with every pinned dependency (idempotent)

test: setup ## run the whole test suite (what CI runs)
	$(BIN)/python -m pytest

demo: setup ## end to end on the embedded synthetic dataset: generate, convert, validate, report, ...
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO)

bench: setup ## benchmarks, each against a baseline measured in the same run (not part of tests)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/bench.sh out/bench

MODEL ?= $(DEMO)/model
HOST  ?= 127.0.0.1
PORT  ?= 8000
serve: setup ## serve a model over HTTP until Ctrl-C: make serve [MODEL=out/demo/model] [PORT=8000] (page at /)
	@test -f "$(MODEL)/model.json" || { echo "error: no model at $(MODEL): run make demo first, or set MODEL=..." >&2; exit 2; }
	$(BIN)/asset serve --model "$(MODEL)" --backend onnxruntime --host $(HOST) --port $(PORT)

lint: setup ## ruff over the Python code
	$(BIN)/ruff check datatools asset tests scripts

datatool-dagm: setup ## convert DAGM 2007: make datatool-dagm RAW=/path/to/DAGM [OUT=data] [ARGS=...]
	@test -n "$(RAW)" || { echo "error: set RAW=/path/to/the/raw/dataset" >&2; exit 2; }
	$(BIN)/datatool convert dagm --raw "$(RAW)" --out "$(OUT)" $(ARGS)

datatool-kolektorsdd: setup ## convert KolektorSDD: make datatool-kolektorsdd RAW=/path/to/KolektorSDD [OUT=data]
	@test -n "$(RAW)" || { echo "error: set RAW=/path/to/the/raw/dataset" >&2; exit 2; }
	$(BIN)/datatool convert kolektorsdd --raw "$(RAW)" --out "$(OUT)" $(ARGS)

datatool-kolektorsdd2: setup ## convert KolektorSDD2: make datatool-kolektorsdd2 RAW=/path/to/KolektorSDD2 [OUT=data]
	@test -n "$(RAW)" || { echo "error: set RAW=/path/to/the/raw/dataset" >&2; exit 2; }
	$(BIN)/datatool convert kolektorsdd2 --raw "$(RAW)" --out "$(OUT)" $(ARGS)

datatool-synthetic: setup ## generate and convert the synthetic DAGM-like set: make datatool-synthetic [RAW=keep/raw/here] [OUT=data]
	$(BIN)/datatool convert synthetic $(if $(RAW),--raw "$(RAW)") --out "$(OUT)" $(ARGS)

docker-datatools: ## build the four datatool images (needs a Docker engine)
	for t in dagm kolektorsdd kolektorsdd2 synthetic; do \
	  docker build -f datatools/$$t/Dockerfile -t defect/datatool-$$t datatools || exit 1; done

clean: ## remove generated outputs (keeps .venv)
	rm -rf out .pytest_cache
