# Tandem's two front doors: `make up` (the local stack) and `make test` (the whole suite).
# Everything installs into a local virtual environment; nothing is assumed to be on the machine but python3.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pyproject keeps a range (torch>=2.3) for users; this pin takes the CPU build that lies on this project's
# machines instead of letting pip download a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install install-test up test lint format bench clean redis-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_PIN)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-runtime
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed-runtime

install-test: $(VENV)/.installed-test redis-server

# Integration tests start their own redis-server on an ephemeral port; install the binary if it is missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

up: install
	$(BIN)/tandem up

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install-test lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.spine

clean:
	rm -rf $(VENV) .tandem .pytest_cache .ruff_cache
