"""A training run killed with SIGKILL mid-way resumes under the real `dvc repro` and ends
with the same files, byte for byte, as an uninterrupted run of the same params and seed,
early stop included (it stops at the same step, with the same weights).

Uses the temporary git + DVC repository of test_pipeline_e2e (its `repo` fixture) with one
classification run of 30 steps. That the evaluate stage then writes the same metrics file
from the same best.pt is test_train's bit-identical test. About 40 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import torch
import yaml
from test_pipeline_e2e import repo  # noqa: F401  (`repo`: the temporary repository)
from test_pipeline_e2e import run as _run

RUN = "classification/fixmatch/seed0"
TARGET = "train_classification@fixmatch-0"
STEPS, EVERY, STOP = 50, 10, 30  # early stopping (patience 1, min_steps 30) ends it at 30


def _files(root) -> dict:
    """The run's outputs as bytes: models/ and the DVCLive folder, last.pt and the wall time
    in train.json left out."""
    out = {}
    for folder in (root / "models" / RUN, root / "plots/train" / RUN):
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.name != "last.pt":
                out[str(f.relative_to(root))] = f.read_bytes()
    info = json.loads(out.pop(f"models/{RUN}/train.json"))
    out["train.json"] = {k: v for k, v in info.items() if k != "seconds"}
    return out


def _last_step(path) -> int:
    try:
        return torch.load(path, weights_only=True)["step"]
    except FileNotFoundError:  # written atomically: absent or complete
        return 0


def _kill_after_checkpoint(args, root, env) -> int:
    """Run `args` in a new process group; SIGKILL the whole group (dvc and the stage) once
    last.pt holds step >= EVERY. Returns that step."""
    last = root / ".scratch" / RUN / "last.pt"
    proc = subprocess.Popen(
        args,
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while (step := _last_step(last)) < EVERY:
            assert proc.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return step


def test_killed_run_resumes_under_dvc_repro_bit_identically(repo):  # noqa: F811
    root, env = repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    cls = params["classification"]
    cls.update(methods=["fixmatch"], seeds=[0])
    cls["train"].update(steps=STEPS, eval_every=EVERY, checkpoint_every=EVERY)
    # no score beats the best by 1.0: patience runs out at the first validation >= min_steps
    cls["train"].update(stop="early", patience=1, min_steps=STOP, min_delta=1.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # the uninterrupted run (ingest, preprocess and split run first)
    _run(["dvc", "repro", TARGET], root, env)
    expected = _files(root)
    info = expected["train.json"]
    assert info["last_step"] == STOP and info["convergence"]["stopped_early"], info
    for folder in (root / "models" / RUN, root / "plots/train" / RUN, root / ".scratch" / RUN):
        shutil.rmtree(folder)
    # --force: DVC's run cache would otherwise restore the finished run instead of training
    again = ["dvc", "repro", "--force", "--single-item", TARGET]

    killed_at = _kill_after_checkpoint(again, root, env)
    assert EVERY <= killed_at < STOP, "the run finished before the kill"
    model_dir = root / "models" / RUN
    assert not (model_dir / "train.json").exists()
    state = torch.load(root / ".scratch" / RUN / "last.pt", weights_only=True)  # never torn
    assert state["step"] >= killed_at
    torch.load(model_dir / "best.pt", weights_only=True)

    out = _run(again, root, env)
    assert f"resuming {RUN} from step " in out, out
    resumed = int(out.split(f"resuming {RUN} from step ")[1].split()[0])
    assert EVERY <= resumed < STOP and "Running stage 'split_classification'" not in out
    leftovers = [*root.glob("models/**/*.tmp"), *root.glob("plots/**/*.tmp")]
    assert not leftovers, "an interrupted write left a temporary file"
    # identical best.pt, DVCLive rows and train.json: resuming (and running twice with the
    # same params and seed) changes no byte
    got = _files(root)
    assert got.keys() == expected.keys()
    assert [k for k in got if got[k] != expected[k]] == []
    assert "up to date" in _run(["dvc", "status", TARGET], root, env)
