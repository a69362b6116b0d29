"""Adsh on CPS: per-class confidence thresholds that keep the same share of every class.

Guo & Li, "Class-Imbalanced Semi-Supervised Learning with Adaptive Thresholding" (ICML 2022).
A fixed threshold keeps many pseudo-labels of the majority class and few of the rare ones,
which are predicted with lower confidence. Adsh fixes the threshold ``tau_1`` of the majority
class (class 1, the most frequent labeled one), measures the share ``rho`` of its predictions
that reach it, and gives every class ``c`` the threshold that lets the same share of the
samples predicted as ``c`` pass:

    rho = #{x : pred(x) = 1, p_1(x) >= tau_1} / N_1,
    tau_c = the (rho N_c)-th largest confidence among the N_c samples predicted as c,

recomputed after each epoch over the unlabeled set; rarer, less confident classes get lower
thresholds.

DHC (Wang & Li, MICCAI 2023, ``train_adsh.py``) on its CPS pair, per network: a bank of the
softmax maps of the last ``u_len / 4`` unlabeled crops; when it is full, the majority class is
the most predicted one, ``rho`` counts its scores ``> 0.9``, and ``tau_c`` is the
``floor(rho N_c)``-th largest (0-based) class-c score over all voxels of the bank, not only
those predicted as ``c``; thresholds are 0 (all kept) until the bank first fills. The
teacher's per-class mask ``M_c = [p_c > tau_c]`` (whole batch) multiplies the student's logits
in the CPS CE against the teacher's argmax, averaged over all voxels (a voxel where no class
passes sees all-zero logits: a constant CE ``log C``, no gradient): ``logit_mask=True``
(default) reproduces that; ``False`` drops the voxels whose pseudo-label class fails (the
paper's sampling). Supervised Dice + CE unweighted; CPS weight 0.1 with a sigmoid ramp-up over
the whole run.

Per-step statistics instead of a bank: each network keeps EMAs of a histogram of every class's
softmax score on the unlabeled crops (``BINS`` bins in [0, 1]), of the voxels predicted as each
class and of those scoring above ``tau_major``, with momentum ``1 - U / W`` where
``W = max(U, bank_share * num_unlabeled)`` crops is DHC's bank size; ``tau_c`` is read from the
statistics of the previous steps (0 at step 0) as the ``rho N_c``-th largest class-c score,
interpolated linearly inside its histogram bin (DHC sorts the bank exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from semimed.config.checks import Range
from semimed.methods.losses import hard_labels, masked_cross_entropy
from semimed.methods.segmentation.class_weights import class_counts, ema_
from semimed.methods.segmentation.cps import CrossPseudoSupervision
from semimed.methods.segmentation.losses import weighted_ce

BINS = 1000  # histogram bins of the softmax scores in [0, 1] (bin width 1e-3)


@torch.no_grad()
def score_statistics(
    probs: Tensor, tau_major: float, labels: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Of probabilities (U, C, ...): the histogram of each class's score (C, BINS), the voxels
    predicted (argmax) as each class (C,), and the voxels whose class-c score > ``tau_major``.
    Read in the input's layout (no (C, voxels) copy): class c's bins are offset by c * BINS.
    ``labels``: ``hard_labels(probs)`` where the caller has it already."""
    probs = probs.detach().float()
    c = probs.shape[1]
    bins = (probs * BINS).long().clamp_(0, BINS - 1)
    offsets = torch.arange(c, device=probs.device) * BINS
    bins += offsets.view((1, c) + (1,) * (probs.dim() - 2))
    # Counted by scatter-add (class_counts), not bincount: no host sync on a GPU.
    hist = class_counts(bins, c * BINS).view(c, BINS)
    predicted = class_counts(hard_labels(probs) if labels is None else labels, c)
    dims = [0, *range(2, probs.dim())]
    return hist, predicted, (probs > tau_major).sum(dims).float()


@torch.no_grad()
def adaptive_thresholds(hist: Tensor, predicted: Tensor, confident: Tensor) -> Tensor:
    """Adsh's thresholds (C,) from ``score_statistics`` (or running averages of them).

    ``rho = confident[m] / predicted[m]`` for the most predicted class ``m``; ``tau_c`` is the
    score above which ``rho * predicted[c]`` class-c scores lie, read from the histogram with
    linear interpolation inside its bin; 0 where the histogram holds no more than that (no
    statistics yet), so everything passes.
    """
    bins = hist.shape[1]
    major = predicted.argmax(0, keepdim=True)  # a tensor index: no host read on a GPU
    quota = confident.gather(0, major) / predicted.gather(0, major).clamp_min(1e-8) * predicted
    tail = hist.flip(1).cumsum(1).flip(1)  # tail[c, k]: class-c scores in bins >= k
    k = (tail > quota[:, None]).sum(1, keepdim=True) - 1  # last bin whose tail exceeds quota
    kc = k.clamp_min(0)
    inside = (tail.gather(1, kc) - quota[:, None]) / hist.gather(1, kc).clamp_min(1e-8)
    return torch.where(k >= 0, (kc + inside.clamp(0, 1)) / bins, 0.0)[:, 0]


