"""Score one trained run on the TEST split, once: the metrics dict of the evaluate stage and
its per-case table.

Classification: the primary target's metrics at the top level and every further target
under ``tasks``, plus a confusion-matrix plot per target; one table row per test image.
Segmentation: Dice, HD95 and ASD per class (mm) by `SegmentationScorer` in each case's
ORIGINAL space (`semimed.evaluate.original`), the same on the preprocessed grid under
``resampled_space``, plus a slice overlay of the first test volume; one table row per
scored (case, class).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from torch import nn

from semimed import paths
from semimed.config import TaskConfig
from semimed.data.taskdata import TaskData
from semimed.evaluate.metrics import classification_metrics, confusion_records
from semimed.evaluate.original import OriginalSpaceScorer, original_files
from semimed.evaluate.overlay import plot_overlay
from semimed.evaluate.segmentation import SegmentationScorer
from semimed.inference import predict_proba, predict_volume
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.tasks import spec
from semimed.training.record import training_record


def evaluate_run(
    cfg: TaskConfig,
    data: TaskData,
    model: nn.Module,
    device,
    plots: Path,
    title: str,
    ingested: Path | None = None,
) -> tuple[dict, list[dict]]:
    """Test metrics of `model` and its per-case rows (see `write_cases`); plots (confusion
    JSON or overlay PNG) go under `plots`. `ingested`: the folder of the ingest manifest
    that names each case's original files (segmentation; default `paths.ingested`)."""
    if spec(cfg.task).dense:
        ingested = paths.ingested(cfg.task) if ingested is None else Path(ingested)
        return _segmentation(cfg, data, model, device, Path(plots), title, ingested)
    return _classification(cfg, data, model, device, Path(plots))


def run_record(
    task: str, method: str, seed: int, n_test: int, metrics: dict, train_info: dict
) -> dict:
    """The metrics file of one run (``paths.run_metrics``): its identity, `metrics` (from
    `evaluate_run`), ``training`` -- the convergence facts of its ``train.json``, numbers and
    bools only (``best_step``, ``last_step``, ``converged``, ``stopped_early``, ...; see
    `semimed.training.record.training_record`), which the report flags and DVC can diff -- and
    ``train``: train.json itself as provenance (the fingerprint hashes the run's params, data,
    split and code), less the wall time so that equal runs give byte-identical files."""
    skip = ("task", "method", "seed", "seconds", "convergence")  # convergence: `training`
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "n_test": n_test,
        **metrics,
        "training": training_record(train_info),
        "train": {k: v for k, v in train_info.items() if k not in skip},
    }


def write_cases(path: Path, rows: list[dict]) -> None:
    """The per-case rows as a CSV, atomically; columns in the order of the first row:
    segmentation ``case, class, dice, hd95_mm, asd_mm, empty_rule`` (one row per scored
    (case, class), original space), classification ``id, label, prediction, prob_<class>...``
    (one row per test image, primary target)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def _classification(cfg, data, model, device, plots: Path) -> tuple[dict, list[dict]]:
    ids = list(data.split["test"])
    x, y = data.arrays(ids, all_tasks=True)
    probs = predict_proba(model, x, cfg.eval.batch_size, device, data.task_sizes)
    per_task, start = {}, 0
    for t, (target, names) in enumerate(zip(data.targets, data.task_classes, strict=True)):
        p, start = probs[:, start : start + len(names)], start + len(names)
        per_task[target] = classification_metrics(y[:, t].numpy(), p, names)
        records = confusion_records(y[:, t].numpy(), p.argmax(1), names)
        suffix = "" if t == 0 else f"_{target}"  # the primary task keeps the plain name
        write_json_atomic(plots / f"confusion{suffix}.json", records)
    # per-image rows of the primary target (its block is the first of `probs`)
    names = data.task_classes[0] if data.task_classes else data.class_names
    rows = [
        {
            "id": i,
            "label": names[int(y[n, 0])],
            "prediction": names[int(probs[n, : len(names)].argmax())],
        }
        | {
            f"prob_{c}": f"{float(v):.6f}"
            for c, v in zip(names, probs[n, : len(names)], strict=True)
        }
        for n, i in enumerate(ids)
    ]
    # primary task's metrics at the top level; every further task under "tasks"
    metrics = per_task.pop(data.targets[0])
    if per_task:
        metrics["tasks"] = per_task
    return metrics, rows


def _segmentation(cfg, data, model, device, plots: Path, title, ingested) -> tuple[dict, list]:
    resampled = SegmentationScorer(data.class_names)
    pre = cfg.preprocess
    original = OriginalSpaceScorer(
        data.class_names, original_files(ingested), pre.spacing, data.intensity or pre.window
    )
    for k, vid in enumerate(data.split["test"]):
        image, label = data.volumes[vid]
        pred = predict_volume(
            model, image, cfg.train.patch_size, cfg.eval.overlap, cfg.eval.sw_batch_size, device
        )
        resampled.add(pred, label[0], data.spacing, case=vid)
        original.add(pred, vid)
        if k == 0:  # one test volume's slice, ground truth vs prediction
            plot_overlay(
                image[0],
                label[0],
                pred,
                data.class_names,
                plots / "overlay.png",
                title=f"{title}: {vid}",
            )
    on_grid = resampled.aggregate()
    keys = ("dice", "hd95_mm", "asd_mm", "per_class")
    # headline: original space; the preprocessed grid's scores kept beside them
    metrics = original.aggregate() | {"resampled_space": {k: on_grid[k] for k in keys}}
    return metrics, original.scorer.cases
