"""DVC's run cache and a remote round trip, on the real dvc.yaml.

DVC saves a stage to its run cache only when no output is `persist` (dvc/stage/cache.py:
`_can_hash`) and every `cache: false` output is a metric or a plot (dvc/stage/__init__.py:
`Stage.run`, `no_cache_outs`); otherwise `-S x=a`, `-S x=b`, `-S x=a` retrains. The end-to-end
tests run one tiny classification chain (supervised, seed 0, 2 steps) in a temporary copy of
the repository, once for the module: about 50 s on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from test_pipeline_e2e import ROOT, run, tiny_repo

TARGET = "evaluate_classification"  # and, with it, ingest .. train (one run: supervised-0)
TRAIN = "train_classification@supervised-0"
RUN_FILES = (  # outputs of train and evaluate: in the DVC cache, then `cache: false` ones
    "models/classification/supervised/seed0/best.pt",
    "metrics/classification/supervised/seed0_cases.csv",
    "metrics/classification/supervised/seed0.json",
    "plots/train/classification/supervised/seed0/metrics.json",  # DVCLive's summary
    "plots/train/classification/supervised/seed0/plots/metrics/train/loss.tsv",  # a plot
)
ONE_RUN = {
    "classification": {
        **TINY["classification"],
        "methods": ["supervised"],
        "train": {**TINY["classification"]["train"], "steps": 2, "eval_every": 1},
    }
}


def _entries(stage: dict):
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            yield kind, path, opts or {}


NO_RUN_CACHE = {"report"}  # 2 s; keeps summary.json, paired.json, results.md in git


@pytest.mark.parametrize("name", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_every_stage_can_use_the_run_cache(name):
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]
    for kind, path, opts in _entries(stage):
        assert not opts.get("persist"), f"dvc.yaml {name}: {path} is persist (no run cache)"
        if opts.get("cache") is False and name not in NO_RUN_CACHE:
            assert kind in ("metrics", "plots"), (
                f"dvc.yaml {name}: {path} is a `cache: false` plain output (no run cache); "
                "declare it under metrics/plots or let DVC cache it"
            )


def test_training_scratch_is_ignored_by_git_and_dvc():
    for name in (".gitignore", ".dvcignore"):
        lines = (ROOT / name).read_text().splitlines()
        assert "/.scratch/" in lines, f"{name} does not ignore /.scratch/"


def _digest(repo: Path) -> dict[str, str]:
    return {f: hashlib.sha256((repo / f).read_bytes()).hexdigest() for f in RUN_FILES}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The tiny chain after `dvc exp run -S lr=a`, `-S lr=b`, `-S lr=a`: the repo, its
    environment, each run's output and the digests of the files it left."""
    tmp = tmp_path_factory.mktemp("runcache")
    repo, env = tiny_repo(tmp, ONE_RUN)
    outs, digests = [], []
    for lr in ("0.01", "0.02", "0.01"):
        cmd = ["dvc", "exp", "run", "-S", f"classification.train.lr={lr}", TARGET]
        outs.append(run(cmd, repo, env))
        digests.append(_digest(repo))
    return tmp, repo, env, outs, digests


@pytest.mark.e2e
def test_set_param_back_restores_from_the_run_cache(chain):
    _, repo, _, (a, b, a_again), (first, other, again) = chain
    assert f"Running stage '{TRAIN}'" in a
    assert f"Running stage '{TRAIN}'" in b and f"Running stage '{TARGET}'" in b
    for f in RUN_FILES:  # b wrote other files (another lr; the curves' timestamps) ...
        assert other[f] != first[f], f
    for stage in (TRAIN, TARGET):  # ... and a again restored a's, metrics included
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in a_again
    assert "Running stage" not in a_again
    assert again == first
    metrics = json.loads((repo / RUN_FILES[2]).read_text())
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0


def test_metrics_show_is_the_compact_headline_only():
    """`dvc metrics show` / `dvc exp show` list the headline file alone (one mean and std per
    method per task); per-run and detailed files are declared as outputs."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    metrics = [p for st in stages.values() for k, p, _ in _entries(st) if k == "metrics"]
    assert metrics == ["metrics/headline.json"]


@pytest.mark.e2e
def test_push_clone_pull_and_nothing_to_reproduce(chain):
    tmp, repo, env, _, (first, _, _) = chain
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "results"], repo, env)
    run(["dvc", "remote", "add", "-d", "local", str(tmp / "remote")], repo, env)
    run(["git", "commit", "-qam", "local remote"], repo, env)
    run(["dvc", "push"], repo, env)
    clone = tmp / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp, env)
    assert not (clone / RUN_FILES[0]).exists()  # weights live in DVC, not in git
    run(["dvc", "pull", "--with-deps", TARGET], clone, env)
    assert _digest(clone) == first
    status = run(["dvc", "status", "--with-deps", TARGET], clone, env)
    assert "Data and pipelines are up to date" in status
    again = run(["dvc", "repro", TARGET], clone, env)
    assert "Running stage" not in again
    assert "is cached" not in again  # up to date from dvc.lock, not even restored
