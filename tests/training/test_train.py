"""ingest -> preprocess -> split -> loaders -> training loop, in-process on tiny data."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from semimed.build import method_params
from semimed.config import ConfigError
from semimed.data.loaders import train_batches, unlabeled_pool
from semimed.data.preprocess import preprocess
from semimed.data.sources import ingest
from semimed.data.splits import make_splits
from semimed.data.taskdata import load_task_data
from semimed.io import write_json_atomic
from semimed.methods import get_method
from semimed.serving.model_folder import load_model, write_model_card
from semimed.training.checkpoint import fingerprint
from semimed.training.optimization import lr_factor
from semimed.training.train import train_run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, default_params):
    """Run the data stages for both tasks once; returns {task: (cfg, processed, splits)}."""
    import copy

    from conftest import TINY, merge

    from semimed.build import parse_task

    root = tmp_path_factory.mktemp("data")
    over = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    out = {}
    for task in ("classification", "segmentation"):
        cfg = parse_task(task, over[task])
        ingest(cfg, root / task / "ingested")
        manifest = preprocess(cfg, root / task / "ingested", root / task / "processed")
        split = make_splits(manifest, cfg.split, getattr(cfg.data, "target", None))
        write_json_atomic(root / task / "splits.json", split)
        out[task] = (cfg, root / task / "processed", root / task / "splits.json")
    return out


def test_ingest_manifest_paths_exist(prepared):
    cfg, processed, _ = prepared["classification"]
    manifest = json.loads((processed.parent / "ingested" / "manifest.json").read_text())
    assert manifest["classes"]["view"] == ["PLAX", "PSAX", "A4C", "A2C"]
    from pathlib import Path

    assert all(Path(r["image"]).is_file() for r in manifest["records"])


def test_preprocess_outputs(prepared):
    cfg, processed, _ = prepared["classification"]
    images = np.load(processed / "images.npy")
    assert images.shape[1:] == (1, 32, 32) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    cfg, processed, _ = prepared["segmentation"]
    manifest = json.loads((processed / "manifest.json").read_text())
    rec = manifest["records"][0]
    image = np.load(processed / f"{rec['id']}_image.npy")
    label = np.load(processed / f"{rec['id']}_label.npy")
    assert image.shape == label.shape and image.shape[0] == 1
    assert manifest["spacing"] == [6.0, 6.0, 6.0]
    assert label.dtype == np.uint8 and label.max() < len(manifest["classes"])


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_train_batches_shapes(prepared, task):
    cfg, processed, splits = prepared[task]
    data = load_task_data(cfg, processed, splits)
    ssl = get_method(task, "fixmatch" if task == "classification" else "mean_teacher")
    batch = next(train_batches(data, cfg, ssl, seed=0, device="cpu"))
    b, mu = cfg.train.batch_size, cfg.train.unlabeled_ratio
    assert batch["x_lb"].shape[0] == b and batch["x_ulb_w"].shape[0] == b * mu
    assert batch["x_ulb_w"].shape == batch["x_ulb_s"].shape
    assert not torch.equal(batch["x_ulb_w"], batch["x_ulb_s"])
    if task == "segmentation":
        assert batch["x_lb"].shape[2:] == tuple(cfg.train.patch_size)
        assert batch["y_lb"].shape == batch["x_lb"].shape and batch["y_lb"].dtype == torch.long
    sup = get_method(task, "supervised")
    assert "x_ulb_w" not in next(train_batches(data, cfg, sup, 0, "cpu"))
    # same seed -> same batch
    again = next(train_batches(data, cfg, ssl, seed=0, device="cpu"))
    assert torch.equal(batch["x_lb"], again["x_lb"])


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_train_stream_resumes_and_shards(prepared, task):
    """state_dict() -> a new stream draws exactly what the first draws next; two DDP ranks
    get, in rank order, the halves of the single-process batch."""
    import dataclasses

    cfg, processed, splits = prepared[task]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=2))
    data = load_task_data(cfg, processed, splits)
    ssl = get_method(task, "fixmatch" if task == "classification" else "mean_teacher")
    stream = train_batches(data, cfg, ssl, 0, "cpu")
    next(stream)
    state = stream.state_dict()
    want = next(stream)
    resumed = train_batches(data, cfg, ssl, 0, "cpu")
    resumed.load_state_dict(state)
    got = next(resumed)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    ranks = [train_batches(data, cfg, ssl, 0, "cpu", rank=r, world=2) for r in (0, 1)]
    parts = [(next(r), next(r))[1] for r in ranks]
    for k in want:
        assert len(parts[0][k]) == len(want[k]) // 2
        assert torch.equal(torch.cat([p[k] for p in parts]), want[k])


def test_views_and_pools_follow_the_method(prepared):
    """Methods choose their unlabeled views and pool; i_ulb indexes the pool."""
    cfg, processed, splits = prepared["classification"]
    data = load_task_data(cfg, processed, splits)

    class TwoWeak(get_method("classification", "fixmatch")):
        views = ("w", "w2")

    class AllImages(TwoWeak):
        views = ("s", "s2")
        unlabeled_pool = "all"

    batch = next(train_batches(data, cfg, TwoWeak, 0, "cpu"))
    assert {"x_ulb_w", "x_ulb_w2", "i_ulb"} <= set(batch) and "x_ulb_s" not in batch
    assert not torch.equal(batch["x_ulb_w"], batch["x_ulb_w2"])  # independent draws
    n_ulb = len(data.split["train_unlabeled"])
    assert batch["i_ulb"].dtype == torch.long and int(batch["i_ulb"].max()) < n_ulb
    pool = unlabeled_pool(data, AllImages)
    assert len(pool) == n_ulb + len(data.split["train_labeled"])
    seen = set()
    stream = train_batches(data, cfg, AllImages, 0, "cpu")
    for _ in range(3 * len(pool) // len(batch["i_ulb"]) + 1):
        seen |= set(next(stream)["i_ulb"].tolist())
    assert max(seen) >= n_ulb  # labeled images are drawn too, labels hidden
    assert unlabeled_pool(data, get_method("classification", "supervised")) == []


def test_empty_unlabeled_pool_is_a_clear_error(prepared):
    cfg, processed, splits = prepared["classification"]
    data = load_task_data(cfg, processed, splits)
    data.split = dict(data.split, train_unlabeled=[])
    with pytest.raises(ConfigError, match="needs unlabeled data"):
        next(train_batches(data, cfg, get_method("classification", "fixmatch"), 0, "cpu"))


def test_lr_schedule(tiny):
    t = tiny("classification").train
    assert lr_factor(0, t) == pytest.approx(1 / t.warmup_steps)
    assert lr_factor(t.warmup_steps, t) == pytest.approx(1.0)
    assert lr_factor(t.steps - 1, t) < 0.5


def _outputs(model_dir, live_dir) -> dict:
    """Every file a run leaves but last.pt, as bytes; train.json without its wall time."""
    out = {}
    for root in (model_dir, live_dir):
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.name != "last.pt":
                out[f"{root.name}/{f.relative_to(root)}"] = f.read_bytes()
    info = json.loads(out.pop("model/train.json"))
    out["model/train.json"] = {k: v for k, v in info.items() if k != "seconds"}
    return out


@pytest.mark.parametrize(
    "task,method", [("classification", "fixmatch"), ("segmentation", "mean_teacher")]
)
def test_train_run_writes_and_resumes(prepared, tmp_path, task, method, capsys, monkeypatch):
    """A run killed after its checkpoint at step k, with later files stale or torn, resumes
    at k and leaves the same files as an uninterrupted run; a truncated last.pt restarts it."""
    import dataclasses

    from conftest import die_writing_last_pt

    cfg, processed, splits = prepared[task]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, checkpoint_every=1))
    data = load_task_data(cfg, processed, splits)
    files = [processed / "manifest.json", splits]
    model_dir, live_dir = tmp_path / "model", tmp_path / "live"
    summary = train_run(cfg, data, method, 0, model_dir, live_dir, files)
    assert summary["steps"] == cfg.train.steps and summary["best_step"] > 0
    assert math.isfinite(list(summary.values())[4])
    val_tsv = live_dir / "plots" / "metrics" / "val"
    assert any(val_tsv.iterdir())
    assert (live_dir / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    expected = _outputs(model_dir, live_dir)
    write_model_card(model_dir, cfg, data, method)  # as the train stage does, then load it
    assert not load_model(model_dir).network.training
    shutil.rmtree(model_dir)
    shutil.rmtree(live_dir)

    # killed while writing last.pt right after the first validation: best.pt and DVCLive
    # rows of that step exist, last.pt holds the step before
    crash = cfg.train.eval_every
    die_writing_last_pt(monkeypatch, crash)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, data, method, 0, model_dir, live_dir, files)
    monkeypatch.undo()
    assert (model_dir / "best.pt").is_file()
    with open(live_dir / "plots" / "metrics" / "train" / "loss.tsv", "a") as f:
        f.write(f"{crash + 1}\t0.12")  # a row cut short
    (live_dir / "metrics.json").write_text('{"step": ')  # DVCLive writes it in place
    capsys.readouterr()
    train_run(cfg, data, method, 0, model_dir, live_dir, files)
    assert f"from step {crash - 1}" in capsys.readouterr().out
    assert _outputs(model_dir, live_dir) == expected  # bit-identical, DVCLive rows included

    # a truncated checkpoint: warned about, and training restarts from scratch
    blob = (model_dir / "last.pt").read_bytes()
    (model_dir / "last.pt").write_bytes(blob[: len(blob) // 2])
    train_run(cfg, data, method, 0, model_dir, live_dir, files)
    out = capsys.readouterr().out
    assert "unreadable" in out and "resuming" not in out
    assert _outputs(model_dir, live_dir) == expected


@pytest.mark.parametrize("task,method", [("classification", "fixmatch"), ("segmentation", "dhc")])
def test_train_and_evaluate_are_bit_identical_across_runs(
    prepared, tmp_path, monkeypatch, default_params, task, method
):
    """Same params, data and seed on CPU: the train and evaluate stages (run in-process, each
    in its own working folder) give the same weights and byte-identical metrics files."""
    import copy
    import runpy
    import sys

    import yaml
    from conftest import ROOT, TINY, merge

    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    run, args = f"{task}/{method}/seed0", ["--task", task, "--method", method, "--seed", "0"]
    works = [tmp_path / "run0", tmp_path / "run1"]
    for work in works:
        work.mkdir()
        (work / "params.yaml").write_text(yaml.safe_dump(params))
        (work / "data").symlink_to(prepared[task][1].parents[1])  # data/<task>/processed
        monkeypatch.chdir(work)
        for stage in ("train", "evaluate"):
            monkeypatch.setattr(sys, "argv", [stage, *args])
            runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="stage")["run"]()
    a, b = (torch.load(w / "models" / run / "best.pt", weights_only=True) for w in works)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [(w / "metrics" / f"{run}.json").read_bytes() for w in works]
    assert metrics[0] == metrics[1]  # test scores, best validation score and step


def test_multitask_run_scores_every_task(prepared, tmp_path):
    """targets [view, severity]: one network, two heads; each task gets its metrics."""
    import dataclasses

    from semimed.evaluate import classification_metrics
    from semimed.inference import predict_proba
    from semimed.report.tables import flat_metrics

    cfg, processed, splits = prepared["classification"]
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, targets=("view", "severity")))
    data = load_task_data(cfg, processed, splits)
    assert data.task_sizes == (4, 3) and data.all_labels.shape[1] == 2
    batch = next(train_batches(data, cfg, get_method("classification", "supervised"), 0, "cpu"))
    assert batch["y_lb"].shape == (cfg.train.batch_size, 2)
    files = [processed / "manifest.json", splits]
    train_run(cfg, data, "supervised", 0, tmp_path / "m", tmp_path / "l", files)
    write_model_card(tmp_path / "m", cfg, data, "supervised")
    model = load_model(tmp_path / "m").network
    x, y = data.arrays(data.split["test"], all_tasks=True)
    probs = predict_proba(model, x, 64, "cpu", data.task_sizes)
    assert probs.shape == (len(x), 7)
    np.testing.assert_allclose(probs[:, 4:].sum(1), 1.0, rtol=1e-5)
    severity = classification_metrics(y[:, 1].numpy(), probs[:, 4:], data.task_classes[1])
    flat = flat_metrics({"balanced_accuracy": 0.5, "tasks": {"severity": severity}})
    assert "severity/balanced_accuracy" in flat
    assert any(k.startswith("severity/recall_") for k in flat)


def test_fingerprint_tracks_params_and_data(tiny, tmp_path):
    import dataclasses

    cfg = tiny("classification")
    f = tmp_path / "splits.json"
    f.write_text("{}")
    p = method_params(cfg, "fixmatch")
    a = fingerprint(cfg, "fixmatch", p, 0, [f])
    assert a == fingerprint(cfg, "fixmatch", p, 0, [f])
    assert a != fingerprint(cfg, "fixmatch", p, 1, [f])
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=0.1))
    assert a != fingerprint(other, "fixmatch", p, 0, [f])
    assert a != fingerprint(cfg, "fixmatch", dataclasses.replace(p, threshold=0.5), 0, [f])
    f.write_text('{"x": 1}')
    assert a != fingerprint(cfg, "fixmatch", p, 0, [f])


def test_rewind_keeps_dvcs_gitignore_in_the_live_folder(tmp_path):
    """DVC writes plots/train/.../.gitignore (for the cached metrics.json) before the stage
    runs; a fresh start or a resume rebuilds the DVCLive folder around it, never deletes it."""
    from semimed.training import checkpoint

    model_dir, live = tmp_path / "model", tmp_path / "live"
    (live / "plots").mkdir(parents=True)
    (live / ".gitignore").write_text("/metrics.json\n")
    (live / "metrics.json").write_text("{}")
    (live / "plots" / "stale.tsv").write_text("1\t2\n")
    assert ".gitignore" not in checkpoint.snapshot(live)
    checkpoint.rewind(model_dir, live, None)
    assert sorted(p.name for p in live.iterdir()) == [".gitignore"]
    state = {"best_weights": None, "live": {"plots/a.tsv": "step\tv\n"}}
    checkpoint.rewind(model_dir, live, state)
    assert (live / ".gitignore").read_text() == "/metrics.json\n"
    assert (live / "plots" / "a.tsv").read_text() == "step\tv\n"


def test_loop_gives_kept_memory_back_before_each_validation(prepared, tmp_path, monkeypatch):
    """`semimed.process`: the steps keep their freed blocks; each validation starts after
    ``release_free_memory``, so its own allocations do not stack on them."""
    from semimed import process
    from semimed.training import train as loop

    cfg, processed, splits = prepared["classification"]
    data = load_task_data(cfg, processed, splits)
    events = []
    monkeypatch.setattr(process, "release_free_memory", lambda: events.append("release"))
    score = loop.validation_score

    def validation(*args, **kwargs):
        events.append("validate")
        return score(*args, **kwargs)

    monkeypatch.setattr(loop, "validation_score", validation)
    files = [processed / "manifest.json", splits]
    train_run(cfg, data, "supervised", 0, tmp_path / "model", tmp_path / "live", files)
    validations = -(-cfg.train.steps // cfg.train.eval_every)
    assert events == ["release", "validate"] * validations
