"""End to end: the real `dvc repro` and `dvc exp run -S` on a tiny params override.

The repository (tracked and untracked-but-not-ignored files) is copied into a temporary git
repo with a fresh DVC cache; DVC and git are isolated from the user's config as DVC's own
test-suite does. Takes about 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, merge, write_params

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def isolated_env(tmp: Path) -> dict:
    """os.environ without the user's git/DVC config, as DVC's own test-suite isolates them."""
    env = dict(os.environ)
    for var in list(env):
        if var.startswith(("DVC_", "GIT_")):
            del env[var]
    home = tmp / "home"
    home.mkdir()
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc-site"),
        DVC_GLOBAL_CONFIG_DIR=str(tmp / "dvc-global"),
        DVC_SYSTEM_CONFIG_DIR=str(tmp / "dvc-system"),
        PATH=f"{BIN}{os.pathsep}{env['PATH']}",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@t",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@t",
    )
    return env


def run(args, repo, env) -> str:
    """Run `args` in `repo`; fail the test with the output's tail unless it exits 0."""
    out = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True)
    assert out.returncode == 0, (
        f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout + out.stderr


def tiny_repo(tmp: Path, over: dict) -> tuple[Path, dict]:
    """A git repo at <tmp>/repo: this checkout's tracked and untracked-but-not-ignored files
    (no results: metrics/, plots/, dvc.lock), params.yaml merged with `over`, one commit, and
    the isolated environment to run git and DVC in it. Shared by tests/test_dvc_*.py."""
    repo = tmp / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(("metrics/", "plots/")):
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    (repo / "dvc.lock").unlink(missing_ok=True)
    params = merge(yaml.safe_load((repo / "params.yaml").read_text()), over)
    write_params(repo, params)  # and conf/config.yaml: `dvc exp run -S` composes from it
    env = isolated_env(tmp)
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny"], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return tiny_repo(tmp_path_factory.mktemp("e2e"), TINY)


def test_repro_writes_metrics_and_second_repro_is_noop(repo):
    repo, env = repo
    run(["dvc", "repro"], repo, env)
    for task, methods in (
        ("classification", ["supervised", "fixmatch"]),
        ("segmentation", ["supervised", "mean_teacher"]),
    ):
        for m in methods:
            metrics = json.loads((repo / f"metrics/{task}/{m}/seed0.json").read_text())
            key = "balanced_accuracy" if task == "classification" else "dice"
            assert 0.0 <= metrics[key] <= 1.0
    summary = json.loads((repo / "metrics/summary.json").read_text())
    assert set(summary) == {"classification", "segmentation"}
    stats = summary["classification"]["fixmatch"]["balanced_accuracy"]
    assert set(stats) == {"mean", "std", "n"} and stats["n"] == 1
    assert (repo / "plots/eval/classification/fixmatch/seed0/confusion.json").is_file()
    assert (repo / "plots/eval/segmentation/supervised/seed0/overlay.png").stat().st_size > 0
    assert (repo / "models/segmentation/mean_teacher/seed0/best.pt").is_file()

    again = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in again
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status


def test_exp_run_set_param_replans_and_shows(repo):
    repo, env = repo
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "baseline results"], repo, env)
    out = run(
        ["dvc", "exp", "run", "-n", "lab40", "-S", "segmentation.split.labeled_percent=40"],
        repo,
        env,
    )
    assert "Running stage 'split_segmentation'" in out
    assert "Running stage 'train_classification" not in out  # untouched task is skipped
    out = run(
        ["dvc", "exp", "run", "-n", "one", "-S", "classification.methods=[supervised]"], repo, env
    )
    assert "Running stage 'report'" in out
    shown = run(["dvc", "exp", "show", "--csv"], repo, env)
    header = shown.splitlines()[0]
    assert "segmentation.supervised.dice" in header  # metrics/headline.json: compact names
    assert "segmentation.supervised.dice.mean" not in header  # the detail is not a metric
    assert "classification.methods" in header
    assert "lab40" in shown and "one" in shown
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", "lab40", "--json"], repo, env))
    assert set(diff) == {"metrics/headline.json"}
    changed = diff["metrics/headline.json"]
    assert "segmentation.supervised.dice" in changed  # readable dotted metric names
    plots = run(["dvc", "plots", "diff", "HEAD", "lab40", "--json"], repo, env)
    assert "confusion.json" in plots


