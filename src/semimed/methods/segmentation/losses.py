"""Supervised segmentation losses: soft Dice in three formulations, cross-entropy with
optional per-class weights, and their sum.

Shapes: logits (B, C, D, H, W), labels (B, 1, D, H, W) int64 in [0, C) (MONAI's channel-first
label maps); per-class weights (C,), detached.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import Tensor

__all__ = [
    "DICE_FORMS",
    "seg_dice_loss",
    "seg_supervised_loss",
    "weighted_ce",
    "weighted_dice_ce",
]


@functools.lru_cache(maxsize=8)
def _dice_ce(dice_weight: float, ce_weight: float) -> DiceCELoss:
    # Built once per weight pair: the loss holds no parameters, so one instance serves every
    # device and every method.
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight)


# Soft Dice formulations of the supervised segmentation loss (``seg_supervised_loss``):
#   monai:   MONAI's defaults: Dice per sample and class, background included, smooth 1e-5;
#   dhc:     DHC (Wang & Li, MICCAI 2023, utils/loss.py SoftDiceLoss): one Dice per class over
#            the whole batch, background left out, smooth 1 in numerator and denominator,
#            class weights on the foreground terms;
#   ssl4mis: SSL4MIS (Luo et al., utils/losses.py DiceLoss): batch Dice, background included,
#            squared terms in the denominator, smooth 1e-5, loss 0.5 * (CE + Dice).
DICE_FORMS = ("monai", "dhc", "ssl4mis")
_DICE_OPTIONS = {
    "monai": dict(include_background=True, batch=False, smooth_nr=1e-5, smooth_dr=1e-5),
    "dhc": dict(include_background=False, batch=True, smooth_nr=1.0, smooth_dr=1.0),
    "ssl4mis": dict(
        include_background=True, batch=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5
    ),
}


def seg_dice_loss(
    logits: Tensor, labels: Tensor, form: str = "monai", class_weights: Tensor | None = None
) -> Tensor:
    """Soft Dice loss (MONAI ``DiceLoss``, softmax over dim 1) in one of ``DICE_FORMS``.

    logits (B, C, ...); labels (B, 1, ...) int64 in [0, C); ``class_weights`` (C,) (detached)
    multiply each class's ``1 - Dice`` before the mean over classes (``dhc``: foreground only,
    as DHC weights ``dc[1:]``; its loss ``-mean(w dc)`` differs from ours by the constant
    ``mean(w[1:])``, so the gradients are the same).
    """
    if form not in _DICE_OPTIONS:
        raise ValueError(f"dice: must be one of {', '.join(DICE_FORMS)}; got {form!r}")
    options = _DICE_OPTIONS[form]
    if class_weights is None:
        return DiceLoss(to_onehot_y=True, softmax=True, **options)(logits.float(), labels)
    # Weighted by hand: MONAI ignores ``weight`` when one class is left (C = 2, no background).
    per_class = DiceLoss(to_onehot_y=True, softmax=True, reduction="none", **options)
    w = class_weights.detach().to(logits.device, torch.float32)
    w = w if options["include_background"] else w[1:]
    loss = per_class(logits.float(), labels).reshape(-1, len(w))  # (B or 1, classes)
    return (loss * w).mean()


def seg_supervised_loss(
    logits: Tensor,
    labels: Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    dice: str = "monai",
    class_weights: Tensor | None = None,
) -> Tensor:
    """Supervised segmentation loss ``ce_weight * CE + dice_weight * Dice`` (times 0.5 for
    ``dice="ssl4mis"``, whose scripts train on ``0.5 * (CE + Dice)``).

    logits (B, C, D, H, W); labels (B, 1, D, H, W) int64 in [0, C). The Dice term is
    ``seg_dice_loss`` in the formulation ``dice`` (see ``DICE_FORMS``): ``monai`` (per sample,
    background included, smooth 1e-5; MONAI ``DiceCELoss``) is NOT the references' Dice --
    DHC's code (Wang & Li, MICCAI 2023) uses ``dhc``, SSL4MIS ``ssl4mis``. ``class_weights``
    (C,), detached, weight both terms (``weighted_ce`` and the Dice classes), as DHC's
    "w_ce+dice".
    """
    if dice == "monai" and class_weights is None:
        return _dice_ce(float(dice_weight), float(ce_weight))(logits, labels)
    loss = logits.new_zeros((), dtype=torch.float32)
    if ce_weight:
        loss = loss + ce_weight * weighted_ce(logits, labels, class_weights)
    if dice_weight:
        loss = loss + dice_weight * seg_dice_loss(logits, labels, dice, class_weights)
    return 0.5 * loss if dice == "ssl4mis" else loss


def weighted_dice_ce(
    logits: Tensor,
    labels: Tensor,
    class_weights: Tensor | None = None,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
    dice: str = "monai",
) -> Tensor:
    """``seg_supervised_loss`` with per-class weights (C,) (or None) first: the supervised
    term of the CPS family, weighted as DHC's "w_ce+dice"; labels may be hard pseudo-labels."""
    return seg_supervised_loss(logits, labels, dice_weight, ce_weight, dice, class_weights)


def weighted_ce(
    logits: Tensor, labels: Tensor, class_weights: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """Voxel-wise cross-entropy of logits (B, C, ...) against hard labels (B, 1, ...), with
    optional per-class weights (C,) (detached); the pseudo-label term of CPS (Chen et al., CVPR
    2021) and, weighted, of DHC ("wce").

    Weighted: ``sum_v w[y_v] CE_v / max(sum_v w[y_v], eps)``, torch's weighted mean except
    when every voxel's class has weight 0 (DistDW gives the most frequent class exactly 0, so
    an all-background crop is such a batch): torch divides 0 by 0 (NaN), here the loss is 0
    with zero gradients.
    """
    target = labels[:, 0].long()
    if class_weights is None:
        return F.cross_entropy(logits.float(), target)
    w = class_weights.detach().to(logits.device, torch.float32)
    total = F.cross_entropy(logits.float(), target, weight=w, reduction="sum")
    return total / w[target].sum().clamp_min(eps)
