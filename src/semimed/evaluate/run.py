"""Score one trained run on the TEST split, once: the metrics dict of the evaluate stage.

Classification: the primary target's metrics at the top level and every further target
under ``tasks``, plus a confusion-matrix plot per target. Segmentation: Dice, HD95 and ASD
per class (mm) by `SegmentationScorer`, plus a slice overlay of the first test volume.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from semimed.config import TaskConfig
from semimed.data.taskdata import TaskData
from semimed.evaluate.metrics import SegmentationScorer, classification_metrics, confusion_records
from semimed.inference import predict_proba, predict_volume
from semimed.io import write_json_atomic
from semimed.report import plot_overlay
from semimed.tasks import spec


def evaluate_run(
    cfg: TaskConfig, data: TaskData, model: nn.Module, device, plots: Path, title: str
) -> dict:
    """Test metrics of `model`; plots (confusion JSON or overlay PNG) go under `plots`."""
    if spec(cfg.task).dense:
        return _segmentation(cfg, data, model, device, Path(plots), title)
    return _classification(cfg, data, model, device, Path(plots))


def _classification(cfg, data, model, device, plots: Path) -> dict:
    x, y = data.arrays(data.split["test"], all_tasks=True)
    probs = predict_proba(model, x, cfg.eval.batch_size, device, data.task_sizes)
    per_task, start = {}, 0
    for t, (target, names) in enumerate(zip(data.targets, data.task_classes, strict=True)):
        p, start = probs[:, start : start + len(names)], start + len(names)
        per_task[target] = classification_metrics(y[:, t].numpy(), p, names)
        records = confusion_records(y[:, t].numpy(), p.argmax(1), names)
        suffix = "" if t == 0 else f"_{target}"  # the primary task keeps the plain name
        write_json_atomic(plots / f"confusion{suffix}.json", records)
    # primary task's metrics at the top level; every further task under "tasks"
    metrics = per_task.pop(data.targets[0])
    if per_task:
        metrics["tasks"] = per_task
    return metrics


def _segmentation(cfg, data, model, device, plots: Path, title: str) -> dict:
    scorer = SegmentationScorer(data.class_names)
    for k, vid in enumerate(data.split["test"]):
        image, label = data.volumes[vid]
        pred = predict_volume(
            model, image, cfg.train.patch_size, cfg.eval.overlap, cfg.eval.sw_batch_size, device
        )
        scorer.add(pred, label[0], data.spacing)
        if k == 0:  # one test volume's slice, ground truth vs prediction
            plot_overlay(
                image[0],
                label[0],
                pred,
                data.class_names,
                plots / "overlay.png",
                title=f"{title}: {vid}",
            )
    return scorer.aggregate()
