"""URPC: uncertainty-rectified pyramid consistency between a network's decoder scales.

Luo et al., "Efficient Semi-supervised Gross Target Volume of Nasopharyngeal Carcinoma
Segmentation via Uncertainty Rectified Pyramid Consistency" (MICCAI 2021; extended in Medical
Image Analysis 2022). One network with deep supervision returns S = 1 + K predictions, the main
one and K coarser decoder outputs, all at full size (``deep_supervision = True``: the loop
builds the network with its heads). With ``p_s = softmax(f_s(x))``:

    sup    = mean_s DiceCE(f_s(x_l), y)                          every scale, labeled crops
    p_mean = mean_s p_s                                          on the unlabeled crops
    u_s    = sum_c p_mean log(p_mean / p_s)                      per voxel, (U, 1, D, H, W)
    L_s    = mean(exp(-u_s) * (p_s - p_mean)^2) / (mean(exp(-u_s)) + 1e-8) + mean(u_s)
    loss   = sup + consistency * sigmoid_rampup(step, rampup * total_steps) * mean_s L_s

``u_s`` measures how far scale s strays from the pyramid's mean; ``exp(-u_s)`` lowers the
consistency weight of those voxels and ``mean(u_s)`` pulls the scales together. The forms follow
the reference code (SSL4MIS ``train_uncertainty_rectified_pyramid_consistency_3D.py``, reused
as is by DHC's ``train_urpc.py``, Wang & Li, MICCAI 2023): ``u_s`` is ``nn.KLDivLoss(log p_s,
p_mean)`` summed over classes, i.e. KL(p_mean || p_s) (the reverse reading, sum p_s log(p_s /
p_mean), is also found in write-ups); the first mean runs over classes and voxels, the second
over voxels, so L_s averages the squared error over classes; nothing is detached, so p_mean,
the weights and u_s all carry gradients, as in the reference.

Differences from that code: the auxiliary outputs are upsampled one axis at a time
(``networks.segmentation.upsample_linear``: trilinear up to float rounding, cheaper); the
supervised term is our Dice + CE (sum of the two) per scale, MONAI's per-sample Dice by
default; the reference halves it ((CE + Dice) / 2 per scale) with a batch Dice:
``dice="ssl4mis"`` reproduces that. S = 1 + K follows ``channels`` (3 for the
default 4-level UNet; the reference's 3D UNet has 4). Defaults follow SSL4MIS: weight 0.1 ramped
over the whole run (DHC: weight 1, no ramp). Validation uses the main output (eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from semimed.config.checks import Checked, OneOf, Range
from semimed.losses import DICE_FORMS, ramped_terms, seg_supervised_loss, with_unsup_ratio
from semimed.methods.base import Method


def pyramid_uncertainty(log_probs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-scale divergence from the mean: log_probs (U, S, C, ...) -> (u, p_mean).

    u (U, S, 1, ...) = sum_c p_mean * (log p_mean - log p_s); p_mean (U, 1, C, ...).
    """
    p_mean = log_probs.exp().mean(1, keepdim=True)
    u = (torch.xlogy(p_mean, p_mean) - p_mean * log_probs).sum(2, keepdim=True)
    return u, p_mean


def rectified_pyramid_consistency(logits: Tensor) -> Tensor:
    """URPC's unsupervised loss (module docstring), averaged over the S scales.

    logits (U, S, C, ...) of the unlabeled crops, S >= 2.
    """
    log_probs = logits.float().log_softmax(2)
    u, p_mean = pyramid_uncertainty(log_probs)
    w = torch.exp(-u)
    sq = (log_probs.exp() - p_mean) ** 2
    # Reduce every dimension but the scale one.
    dims = [d for d in range(logits.dim()) if d != 1]
    per_scale = (w * sq).mean(dims) / (w.mean(dims) + 1e-8) + u.mean(dims)
    return per_scale.mean()


class URPC(Method):
    """Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "urpc"
    uses_unlabeled = True
    views = ("w",)
    deep_supervision = True

    @dataclass(frozen=True)
    class Params(Checked):
        # final weight of the pyramid consistency
        consistency: Annotated[float, Range(ge=0)] = 0.1
        # share of total_steps of the sigmoid ramp-up; 0 = none
        rampup: Annotated[float, Range(ge=0, le=1)] = 1.0
        # Dice of the supervised term per scale (losses.DICE_FORMS)
        dice: Annotated[str, OneOf(*DICE_FORMS)] = "monai"

    intrinsic_why = "one deep-supervision network pass"

    @staticmethod
    def intrinsic_passes(b: int, u: int, params: URPC.Params) -> tuple[int, int]:
        return b + u, b + u

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, y_lb, x_ulb = batch["x_lb"], batch["y_lb"], batch["x_ulb_w"]
        x = torch.cat([x_lb, x_ulb])
        out = self.net(x)
        if out.dim() != x.dim() + 1 or out.shape[1] < 2:
            raise ValueError(
                f"{self.name}: the network must return deep-supervision outputs "
                f"(B, 1 + K, C, D, H, W) with K >= 1 in training mode, got shape "
                f"{tuple(out.shape)}; build it with deep_supervision=True (unet or dynunet)"
            )
        n, scales = len(x_lb), out.shape[1]
        dice = self.params.dice
        if dice == "monai":
            # One batch of B * S predictions: MONAI's Dice (per sample and class) and CE (per
            # voxel) average it to the mean over scales of each scale's Dice + CE.
            sup = seg_supervised_loss(out[:n].flatten(0, 1), y_lb.repeat_interleave(scales, 0))
        else:  # batch Dice: one loss per scale, then their mean
            sup = sum(seg_supervised_loss(out[:n, s], y_lb, dice=dice) for s in range(scales))
            sup = sup / scales
        unsup = rectified_pyramid_consistency(out[n:])
        return with_unsup_ratio(
            ramped_terms(
                sup, unsup, self.params.consistency, step, self.params.rampup * self.total_steps
            )
        )
