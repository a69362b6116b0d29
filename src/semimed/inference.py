"""Inference shared by validation (train loop), the evaluate stage and prediction.

Both run the model in `eval()` mode under `torch.inference_mode()`: no random augmentation,
no dropout, no autograd bookkeeping (the SimCLR echo paper's code applied random
augmentations at test time; we never do).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from torch import nn

from semimed.config import TaskConfig
from semimed.data.taskdata import TaskData
from semimed.methods.losses import hard_labels
from semimed.networks.multitask import blockwise_softmax
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
    return hard_labels(logits)[0].to(torch.uint8).cpu().numpy()


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice (C - 1,) of each foreground class of one volume under the test scorer's empty
    rule (`semimed.evaluate.segmentation.SegmentationScorer`): NaN (not scored) where the class is
    in neither map, 0 where it is in only one (a missed or a hallucinated organ), MONAI's Dice
    otherwise. pred, label: (X, Y, Z) int label maps."""
    p = one_hot(pred[None, None].long(), num_classes)
    g = one_hot(label[None, None].long(), num_classes)
    # ignore_empty=False: 0 for a prediction without label, 1 where both are empty
    dice = compute_dice(p, g, include_background=False, ignore_empty=False)[0]
    both_empty = (p[0, 1:] + g[0, 1:]).flatten(1).sum(1) == 0
    return torch.where(both_empty, float("nan"), dice)


def mean_dice(scores: torch.Tensor) -> float:
    """The test scorer's aggregate of per-volume scores (V, C - 1) (NaN = not scored): the
    mean over classes of each class's mean over the volumes that scored it; 0 when none did."""
    per_class = scores.nanmean(0)
    scored = per_class[~per_class.isnan()]
    return float(scored.mean()) if len(scored) else 0.0


def validation_score(model: nn.Module, data: TaskData, cfg: TaskConfig, device) -> float:
    """The model-selection score (the task's headline metric) on the validation split only,
    never the test split. Segmentation: the test scorer's Dice (`dice_per_class`,
    `mean_dice`), so a hallucinated organ costs the same in model selection as in the test."""
    if not spec(data.task).dense:
        x, y = data.arrays(data.split["val"])  # the primary task selects checkpoints
        probs = predict_proba(model, x, cfg.eval.batch_size, device, data.task_sizes)
        from sklearn.metrics import (
            balanced_accuracy_score,  # imported here: segmentation never needs it
        )

        return float(balanced_accuracy_score(y.numpy(), probs[:, : data.num_classes].argmax(1)))
    scores = []  # per volume (C - 1,), NaN where the test scorer skips the class
    for vid in data.split["val"]:
        image, label = data.volumes[vid]
        pred = predict_volume(
            model, image, cfg.train.patch_size, cfg.eval.overlap, cfg.eval.sw_batch_size, device
        )
        label = torch.as_tensor(np.asarray(label))[0]  # (1, X, Y, Z) -> (X, Y, Z)
        scores.append(dice_per_class(torch.as_tensor(pred), label, data.num_classes))
    # rank 0 alone validates under DDP: a plain mean, no all-gather
    return mean_dice(torch.stack(scores))
