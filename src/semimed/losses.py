"""Loss parts shared by several methods: plain functions, each testable alone.

Shapes: classification logits (B, C), targets (B,) int64; segmentation logits
(B, C, D, H, W), labels (B, 1, D, H, W) int64 (MONAI's channel-first label maps).
"""

from __future__ import annotations

import functools
import math

import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import Tensor


def sigmoid_rampup(step: int, rampup_steps: float) -> float:
    """Consistency-weight ramp ``exp(-5 (1 - t)^2)``, ``t = clip(step / rampup_steps, 0, 1)``.

    From Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning" (ICLR 2017), reused
    by Mean Teacher (Tarvainen & Valpola 2017) and DHC (Wang & Li, MICCAI 2023). It rises from
    exp(-5) ~ 0.007 at step 0 to 1 at ``rampup_steps``; ``rampup_steps <= 0`` means no ramp.
    """
    if rampup_steps <= 0:
        return 1.0
    t = min(max(step / rampup_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(step: int, rampup_steps: float) -> float:
    """Weight ramp ``clip(step / rampup_steps, 0, 1)``: 0 at step 0, 1 from ``rampup_steps`` on.

    Lee (2013) anneals the Pseudo-Label weight linearly; USB (Wang et al., NeurIPS 2022) ramps
    its unsupervised weights this way over a share of training. ``rampup_steps <= 0``: no ramp.
    """
    if rampup_steps <= 0:
        return 1.0
    return min(max(step / rampup_steps, 0.0), 1.0)


def softmax_mse(logits_student: Tensor, logits_teacher: Tensor) -> Tensor:
    """Mean squared error between class probabilities, averaged over every element.

    Logits (B, C, ...) each; softmax over dim 1. Used by Laine & Aila (2017) and Mean Teacher
    (Tarvainen & Valpola 2017) as the consistency cost. Gradients flow into both inputs:
    callers pass a detached (or no-grad) teacher when it is a target.
    """
    return F.mse_loss(logits_student.softmax(dim=1), logits_teacher.softmax(dim=1))


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of logits (U, C) against hard ``targets`` (U,), kept where ``mask`` (U,).

    Averaged over all U samples, not only the kept ones, as in FixMatch (Sohn et al. 2020,
    eq. 4, which divides by mu*B): the unsupervised term then grows with the share of confident
    pseudo-labels instead of jumping when only one sample passes the threshold.
    """
    per_sample = F.cross_entropy(logits, targets, reduction="none")
    return (per_sample * mask.to(per_sample.dtype)).mean()


def confident_pseudo_label_loss(
    logits_target: Tensor, logits_student: Tensor, threshold: float, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels from ``logits_target`` (U, C) train ``logits_student`` (U, C).

    Returns ``(loss, mask)``: ``masked_cross_entropy`` of the student against the target's
    argmax, kept where ``max softmax(logits_target / temperature) >= threshold``; mask (U,) bool.
    The target is detached here, so no gradient flows through it (Lee 2013; FixMatch, Sohn et
    al. 2020, eq. 4, with the target from the weak view and the student on the strong one).
    """
    probs = (logits_target.detach() / temperature).softmax(dim=1)
    confidence, pseudo_labels = probs.max(dim=1)
    mask = confidence >= threshold
    return masked_cross_entropy(logits_student, pseudo_labels, mask), mask


@functools.lru_cache(maxsize=8)
def _dice_ce(dice_weight: float, ce_weight: float) -> DiceCELoss:
    # Built once per weight pair: the loss holds no parameters, so one instance serves every
    # device and every method.
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=dice_weight, lambda_ce=ce_weight)


def seg_supervised_loss(
    logits: Tensor, labels: Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0
) -> Tensor:
    """Soft Dice + cross-entropy (MONAI ``DiceCELoss``), the usual supervised segmentation loss.

    logits (B, C, D, H, W); labels (B, 1, D, H, W) int64 in [0, C). Dice includes the
    background class and is averaged over classes and samples (MONAI defaults). SSL4MIS and
    DHC (Wang & Li, MICCAI 2023) combine CE and Dice the same way, 1:1 by default.
    """
    return _dice_ce(float(dice_weight), float(ce_weight))(logits, labels)


__all__ = [
    "confident_pseudo_label_loss",
    "linear_rampup",
    "masked_cross_entropy",
    "seg_supervised_loss",
    "sigmoid_rampup",
    "softmax_mse",
]
