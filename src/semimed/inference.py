"""Inference shared by validation (train loop), the evaluate stage and prediction.

Both run the model in `eval()` mode under `torch.inference_mode()`: no random augmentation,
no dropout, no autograd bookkeeping (seed 001's original applied random augmentations at
test time; we never do).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice, do_metric_reduction
from monai.networks.utils import one_hot
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from semimed.config import TaskConfig
from semimed.data.taskdata import TaskData
from semimed.multitask import blockwise_softmax
from semimed.tasks import spec


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device,
    task_sizes: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) for images (N, 1, H, W); a multi-task model's columns are
    its tasks' blocks (``task_sizes``), each a softmax of its own."""
    model.eval()
    sizes = tuple(task_sizes) if task_sizes else None
    out = []
    for i in range(0, len(images), batch_size):
        logits = model(images[i : i + batch_size].to(device)).float()
        sizes = sizes or (logits.shape[1],)
        out.append(blockwise_softmax(logits, sizes).cpu())
    return torch.cat(out).numpy()


@torch.inference_mode()
def volume_logits(
    model: nn.Module, image, roi_size, overlap: float, sw_batch_size: int, device
) -> torch.Tensor:
    """Logits (1, C, X, Y, Z) float32 of a whole volume (1, X, Y, Z), by MONAI sliding-window
    inference with Gaussian-weighted window blending."""
    model.eval()
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].to(device)
    return sliding_window_inference(
        x,
        roi_size=tuple(roi_size),
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=overlap,
        mode="gaussian",
        padding_mode="constant",
    ).float()


def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    roi_size,
    overlap: float,
    sw_batch_size: int,
    device,
) -> np.ndarray:
    """Label map (X, Y, Z) uint8 of a whole volume (1, X, Y, Z): the argmax of
    `volume_logits`."""
    logits = volume_logits(model, image, roi_size, overlap, sw_batch_size, device)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def validation_score(model: nn.Module, data: TaskData, cfg: TaskConfig, device) -> float:
    """The model-selection score (the task's headline metric) on the validation split only,
    never the test split."""
    if not spec(data.task).dense:
        x, y = data.arrays(data.split["val"])  # the primary task selects checkpoints
        probs = predict_proba(model, x, cfg.eval.batch_size, device, data.task_sizes)
        return float(balanced_accuracy_score(y.numpy(), probs[:, : data.num_classes].argmax(1)))
    scores = []  # per volume (1, C - 1), NaN for a class absent from its label
    for vid in data.split["val"]:
        image, label = data.volumes[vid]
        pred = predict_volume(
            model, image, cfg.train.patch_size, cfg.eval.overlap, cfg.eval.sw_batch_size, device
        )
        c = data.num_classes
        pred, label = torch.as_tensor(pred)[None, None].long(), torch.as_tensor(label)[None].long()
        scores.append(compute_dice(one_hot(pred, c), one_hot(label, c), False, ignore_empty=True))
    # the mean over every (volume, class) with a label; not DiceMetric.aggregate(), which
    # all-gathers across DDP processes while rank 0 alone validates
    return float(do_metric_reduction(torch.cat(scores), "mean")[0].item())
