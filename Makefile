# One command each: `make serve` sets up and starts the server on the bundled demo pair; `make test` sets up and runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv serve test lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel, so pip does not pull a multi-GB CUDA build for the `torch>=2.7` range.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.7"

venv: $(BIN)/activate
	$(BIN)/pip install -q -e ".[test,bench]"

serve: venv
	$(BIN)/specserve serve --host $(HOST) --port $(PORT)

test: venv
	$(BIN)/python -m pytest tests

lint: venv
	$(BIN)/ruff check engine server config tests tools

clean:
	rm -rf $(VENV) build *.egg-info
