"""Class-weight rules for class-imbalanced segmentation, shared by the methods that use them.

Plain tensor functions (no state of their own): a method keeps the running quantities as
buffers, so checkpoints and resumes carry them. Weights are (C,) including background.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.utils import one_hot
from torch import Tensor

from semimed.methods.losses import hard_labels


def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """Voxels per class (C,) float of a hard label map of any shape with values in [0, C).

    A scatter-add of ones, not `torch.bincount` (same integer counts): on a GPU bincount reads
    the labels' maximum back to the host to size its output, a sync inside every step."""
    index = labels.reshape(-1).long()
    counts = torch.zeros(num_classes, dtype=torch.long, device=labels.device)
    return counts.scatter_add_(0, index, torch.ones_like(index)).float()


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
    # where, not `if top <= 0:`, which would read `top` back to the host on a GPU
    return torch.where(top > 0, c * ratio / top, torch.ones_like(counts))


def ema_(buffer: Tensor, value: Tensor, momentum: float) -> Tensor:
    """In place ``buffer <- momentum * buffer + (1 - momentum) * value``; returns ``buffer``."""
    return buffer.mul_(momentum).add_(value.to(buffer.dtype), alpha=1.0 - momentum)


@torch.no_grad()
def hard_dice_per_class(logits: Tensor, labels: Tensor) -> Tensor:
    """Dice (C,) of the argmax of logits (B, C, ...) against labels (B, 1, ...), pooled over the
    batch, background included; NaN for a class absent from both (Dice undefined there)."""
    c = logits.shape[1]
    # MONAI's one_hot (a scatter): F.one_hot reads the labels' range back to the host on a CPU
    pred = one_hot(hard_labels(logits, keepdim=True), c)
    true = one_hot(labels.long(), c)
    dims = [0, *range(2, pred.dim())]
    tp = (pred * true).sum(dims)
    total = pred.sum(dims) + true.sum(dims)
    return torch.where(total > 0, 2 * tp / total.clamp_min(1), float("nan"))


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

    A class whose ``cur_dice`` is NaN (absent from both prediction and label, see
    ``hard_dice_per_class``) leaves its four buffers unchanged this step: the step says
    nothing about it. (DHC's code scores such a class 0.5 and an eps/eps rule 1; with small
    crops rare organs are often absent, and either value would drag their EMA(1 - d) and
    hence their weight towards an arbitrary constant.) Its weight comes from its state.
    """
    seen = ~torch.isnan(cur_dice)
    cur = torch.where(seen, cur_dice, last_dice).clamp_min(eps)
    delta = cur - last_dice
    log_ratio = torch.log(cur / last_dice.clamp_min(eps))
    steps = (
        (learn, torch.where(delta > 0, delta, 0.0) * log_ratio),
        (unlearn, torch.where(delta <= 0, delta, 0.0) * log_ratio),
        (one_minus_dice, 1.0 - cur),
    )
    for buffer, value in steps:
        buffer.copy_(torch.where(seen, ema_(buffer.clone(), value, momentum), buffer))
    last_dice.copy_(torch.where(seen, cur, last_dice))
    w = ((unlearn + eps) / (learn + eps)).pow(0.2) * one_minus_dice
    return cur.numel() * w / w.max().clamp_min(eps)


@torch.no_grad()
def ema_prediction_weights_(
    weights: Tensor,
    predictions: Sequence[Tensor],
    rule: Callable[[Tensor], Tensor],
    momentum: float,
) -> tuple[Tensor, ...]:
    """One EMA step (``ema_``) of each row of ``weights`` (N, C), in place, towards
    ``rule(class_counts(predictions[i]))``; ``predictions`` holds N hard label maps (one per
    network, any shape). Returns copies of the rows. DHC's re-implementations of CReST and SimiS
    weight each CPS network by a rule of the counts of its own argmax this way."""
    for row, pred in zip(weights, predictions, strict=True):
        ema_(row, rule(class_counts(pred, weights.shape[1])), momentum)
    return tuple(row.clone() for row in weights)


# ------------------------------------------ class-wise sampling of pseudo-labelled voxels


@torch.no_grad()
def label_class_sums(values: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per class c: the sum of channel ``values[:, c]`` over the voxels labelled c, and their
    count; values (B, C, ...), labels (B, 1, ...) in [0, C); returns two (C,) float tensors.

    ``sums / counts`` is the mean of channel c on class c's voxels: with softmax inputs, the
    class-wise confidence kept by CLD's confidence bank (Lin et al., MICCAI 2022) and by the
    confidence array of Basak et al. (MICCAI 2022)."""
    c = values.shape[1]
    onehot = one_hot(labels.long(), c, dtype=values.dtype)
    dims = [0, *range(2, values.dim())]
    return (values * onehot).sum(dims).float(), onehot.sum(dims).float()


def sampling_rates(scores: Tensor, power: float, eps: float = 1e-12) -> Tensor:
    """Class sampling rates (C,) in [0, 1] from class scores (C,) in [0, 1] (confidences):
    ``r_c = ((1 - s_c) / max_k (1 - s_k)) ** power``; the lowest-scored class gets 1.

    CLD (Lin et al., MICCAI 2022; power 0.5) and Basak et al. (MICCAI 2022; power 2.5) keep the
    pseudo-labelled voxels of a class with this probability (``class_sampling_mask``), so the
    well-learned classes stop dominating the unsupervised loss."""
    gap = (1.0 - scores.float()).clamp_min(0.0)
    return (gap / (gap.max() + eps)).pow(power)


def class_sampling_mask(logits: Tensor, rates: Tensor) -> Tensor:
    """Random keep-mask (B, ...) of 0./1.: a voxel whose argmax over logits (B, C, ...) is c is
    kept with probability ``rates[c]`` (one independent draw per voxel from torch's RNG)."""
    pred = hard_labels(logits)
    draw = torch.rand(pred.shape, device=pred.device)
    return (draw < rates.to(pred.device, torch.float32)[pred]).float()


__all__ = [
    "class_counts",
    "class_sampling_mask",
    "difficulty_weights_",
    "distribution_weights",
    "ema_",
    "ema_prediction_weights_",
    "hard_dice_per_class",
    "label_class_sums",
    "sampling_rates",
]
