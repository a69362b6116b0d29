"""Class-weight rules for class-imbalanced segmentation, shared by the methods that use them.

Plain tensor functions (no state of their own): a method keeps the running quantities as
buffers, so checkpoints and resumes carry them. Weights are (C,) including background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Voxels per class (C,) float of a hard label map of any shape with values in [0, C)."""
    return torch.bincount(labels.reshape(-1).long(), minlength=num_classes)[:num_classes].float()


def distribution_weights(counts: Tensor, eps: float = 1e-8) -> Tensor:
    """DHC's DistDW weights (Wang & Li, MICCAI 2023): with N_c the voxels of class c,
    ``w_c = C * log((max N + eps) / (N_c + eps)) / max_k log((max N + eps) / (N_k + eps))``.

    The most frequent class gets 0 and the rarest C; a class absent from ``counts`` gets C.
    When every class is equally frequent the rule is 0 / 0: we return uniform weights of 1.
    """
    counts = counts.float()
    c = counts.numel()
    ratio = torch.log((counts.max() + eps) / (counts + eps))
    top = ratio.max()
    if top <= 0:
        return torch.ones_like(counts)
    return c * ratio / top


def ema_(buffer: Tensor, value: Tensor, momentum: float) -> Tensor:
    """In place ``buffer <- momentum * buffer + (1 - momentum) * value``; returns ``buffer``."""
    return buffer.mul_(momentum).add_(value.to(buffer.dtype), alpha=1.0 - momentum)


@torch.no_grad()
def hard_dice_per_class(logits: Tensor, labels: Tensor, eps: float = 1e-8) -> Tensor:
    """Dice (C,) of the argmax of logits (B, C, ...) against labels (B, 1, ...), pooled over the
    batch, background included; a class absent from both gets ``eps / eps = 1``."""
    c = logits.shape[1]
    pred = F.one_hot(logits.argmax(1), c).movedim(-1, 1).float()
    true = F.one_hot(labels[:, 0].long(), c).movedim(-1, 1).float()
    dims = [0, *range(2, pred.dim())]
    tp = (pred * true).sum(dims)
    return (2 * tp + eps) / (pred.sum(dims) + true.sum(dims) + eps)


@torch.no_grad()
def difficulty_weights_(
    cur_dice: Tensor,
    last_dice: Tensor,
    learn: Tensor,
    unlearn: Tensor,
    one_minus_dice: Tensor,
    momentum: float,
    eps: float = 1e-8,
) -> Tensor:
    """DHC's DiffDW update (Wang & Li, MICCAI 2023), in place on the four running buffers (C,);
    returns the weights (C,) for this step.

    With ``delta = d_t - d_{t-1}`` of the per-class Dice on the labeled batch:
    learning ``= max(delta, 0) * log(d_t / d_{t-1})``, unlearning ``= min(delta, 0) *
    log(d_t / d_{t-1})`` (both >= 0), each an EMA with ``momentum`` ((n - 1) / n for n
    accumulated steps); difficulty ``= ((unlearn + eps) / (learn + eps)) ** (1 / 5)``;
    ``w = C * normalise(difficulty * EMA(1 - d))`` with ``normalise(v) = v / max(v)``. A class
    whose Dice stalls or drops (unlearning dominates) and stays low gets the largest weight.
    """
    cur = cur_dice.clamp_min(eps)
    delta = cur - last_dice
    log_ratio = torch.log(cur / last_dice.clamp_min(eps))
    ema_(learn, torch.where(delta > 0, delta, 0.0) * log_ratio, momentum)
    ema_(unlearn, torch.where(delta <= 0, delta, 0.0) * log_ratio, momentum)
    last_dice.copy_(cur)
    ema_(one_minus_dice, 1.0 - cur, momentum)
    w = ((unlearn + eps) / (learn + eps)).pow(0.2) * one_minus_dice
    return cur.numel() * w / w.max().clamp_min(eps)


__all__ = [
    "class_counts",
    "difficulty_weights_",
    "distribution_weights",
    "ema_",
    "hard_dice_per_class",
]
