"""UA-MT: a Mean Teacher whose consistency is kept only where the teacher is certain.

Yu et al., "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left Atrium
Segmentation" (MICCAI 2019). Each step the EMA teacher (``segmentation.MeanTeacher``) runs T
times on the unlabeled crops, each time with its own input noise
``clip(N(0, noise_std^2), -noise_clip, noise_clip)`` and, when the network has dropout, its own
dropout draw (the teacher is in train mode while the method trains). With ``p_t`` the softmax of
pass t, ``ramp = sigmoid_rampup(step, rampup * total_steps)`` and C classes:

    p_mean = mean_t p_t                                      (U, C, D, H, W)
    u      = -sum_c p_mean log(p_mean + 1e-6)                predictive entropy, (U, 1, D, H, W)
    tau    = (threshold_start + (threshold_end - threshold_start) * ramp) * ln C
    mask   = [u < tau]
    L_c    = sum(mask * (softmax(f(x_u)) - p_1)^2) / (sum(mask) + 1e-16)
    loss   = DiceCE(f(x_l), y) + consistency * ramp * L_c

At the end of the ramp tau = ln C keeps every voxel (entropy <= ln C); early on only voxels the
teacher is sure of count, so the term stays near zero until the teacher has learned something.
The student sees the clean unlabeled crop (``x_ulb_w``), the teacher the noisy copies, as in the
reference code (SSL4MIS ``train_uncertainty_aware_mean_teacher_3D.py``; DHC's
``train_uamt.py``, Wang & Li, MICCAI 2023). Differences from that code, all deliberate:

* The T passes run as one batched no-grad forward (chunks of ``teacher_batch`` crops), and the
  consistency target is the first of them; the reference draws the target as a ninth, separate
  noisy pass (the same distribution, one forward fewer).
* The denominator is ``sum(mask)``: the squared distance is summed over classes at each kept
  voxel, the scale of our segmentation Mean Teacher (paper eq. 1), with weight 1. SSL4MIS
  divides by ``2 * sum(mask)`` (the class mean for its binary task) with weight 0.1, DHC keeps
  the 2 with 14 classes and weight 0.1; with several classes that term is too small a share
  of the loss for the method to differ from the supervised one (as for Mean Teacher,
  docs/methods.md). ``unsup_ratio`` is logged every step.
* ``ln C``: both references use ``ln 2`` even for multi-class data (DHC), which keeps only
  very confident voxels; the paper's threshold is a share of the maximal uncertainty (ln 2 for
  its binary task), which for C classes is ``ln C``.
* Defaults follow SSL4MIS but for the weight: T = 8, weight and threshold both ramped over the
  whole run, EMA 0.99. The teacher is validated, as in our Mean Teacher;
  both references evaluate the student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from semimed.config.checks import Range
from semimed.methods.losses import ramped_terms, sigmoid_rampup
from semimed.methods.segmentation.mean_teacher import MeanTeacher


def entropy_mask(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Certain voxels of T stochastic predictions: probs (T, U, C, ...) -> (mask, uncertainty).

    uncertainty (U, 1, ...) is the entropy of the mean over T of the class probabilities;
    mask (U, 1, ...) float is 1 where it is below ``threshold`` (nats).
    """
    mean = probs.mean(0)
    uncertainty = -(mean * (mean + 1e-6).log()).sum(1, keepdim=True)
    return (uncertainty < threshold).to(mean.dtype), uncertainty


def masked_softmax_mse(logits: Tensor, target_probs: Tensor, mask: Tensor) -> Tensor:
    """Squared distance ``sum_c (softmax(logits) - target_probs)^2``, averaged over kept voxels.

    logits, target_probs (U, C, ...); mask (U, 1, ...) in {0, 1}. Zero (with a graph) when no
    voxel is kept.
    """
    sq = (logits.float().softmax(1) - target_probs) ** 2
    return (mask * sq).sum() / (mask.sum() + 1e-16)


class UAMT(MeanTeacher):
    """Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "uamt"
    views = ("w",)

    @dataclass(frozen=True)
    class Params(MeanTeacher.Params):
        # share of total_steps over which weight and threshold ramp, [0, 1]
        rampup: float = 1.0
        # final weight of the masked consistency (summed over classes), >= 0
        consistency: float = 1.0
        # T, stochastic teacher passes per step for the uncertainty
        passes: Annotated[int, Range(ge=1)] = 8
        # std of the Gaussian noise on the teacher input (intensity)
        noise_std: Annotated[float, Range(ge=0)] = 0.1
        # the noise is clipped to [-noise_clip, noise_clip]
        noise_clip: Annotated[float, Range(ge=0)] = 0.2
        # entropy threshold at step 0, share of ln C
        threshold_start: Annotated[float, Range(gt=0, le=1)] = 0.75
        # entropy threshold after the ramp, share of ln C
        threshold_end: Annotated[float, Range(gt=0, le=1)] = 1.0
        # most crops per teacher forward (memory only)
        teacher_batch: Annotated[int, Range(ge=1)] = 16

    intrinsic_why = "student on labeled + unlabeled; T noisy teacher passes, no grad"

    @staticmethod
    def intrinsic_passes(b: int, u: int, params: UAMT.Params) -> tuple[int, int]:
        return b + u + params.passes * u, b + u

    def threshold(self, ramp: float) -> float:
        """Entropy threshold in nats for ramp value ``ramp`` in [0, 1]."""
        p = self.params
        share = p.threshold_start + (p.threshold_end - p.threshold_start) * ramp
        return share * math.log(self.num_classes)

    @torch.no_grad()
    def teacher_probs(self, x_ulb: Tensor) -> Tensor:
        """Softmax of ``passes`` noisy teacher passes: x_ulb (U, 1, ...) -> (T, U, C, ...)."""
        p = self.params
        x = x_ulb.repeat(p.passes, *([1] * (x_ulb.dim() - 1)))
        x = x + (torch.randn_like(x) * p.noise_std).clamp(-p.noise_clip, p.noise_clip)
        logits = torch.cat([self.teacher(chunk) for chunk in x.split(p.teacher_batch)])
        return logits.float().softmax(1).unflatten(0, (p.passes, len(x_ulb)))

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, x_ulb = batch["x_lb"], batch["x_ulb_w"]
        logits_lb, logits_ulb = self.net(torch.cat([x_lb, x_ulb])).split([len(x_lb), len(x_ulb)])
        ramp = sigmoid_rampup(step, self.params.rampup * self.total_steps)
        probs = self.teacher_probs(x_ulb)
        mask, _ = entropy_mask(probs, self.threshold(ramp))

        sup = self.supervised_loss(logits_lb, batch["y_lb"])
        unsup = masked_softmax_mse(logits_ulb, probs[0], mask)
        terms = ramped_terms(
            sup,
            unsup,
            self.params.consistency,
            step,
            self.params.rampup * self.total_steps,
            mask_ratio=mask.mean(),
        )
        return terms
