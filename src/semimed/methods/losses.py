"""Loss parts shared by several methods: plain functions, each testable alone.

Shapes: classification logits (B, C), targets (B,) int64; segmentation logits
(B, C, D, H, W), labels (B, 1, D, H, W) int64 (MONAI's channel-first label maps).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from scipy.optimize import linear_sum_assignment
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
    largest) and ~10x faster on CPU (PyTorch 2.x: argmax over a strided channel dimension is
    not vectorised there, ``max(dim).indices`` is)."""
    return logits.max(dim=1, keepdim=keepdim).indices


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


def add_unsup_ratio(terms: dict[str, Tensor]) -> dict[str, Tensor]:
    """``terms`` plus ``"unsup_ratio"`` = ``(loss - sup) / sup`` (detached): what every term on
    top of the supervised one adds to the loss, relative to it (``weight * unsup / sup`` for a
    ``ramped_terms`` result). The loop logs it for every method that reports ``sup`` and
    ``unsup``, so a method whose unsupervised part is too small to matter shows it."""
    if "unsup" in terms and "sup" in terms:
        sup = terms["sup"].detach()
        terms["unsup_ratio"] = (terms["loss"].detach() - sup) / sup.clamp_min(1e-12)
    return terms


__all__ = [
    "DICE_FORMS",
    "add_unsup_ratio",
    "confident_pseudo_label_loss",
    "group_means",
    "hard_labels",
    "kmeans_assign",
    "linear_rampup",
    "masked_cross_entropy",
    "ramped_terms",
    "matched_prototype_loss",
    "mixup",
    "nt_xent",
    "seg_dice_loss",
    "seg_supervised_loss",
    "weighted_ce",
    "weighted_dice_ce",
    "sharpen",
    "sigmoid_rampup",
    "softmax_mse",
]


# ---------------------------------------------- sharpening and MixUp (MixMatch)


def sharpen(probs: Tensor, temperature: float | Tensor) -> Tensor:
    """Temperature sharpening ``p_c^(1/T) / sum_k p_k^(1/T)`` of probabilities (N, C), over dim 1.

    MixMatch (Berthelot et al., NeurIPS 2019), eq. 7: T = 1 leaves ``probs`` unchanged and
    T -> 0 tends to the one-hot argmax. Computed as ``softmax(log(p) / T)``, the same value,
    so a small T cannot underflow to 0 / 0.
    """
    return (probs.clamp_min(1e-12).log() / temperature).softmax(dim=1)


def mixup(inputs: Tensor, targets: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor]:
    """MixUp (Zhang et al., ICLR 2018): ``lam * a + (1 - lam) * a[perm]`` for inputs and targets.

    inputs (N, ...), soft targets (N, C), ``perm`` (N,) a permutation of ``range(N)``. The caller
    draws ``lam`` and ``perm`` (from torch's seeded RNG, so runs repeat); MixMatch (Berthelot et
    al. 2019, eqs. 8-11) mixes labeled and unlabeled samples this way with ``lam >= 0.5``.
    """
    mixed_inputs = lam * inputs + (1.0 - lam) * inputs[perm]
    mixed_targets = lam * targets + (1.0 - lam) * targets[perm]
    return mixed_inputs, mixed_targets


# ---------------------------------------- contrastive and prototype losses (SimCLR, TEAR)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., ICML
    2020, eq. 1), averaged over all 2N anchors.

    z1, z2 (N, D): projections of two views; row i of z1 and row i of z2 are the positive pair,
    the other 2N - 2 rows are the negatives. With cosine similarity ``sim``:
    ``l(i, j) = -log exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T)``.
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    # An anchor is never its own negative.
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, positives)


@torch.no_grad()
def kmeans_assign(features: Tensor, k: int, iters: int) -> Tensor:
    """Cluster index (N,) in [0, min(k, N)) of features (N, F) by k-means on unit vectors.

    Deterministic: the first centre is the point farthest from the mean, each next one the
    point farthest from the centres so far (maximin), then ``iters`` Lloyd steps; an empty
    cluster keeps its centre. Runs in torch (no sklearn) and returns no gradient.
    """
    x = F.normalize(features.detach().float(), dim=1)
    centres = x[(x - x.mean(0)).norm(dim=1).argmax()][None]
    for _ in range(min(k, len(x)) - 1):
        centres = torch.cat([centres, x[torch.cdist(x, centres).min(1).values.argmax()][None]])
    for _ in range(iters):
        onehot = F.one_hot(torch.cdist(x, centres).argmin(1), len(centres)).to(x.dtype)
        counts = onehot.sum(0)[:, None]
        centres = torch.where(counts > 0, onehot.T @ x / counts.clamp_min(1), centres)
    return torch.cdist(x, centres).argmin(1)


def group_means(features: Tensor, groups: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean feature per group: features (N, F), groups (N,) in [0, k) -> ((k, F), (k,) bool).

    The bool marks non-empty groups (an empty group's row is 0). Gradients flow into
    ``features``, so prototypes built from a student's features train that student.
    """
    onehot = F.one_hot(groups, k).to(features.dtype)
    counts = onehot.sum(0)
    return onehot.T @ features / counts.clamp_min(1)[:, None], counts > 0


def matched_prototype_loss(
    student: Tensor, student_present: Tensor, teacher: Tensor, teacher_present: Tensor
) -> Tensor:
    """Mean ``1 - cos`` between student prototypes (K, F) and teacher prototypes (K', F) after
    a one-to-one matching of the present ones (bool masks (K,), (K',)).

    Clusters carry no class index, so each present student prototype is paired with a present
    teacher prototype by the Hungarian algorithm (scipy ``linear_sum_assignment``) maximising the
    summed cosine similarity; the loss averages ``1 - cos`` over the pairs (0 when there are none)
    and its gradient reaches both inputs (pass a detached teacher). Used by TEAR's IPH.
    """
    s_idx, t_idx = student_present.nonzero()[:, 0], teacher_present.nonzero()[:, 0]
    cos = F.cosine_similarity(student[s_idx, None], teacher[None, t_idx], dim=-1)
    if cos.numel() == 0:
        return student.sum() * 0.0
    rows, cols = linear_sum_assignment(cos.detach().float().cpu().numpy(), maximize=True)
    return (1.0 - cos[torch.as_tensor(rows), torch.as_tensor(cols)]).mean()
