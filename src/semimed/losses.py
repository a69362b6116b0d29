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


def weighted_dice_ce(
    logits: Tensor,
    labels: Tensor,
    class_weights: Tensor | None = None,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> Tensor:
    """``seg_supervised_loss`` with per-class weights (C,) in BOTH terms: weighted
    cross-entropy (torch's normalisation: divided by the summed weights of the voxels' classes)
    plus MONAI ``DiceLoss`` whose per-class Dice losses are multiplied by the weights before
    averaging. DHC (Wang & Li, MICCAI 2023) trains its supervised term this way ("w_ce+dice").

    labels (B, 1, D, H, W) int64 or hard pseudo-labels of that shape; weights are treated as
    constants (detached). ``class_weights=None`` equals ``seg_supervised_loss``.
    """
    if class_weights is None:
        return seg_supervised_loss(logits, labels, dice_weight, ce_weight)
    w = class_weights.detach().to(logits.device, torch.float32)
    loss = logits.new_zeros(())
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(logits.float(), labels[:, 0].long(), weight=w)
    if dice_weight:
        dice = DiceLoss(to_onehot_y=True, softmax=True, weight=w)
        loss = loss + dice_weight * dice(logits.float(), labels)
    return loss


def weighted_ce(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Voxel-wise cross-entropy of logits (B, C, ...) against hard labels (B, 1, ...), with
    optional per-class weights (C,) (detached); the pseudo-label term of CPS (Chen et al., CVPR
    2021) and, weighted, of DHC ("wce")."""
    w = None if class_weights is None else class_weights.detach().to(logits.device, torch.float32)
    return F.cross_entropy(logits.float(), labels[:, 0].long(), weight=w)


__all__ = [
    "confident_pseudo_label_loss",
    "group_means",
    "kmeans_assign",
    "linear_rampup",
    "masked_cross_entropy",
    "ramped_terms",
    "matched_prototype_loss",
    "mixup",
    "nt_xent",
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