def _readme_block(heading: str) -> list[str]:
    """The command lines of the first ```bash block under README's `heading`."""
    text = (ROOT / "README.md").read_text().split(heading, 1)[1].split("\n## ", 1)[0]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_experiment_commands_run_as_written(repo):
    """README's "Before `dvc exp run`" commands, typed as written in a shell whose PATH lacks
    the environment: activating it is all `dvc exp run` needs (the stages run `python` from
    PATH), and the experiment shows in `dvc exp show`."""
    repo, env = repo
    lines = _readme_block("## Before `dvc exp run`: activate the environment")
    assert lines[0].startswith("make install") and any("activate" in x for x in lines)
    venv = repo / ".venv"  # what `make install` makes; here the checkout's environment
    if not venv.exists():
        venv.symlink_to(BIN.parent)
    bare = dict(
        env, PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(BIN))
    )
    script = "set -e\n" + "\n".join(lines[1:])
    out = run(["bash", "-c", script], repo, bare)
    assert "Running stage 'train_classification@supervised-0'" in out
    shown = run(["dvc", "exp", "show", "--csv"], repo, env)
    exp_cmd = next(x for x in lines if x.startswith("dvc exp run"))
    value = exp_cmd.split("=")[-1]
    assert value in shown


def test_bad_params_stop_a_stage_with_one_line(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["classification"]["train"]["optimizer"] = "adamx"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run(
        [sys.executable, str(ROOT / "stages/ingest.py"), "--task", "classification"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: params.yaml: classification.train.optimizer: must be one of sgd, adam, adamw; "
        "got 'adamx'"
    )
    assert not (tmp_path / "data").exists()


def test_user_data_tracked_with_dvc_add_runs_the_dag(repo):
    """Users' data under user_data/, `dvc add`-ed, selected with `dvc exp run -S`; editing a
    file under data.root re-runs ingest."""
    import source_fixtures as fx

    repo, env = repo
    folders = fx.image_folder(repo / "user_data/classification/folders")
    fx.nifti(repo / "user_data/segmentation/ct")
    run(["dvc", "add", "user_data/classification/folders", "user_data/segmentation/ct"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "user data"], repo, env)
    sets = {
        "classification.data.source": "image_folder",
        "classification.data.root": "user_data/classification/folders",
        "classification.data.targets": "[label]",
        "classification.data.group_regex": "'^([PU]\\d+)_'",
        "classification.split.labeled_percent": "50",
        "classification.split.val_percent": "25",
        "segmentation.data.source": "nifti",
        "segmentation.data.root": "user_data/segmentation/ct",
        "classification.methods": "[fixmatch]",  # one method per task keeps the test short
        "segmentation.methods": "[mean_teacher]",
    }
    args = [a for k, v in sets.items() for a in ("-S", f"{k}={v}")]
    out = run(["dvc", "exp", "run", "-n", "user", *args], repo, env)
    assert "Running stage 'ingest_classification'" in out
    assert "Running stage 'ingest_segmentation'" in out
    ingested = json.loads((repo / "data/segmentation/ingested/manifest.json").read_text())
    assert ingested["source"] == "nifti" and ingested["classes"][1] == "liver"
    split = json.loads((repo / "data/classification/splits.json").read_text())
    assert len(split["unlabeled_only"]) == 5
    for task, m in (("classification", "fixmatch"), ("segmentation", "mean_teacher")):
        assert (repo / f"metrics/{task}/{m}/seed0.json").is_file()
    # a changed image under data.root is a changed dependency of ingest
    fx.save_image(folders / "benign" / "P000_0.png", fx._image(np.random.default_rng(9), 1))
    run(["dvc", "add", "user_data/classification/folders"], repo, env)
    status = run(["dvc", "status"], repo, env)
    assert "ingest_classification" in status and "ingest_segmentation" not in status
