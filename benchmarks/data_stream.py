"""Data throughput of one task (the ``data`` section): preprocessing (the preprocess stage's
function), MONAI ``Dataset`` (the chain re-run every epoch) against ``CacheDataset`` (run
once), the training stream (``train_batches``) and, for dense tasks, sliding-window inference
per volume."""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.steps import registered
from semimed import build, paths
from semimed.data.loaders import train_batches
from semimed.inference import predict_volume
from semimed.tasks import spec


def timed(fn):
    """(``fn()``, wall seconds it took)."""
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def stream_method(task: str):
    """The method class whose stream draws the most views per step: the first registered
    semi-supervised method on the unlabeled split with the most views (classification:
    FixMatch, segmentation: Mean Teacher)."""
    classes = [build.method_class(task, name) for name in registered(task)]
    ssl = [c for c in classes if c.uses_unlabeled and c.unlabeled_pool == "unlabeled"]
    return max(ssl, key=lambda c: len(c.views))  # max keeps the first of equals


def bench_data(cfg, work: Path, data, items: int, batches: int, volumes: int) -> dict:
    """Preprocessing, caching, training-stream and sliding-window throughput of one task."""
    from monai.data import CacheDataset, Dataset

    from semimed.data import preprocess as pp

    dense = spec(cfg.task).dense
    ingested = work / paths.ingested(cfg.task)
    unit = "volumes" if dense else "images"
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.chdir(work),
    ):  # manifest paths are relative
        manifest, secs = timed(lambda: pp.preprocess(cfg, ingested, Path(tmp) / "processed"))
    n = len(manifest["records"])
    out = {"unit": unit, "preprocess": {"items": n, "seconds": round(secs, 2), "per_s": n / secs}}

    records = json.loads((ingested / "manifest.json").read_text())["records"][:items]
    if dense:
        chain = pp.segmentation_chain(tuple(cfg.preprocess.spacing), cfg.preprocess.window)
        keys = ("image", "label")
    else:
        chain = pp.classification_chain(cfg.preprocess.image_size, cfg.preprocess.channels)
        keys = ("image",)
    files = [{k: str(work / r[k]) for k in keys} for r in records]

    def epoch(ds):
        return [ds[i] for i in range(len(ds))]

    plain = Dataset(files, transform=chain)
    epoch(plain)  # file-system cache and lazy imports warm
    plain_s = timed(lambda: epoch(plain))[1]
    cached, build_s = timed(lambda: CacheDataset(files, chain, num_workers=0, progress=False))
    cached_s = max(timed(lambda: epoch(cached))[1], 1e-9)
    k = len(files)
    out["monai_dataset"] = {
        "items": k,
        "no_cache_per_s": k / plain_s,
        "cache_build_s": build_s,
        "cached_per_s": k / cached_s,
    }

    cls = stream_method(cfg.task)
    stream = train_batches(data, cfg, build.stream_spec(cls), seed=0, device=torch.device("cpu"))
    per_batch = sum(len(v) for key, v in next(stream).items() if key.startswith("x_"))
    secs = timed(lambda: [next(stream) for _ in range(batches)])[1]
    out["train_stream"] = {
        "method": cls.name,
        "images_per_batch": per_batch,
        "batch_ms": 1e3 * secs / batches,
        "images_per_s": per_batch * batches / secs,
    }
    if dense:
        out["sliding_window"] = sliding_window(cfg, data, volumes)
    return json.loads(json.dumps(out), parse_float=lambda x: round(float(x), 3))


def sliding_window(cfg, data, volumes: int) -> dict:
    """Seconds per volume of ``predict_volume`` (validation settings, default network)."""
    torch.manual_seed(0)
    net = build.make_method(cfg, "supervised", build.data_shape(data))
    model, e = net.inference_model(), cfg.eval
    ids = (data.split["val"] + data.split["test"])[:volumes]
    times, voxels = [], []
    for vid in ids[:1] + ids:  # the first call warms up
        image = data.volumes[vid][0]
        args = (model, image, cfg.train.patch_size, e.overlap, e.sw_batch_size, "cpu")
        times.append(timed(lambda args=args: predict_volume(*args))[1])
        voxels.append(int(np.prod(image.shape[1:])))
    return {
        "volumes": len(ids),
        "seconds_per_volume": statistics.mean(times[1:]),
        "mean_voxels": statistics.mean(voxels[1:]),
    }
