"""Loss parts both tasks' methods share: weight ramps, the ramped semi-supervised sum,
softmax MSE, confidence-masked pseudo-label cross-entropy and the argmax helper; plain
functions, each testable alone. Task-specific parts: `semimed.methods.classification.losses`
and `semimed.methods.segmentation.losses`.

Shapes: classification logits (B, C), targets (B,) int64; segmentation logits
(B, C, D, H, W), labels (B, 1, D, H, W) int64 (MONAI's channel-first label maps).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "add_unsup_ratio",
    "confident_pseudo_label_loss",
    "hard_labels",
    "linear_rampup",
    "masked_cross_entropy",
    "ramped_terms",
    "sigmoid_rampup",
    "softmax_mse",
]


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


def ramped_terms(
    sup: Tensor, unsup: Tensor, weight: float, step: int, rampup_steps: float, **extra: Tensor
) -> dict[str, Tensor]:
    """A semi-supervised step's result: ``loss = sup + w * unsup`` with
    ``w = weight * sigmoid_rampup(step, rampup_steps)``, plus every term (and ``extra`` ones)
    for logging and ``"weight"`` = w. The terms keep their graphs (tests back-propagate one)."""
    w = weight * sigmoid_rampup(step, rampup_steps)
    return {
        "loss": sup + w * unsup,
        "sup": sup,
        "unsup": unsup,
        **extra,
        "weight": sup.new_tensor(w),
    }


def linear_rampup(step: int, rampup_steps: float) -> float:
    """Weight ramp ``clip(step / rampup_steps, 0, 1)``: 0 at step 0, 1 from ``rampup_steps`` on.

    Lee (2013) anneals the Pseudo-Label weight linearly; USB (Wang et al., NeurIPS 2022) ramps
    its unsupervised weights this way over a share of training. ``rampup_steps <= 0``: no ramp.
    """
    if rampup_steps <= 0:
        return 1.0
    return min(max(step / rampup_steps, 0.0), 1.0)


def softmax_mse(
    logits_student: Tensor, logits_teacher: Tensor, sum_classes: bool = False
) -> Tensor:
    """Mean squared error between class probabilities, averaged over every element.

    Logits (B, C, ...) each; softmax over dim 1. Used by Laine & Aila (2017) and Mean Teacher
    (Tarvainen & Valpola 2017) as the consistency cost. ``sum_classes``: summed over the C
    classes and averaged over the rest, i.e. the squared Euclidean distance between the two
    probability vectors of a sample or voxel (the paper's eq. 1), C times the default and
    independent of the number of classes. Gradients flow into both inputs: callers pass a
    detached (or no-grad) teacher when it is a target.
    """
    mse = F.mse_loss(logits_student.softmax(dim=1), logits_teacher.softmax(dim=1))
    return mse * logits_student.shape[1] if sum_classes else mse


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


def hard_labels(logits: Tensor, keepdim: bool = False) -> Tensor:
    """Index of the largest logit over dim 1: (B, C, ...) -> (B, ...) int64 ((B, 1, ...) with
    ``keepdim``). Equal to ``logits.argmax(1)`` (ties -> the first index, NaN counts as the
    largest) and faster on CPU, where PyTorch vectorises ``max(dim).indices`` over a strided
    channel dimension but not argmax."""
    return logits.max(dim=1, keepdim=keepdim).indices


def add_unsup_ratio(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """``terms`` plus ``"unsup_ratio"`` = ``(loss - sup) / sup`` (detached): what every term on
    top of the supervised one adds to the loss, relative to it (``weight * unsup / sup`` for a
    ``ramped_terms`` result). The loop logs it for every method that reports ``sup`` and
    ``unsup``, so a method whose unsupervised part is too small to matter shows it."""
    if "unsup" in terms and "sup" in terms:
        sup = terms["sup"].detach()
        terms["unsup_ratio"] = (terms["loss"].detach() - sup) / sup.clamp_min(1e-12)
    return terms
