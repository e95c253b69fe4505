# Everything installs into .venv. torch comes first and pinned: on this machine torch==2.13.0 is a
# local CPU wheel, while an unpinned torch would pull gigabytes of CUDA packages.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/groundup pretrain --config configs/pretrain-stdlib.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/forward.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
