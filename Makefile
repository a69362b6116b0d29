# semimed: `make repro` runs the default pipeline, `make test` runs the tests.
# Both create .venv (if missing) and install the pinned dependencies first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install params repro test lint bench clean-venv

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# params.yaml (what the stages read) is composed by Hydra from conf/config.yaml and the preset
# it names, exactly as `dvc exp run -S key=value` composes it; rebuilt when conf/ is newer.
params.yaml: conf/config.yaml $(wildcard conf/preset/*.yaml) | $(STAMP)
	$(BIN)/python -c "from dvc.utils.hydra import compose_and_dump as c; c('params.yaml', '$(CURDIR)/conf', None, 'config', '', [])"

params: params.yaml

# The default pipeline on the embedded synthetic data (DVC needs a git repo with a commit).
repro: $(STAMP) params.yaml
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

# benchmarks/bench.py: step cost of every method against its intrinsic cost, data throughput,
# DVC and stage times, stage start-up, predict throughput, peak memory -> metrics/bench.json
# and metrics/bench.md (~5-7 min; `--pipeline` adds a full dvc repro from scratch in a scratch
# copy, ~5 min more). `make bench BENCH_ARGS="--preset gpu --device cuda"`: the GPU mode ->
# metrics/bench_gpu.json and metrics/bench_gpu.md (docs/benchmark.md).
BENCH_ARGS ?=
bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

# Every plot of the workspace as one page that renders offline (Vega inlined from
# assets/vega/offline.html) -> plots/html/index.html; `plots-check` then opens it in headless
# Chromium with no network and fails unless every chart is drawn (scripts/check_plots_offline.sh).
plots: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc plots show --html-template assets/vega/offline.html -o plots/html

plots-check: plots
	scripts/check_plots_offline.sh plots/html/index.html

clean-venv:
	rm -rf $(VENV)
