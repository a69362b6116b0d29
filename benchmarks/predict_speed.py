"""Prediction throughput (the ``predict`` section): `semimed.serving.predict.predict` on the ingested
TEST files of each task, on the CPU, with a default-sized model folder.

The folder is a trained run's (``models/<task>/<method>/seed<k>``, the first default method
and seed) where the copy has one; otherwise an untrained one written through the same code
path as training's (the method's ``inference_model()`` weights, ``write_model_card``):
throughput does not depend on the weights. Classification: images/s from PNG to CSV;
segmentation: volumes/s from NIfTI to label maps in the input's grid (preprocessing, sliding
window, inverse resampling, writing)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from semimed import build, paths
from semimed.io import write_json_atomic
from semimed.serving.model_folder import CARD, write_model_card
from semimed.serving.predict import predict
from semimed.tasks import spec
from semimed.training import checkpoint


def model_folder(cfg, data, work: Path, scratch: Path) -> tuple[Path, str]:
    """(a model folder of the task's default network, where it came from)."""
    method, seed = cfg.methods[0], cfg.seeds[0]
    trained = work / paths.model_dir(cfg.task, method, seed)
    if (trained / CARD).is_file():
        return trained, f"trained {method} seed {seed}"
    torch.manual_seed(0)
    net = build.make_method(cfg, "supervised", build.data_shape(data)).inference_model()
    folder = scratch / "model"
    folder.mkdir(parents=True)
    checkpoint.save(checkpoint.cpu_copy(net.state_dict()), folder / "best.pt")
    write_json_atomic(folder / "train.json", {"task": cfg.task, "method": "supervised"})
    write_model_card(folder, cfg, data, "supervised")
    return folder, "untrained supervised (same network, card and code path)"


def bench_predict(cfg, data, work: Path, items: int) -> dict:
    """Items per second of `predict` on up to `items` test files of ``cfg.task`` (one item
    first to warm up lazy imports and allocator caches, not timed)."""
    manifest = json.loads((work / paths.ingested(cfg.task) / "manifest.json").read_text())
    test = set(data.split["test"])
    files = [work / r["image"] for r in manifest["records"] if r["id"] in test][:items]
    unit = "volumes" if spec(cfg.task).dense else "images"
    with tempfile.TemporaryDirectory(prefix="semimed-predict-") as tmp:
        folder, source = model_folder(cfg, data, work, Path(tmp))
        predict(folder, files[:1], Path(tmp) / "warm", device="cpu")
        began = time.perf_counter()
        info = predict(folder, files, Path(tmp) / "out", device="cpu")
        secs = time.perf_counter() - began
        net = json.loads((folder / CARD).read_text())["network"]
    return {
        "unit": unit,
        "items": info["count"],
        "seconds": round(secs, 3),
        "per_s": round(info["count"] / secs, 3),
        "model": f"{net['name']} {net['channels']}, {source}",
    }
