"""`train.devices: 2` on CPU: stages/train.py starts torchrun with two gloo processes, and the
run matches a single process with the same (global) batch up to BatchNorm statistics.

Two processes with 4 images each normalise every half batch by its own BatchNorm statistics,
so their gradients are not exactly those of one batch of 8; everything else (sharding,
gradient averaging, EMA, the loss means) is exact: with the optimizer step replayed in one
process on the two halves, the weights come out bit-identical. The test therefore asks that
the two-process weights be much closer to the one-process batch of 8 than a one-process
batch of 4 is. A segmentation run checks that rank 0 validates alone without waiting on the
others (MONAI's metrics all-gather when a process group exists). About 50 s on 2 CPU cores.
"""

from __future__ import annotations

import copy
import json
import os
import runpy
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT, TINY, merge

from semimed.build import parse_task
from semimed.data.taskdata import load_task_data
from semimed.training.train import train_run

TASK = "classification"
# plain SGD without weight decay or dropout: updates are linear in the gradients
TRAIN = dict(
    steps=4,
    eval_every=2,
    checkpoint_every=2,
    batch_size=8,
    optimizer="sgd",
    weight_decay=0.0,
    warmup_steps=0,
)
# |w(2 processes x 4) - w(1 x 8)| / |w(1 x 4) - w(1 x 8)|: measured 0.55 (supervised) and
# 0.31 (fixmatch); without DDP's gradient averaging 1.28 and 1.83
MAX_RATIO = 0.75


@pytest.fixture(scope="module")
def work(tmp_path_factory, default_params):
    """A working folder with tiny params (devices: 2) and both tasks' data stages run."""
    work = tmp_path_factory.mktemp("ddp")
    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    params[TASK]["train"].update(TRAIN, devices=2)
    params[TASK]["network"]["dropout"] = 0.0
    params["segmentation"]["train"].update(batch_size=2, devices=2)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    for task in (TASK, "segmentation"):
        for stage in ("ingest", "preprocess", "split"):
            mp.setattr(sys, "argv", [stage, "--task", task])
            runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="stage")["run"]()
    mp.undo()
    return work, params


def _train(work, task: str, method: str) -> None:
    """stages/train.py as dvc.yaml runs it; it starts torchrun itself. A hung run (processes
    waiting for each other) is killed with its workers after 300 s."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "stages/train.py"), "--task", task, "--method", method]
        + ["--seed", "0"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert stdout.count(f"train {task}/{method}/seed0: ") == 1  # rank 0's summary only


def _weights(folder) -> dict[str, torch.Tensor]:
    """The student's learned weights in `folder`/last.pt (BatchNorm statistics left out)."""
    state = torch.load(folder / "last.pt", weights_only=True)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return {
        k: v for k, v in state["method"].items() if k.startswith("net.") and not k.endswith(stats)
    }


def _data(cfg, work):
    """The task's data and the files a run's fingerprint hashes."""
    root = work / "data" / TASK
    files = [root / "processed/manifest.json", root / "splits.json"]
    return load_task_data(cfg, root / "processed", root / "splits.json"), files


def _distance(a: dict, b: dict) -> float:
    return float(sum((a[k] - b[k]).pow(2).sum() for k in a) ** 0.5)


@pytest.mark.parametrize("method", ["supervised", "fixmatch"])
def test_two_processes_match_one_with_the_same_batch(work, tmp_path, method):
    work, params = work
    run = f"{TASK}/{method}/seed0"
    _train(work, TASK, method)

    # rank 0 alone wrote: one file each, one DVCLive row per validation, no leftovers
    model_dir, live_dir = work / "models" / run, work / "plots/train" / run
    assert sorted(p.name for p in model_dir.iterdir()) == ["best.pt", "model.json", "train.json"]
    scratch = work / ".scratch" / run  # the resumable state, outside the DVC outputs
    val = (live_dir / "plots/metrics/val/balanced_accuracy.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in val] == ["step", "2", "4"]
    assert not list(work.rglob("*.tmp"))
    state = torch.load(scratch / "last.pt", weights_only=True)
    assert len(state["processes"]) == 2  # each process's random and stream state

    ddp = _weights(scratch)
    single = {}
    for batch in (8, 4):
        section = copy.deepcopy(params[TASK])
        section["train"].update(batch_size=batch, devices=1)
        cfg = parse_task(TASK, section)
        data, files = _data(cfg, work)
        train_run(cfg, data, method, 0, tmp_path / f"m{batch}", tmp_path / f"l{batch}", files)
        single[batch] = _weights(tmp_path / f"m{batch}")
    ratio = _distance(ddp, single[8]) / _distance(single[4], single[8])
    print(f"{method}: |w_ddp - w_1x8| / |w_1x4 - w_1x8| = {ratio:.3f}")
    assert ratio < MAX_RATIO


def test_devices_are_checked(work):
    """batch_size is the global batch; a process not started by torchrun refuses devices > 1."""
    from semimed.config import ConfigError

    work, params = work
    section = copy.deepcopy(params[TASK])
    section["train"]["devices"] = 3
    with pytest.raises(ConfigError, match="train.batch_size: 8 must divide by devices"):
        parse_task(TASK, section)
    cfg = parse_task(TASK, params[TASK])
    data, files = _data(cfg, work)
    with pytest.raises(ConfigError, match="train.devices: 2, but this process is one of 1"):
        train_run(cfg, data, "supervised", 0, work / "m", work / "l", files)


def test_segmentation_validates_on_rank_0_alone(work):
    work, _ = work
    _train(work, "segmentation", "mean_teacher")
    info = json.loads((work / "models/segmentation/mean_teacher/seed0/train.json").read_text())
    assert info["device"] == "2 x cpu" and 0 <= info["best_val_dice"] <= 1
