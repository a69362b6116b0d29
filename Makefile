# semimed: `make repro` runs the default pipeline, `make test` runs the tests.
# Both create .venv (if missing) and install the pinned dependencies first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install repro test lint bench clean-venv

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The default pipeline on the embedded synthetic data (DVC needs a git repo with a commit).
repro: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

# benchmarks/bench.py: step cost of every method against its intrinsic cost, data throughput,
# DVC and stage times, peak memory -> metrics/bench.json and metrics/bench.md (~4-6 min;
# `--pipeline` adds a full dvc repro from scratch in a scratch copy, ~9 min more).
bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m benchmarks.bench

clean-venv:
	rm -rf $(VENV)