class Adsh(CrossPseudoSupervision):
    """Batch as CPS: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "adsh"

    @dataclass(frozen=True)
    class Params(CrossPseudoSupervision.Params):
        # weight of the masked CPS CE (DHC: 0.1), >= 0
        cps_weight: float = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC: all), [0, 1]
        rampup: float = 1.0
        # fixed threshold of the majority class (DHC 0.9; paper 0.95)
        tau_major: Annotated[float, Range(gt=0, lt=1)] = 0.9
        # statistics span this share of the unlabeled pool (DHC)
        bank_share: Annotated[float, Range(gt=0)] = 0.25
        # DHC: mask the student's logits; False: drop failing voxels
        logit_mask: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.num_classes
        # Leading dimension: network a, network b.
        self.register_buffer("score_hist", torch.zeros(2, c, BINS))
        self.register_buffer("predicted", torch.zeros(2, c))
        self.register_buffer("confident", torch.zeros(2, c))
        self.register_buffer("thresholds", torch.zeros(2, c))

    @torch.no_grad()
    def update_thresholds_(
        self, probs_a: Tensor, probs_b: Tensor, labels: tuple[Tensor, Tensor] | None = None
    ) -> None:
        """Thresholds from the statistics so far, then one EMA step of the statistics with the
        unlabeled probabilities (U, C, ...) of network a and b (``labels``: their argmax, where
        the caller has it)."""
        window = max(len(probs_a), self.params.bank_share * self.num_unlabeled)
        momentum = 1.0 - len(probs_a) / window
        for i, probs in enumerate((probs_a, probs_b)):
            self.thresholds[i] = adaptive_thresholds(
                self.score_hist[i], self.predicted[i], self.confident[i]
            )
            argmax = None if labels is None else labels[i]
            stats = score_statistics(probs, self.params.tau_major, argmax)
            buffers = (self.score_hist, self.predicted, self.confident)
            for buffer, value in zip(buffers, stats, strict=True):
                ema_(buffer[i], value, momentum)

    def cps_loss(
        self, logits_a: Tensor, logits_b: Tensor, w_a: Tensor | None, w_b: Tensor | None, n_lb: int
    ) -> Tensor:
        """Thresholded CPS CE of both networks; logits (B + U, C, ...) with graph."""
        probs_a = logits_a.detach().float().softmax(1)
        probs_b = logits_b.detach().float().softmax(1)
        # Each network's argmax once: its pseudo-labels and its statistics' predicted classes.
        labels_a, labels_b = hard_labels(probs_a, keepdim=True), hard_labels(probs_b, keepdim=True)
        self.update_thresholds_(probs_a[n_lb:], probs_b[n_lb:], (labels_a[n_lb:], labels_b[n_lb:]))
        thr_a, thr_b = self.thresholds
        # Student a learns from teacher b (b's probabilities and thresholds), and vice versa.
        return self.thresholded_ce(logits_a, probs_b, thr_b, labels_b) + self.thresholded_ce(
            logits_b, probs_a, thr_a, labels_a
        )

    def thresholded_ce(
        self,
        student: Tensor,
        teacher_probs: Tensor,
        thresholds: Tensor,
        target: Tensor | None = None,
    ) -> Tensor:
        """CE of student logits (N, C, ...) against the argmax of the teacher's probabilities
        (N, C, ...) (``target`` (N, 1, ...), where the caller has it) under the teacher's mask
        ``p_c > thresholds[c]``, averaged over all voxels."""
        if target is None:
            target = hard_labels(teacher_probs, keepdim=True)
        keep = teacher_probs > thresholds.view((1, -1) + (1,) * (student.dim() - 2))
        if self.params.logit_mask:  # masked logits are 0: a product with a float mask, faster
            # than where; the mask is cast once, for forward and backward
            return weighted_ce(student.float() * keep.float(), target)
        return masked_cross_entropy(student.float(), target[:, 0], keep.gather(1, target)[:, 0])
