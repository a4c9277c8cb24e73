# One entry point for users and CI. Every target installs first when needed.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
TRACERL := $(VENV)/bin/tracerl
RUN_CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=
# BFCL's multi-turn data and API classes (`--env bfcl`); pinned, since the tests score its data.
BFCL_EVAL_VERSION := 2026.3.23

.PHONY: install data-bfcl run test test-fast bench lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install:  ## create .venv and install (CPU or GPU build chosen automatically)
	@bash scripts/install.sh

data-bfcl: install  ## add bfcl-eval for --env bfcl, without its dependencies (they conflict with vLLM's)
	@$(PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('bfcl-eval') != '$(BFCL_EVAL_VERSION)')" 2>/dev/null \
		|| $(PY) -m pip install --quiet --no-deps "bfcl-eval==$(BFCL_EVAL_VERSION)"

run: install  ## train the embedded agent with TRACE and show the result
	$(TRACERL) up --config $(RUN_CONFIG)

test: install data-bfcl  ## run the whole test suite (real NATS and real vLLM included)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install data-bfcl  ## only the pure-function tests
	$(PY) -m pytest -m "not nats and not vllm and not slow" $(PYTEST_ARGS)

bench: install  ## run the benchmark suite; results land in bench/results/
	$(TRACERL) bench components
	$(TRACERL) bench throughput
	$(TRACERL) bench learning
	$(TRACERL) bench chaos
	$(TRACERL) bench flood
	$(TRACERL) bench join

lint: install  ## static checks: ruff's rules and format, then mypy (all configured in pyproject.toml)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:  ## remove the virtualenv and caches (keeps runs/)
	rm -rf $(VENV) .pytest_cache .cache
