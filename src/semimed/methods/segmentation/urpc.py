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

Differences from that code: the auxiliary outputs are upsampled by one matrix product per
axis (``networks.segmentation.upsample_linear``: trilinear up to float rounding, cheaper) and
the consistency's gradient is written out (same values up to float rounding); the
supervised term is our Dice + CE (sum of the two) per scale, MONAI's per-sample Dice by
default; the reference halves it ((CE + Dice) / 2 per scale) with a batch Dice:
``dice="ssl4mis"`` reproduces that. S = 1 + K follows ``channels`` (3 for the
default 4-level UNet; the reference's 3D UNet has 4). Defaults follow SSL4MIS: weight 0.1 ramped
over the whole run (DHC: weight 1, no ramp). Validation uses the main output (eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from semimed.config.checks import Checked, OneOf, Range
from semimed.methods.base import Method
from semimed.methods.losses import ramped_terms
from semimed.methods.segmentation.losses import DICE_FORMS, seg_supervised_loss


def pyramid_uncertainty(log_probs: Tensor, probs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-scale divergence from the mean: log_probs (U, S, C, ...) -> (u, p_mean).

    u (U, S, 1, ...) = sum_c p_mean * (log p_mean - log p_s); p_mean (U, 1, C, ...).
    ``probs``: ``log_probs.exp()`` where the caller has it already.
    """
    probs = log_probs.exp() if probs is None else probs
    p_mean = probs.mean(1, keepdim=True)
    u = (torch.xlogy(p_mean, p_mean) - p_mean * log_probs).sum(2, keepdim=True)
    return u, p_mean


def rectified_pyramid_consistency(logits: Tensor) -> Tensor:
    """URPC's unsupervised loss (module docstring), averaged over the S scales.

    logits (U, S, C, ...) of the unlabeled crops, S >= 2. Forward and gradient of
    `_PyramidConsistency` (written out: a third fewer full-size tensor operations than
    autograd's graph of the same formula, checked against it by gradcheck in the tests).
    """
    return _PyramidConsistency.apply(logits.float())


class _PyramidConsistency(torch.autograd.Function):
    """The loss above with its gradient in closed form. Per scale s, with N = U * prod(...)
    voxels, q = mean_c (p - p_mean)^2, A_s = sum w q / N, B_s = sum w / N + 1e-8:
    L = mean_s (A_s / B_s + sum u / N), so dL/dq = w / (S N B), dL/dw = (q / B - A / B^2) /
    (S N), dL/du = 1 / (S N) - w dL/dw; then through p_mean = mean_s p, p = softmax(z)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        log_p = z.log_softmax(2)
        p = log_p.exp()
        u, p_mean = pyramid_uncertainty(log_p, p)
        w = torch.exp(-u)
        diff = p - p_mean
        q = diff.square().mean(2, keepdim=True)
        dims = [d for d in range(z.dim()) if d != 1]
        n = u.numel() // u.shape[1]
        b = w.sum(dims, keepdim=True) / n + 1e-8
        a = (w * q).sum(dims, keepdim=True) / n
        ctx.save_for_backward(log_p, p, p_mean, w, diff, q, a, b)
        return (a / b + u.sum(dims, keepdim=True) / n).mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        log_p, p, p_mean, w, diff, q, a, b = ctx.saved_tensors
        scales, classes = log_p.shape[1], log_p.shape[2]
        k = grad / (scales * (w.numel() // scales))
        g_w = k * (q / b - a / b.square())
        g_u = k - w * g_w
        g_diff = diff * (k * w / b * (2.0 / classes))
        # u = sum_c xlogy(p_mean, p_mean) - p_mean log p: d/dp_mean = log p_mean + 1 - log p
        log_mean = torch.where(p_mean > 0, p_mean.log() + 1.0, 0.0)
        # In place on this function's own temporaries: fewer full-size allocations.
        g_mean = (log_mean - log_p).mul_(g_u).sub_(g_diff).sum(1, keepdim=True)
        g_log_p = g_diff.add_(g_mean.div_(scales)).mul_(p).sub_(g_u * p_mean)
        return g_log_p.addcmul_(p, g_log_p.sum(2, keepdim=True), value=-1.0)


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
        # One split, not two slices: its backward concatenates the two gradients instead of
        # zero-filling a full-size gradient per slice and adding them.
        out_lb, out_ulb = out.split([n, len(x_ulb)])
        dice = self.params.dice
        if dice == "monai":
            # One batch of B * S predictions: MONAI's Dice (per sample and class) and CE (per
            # voxel) average it to the mean over scales of each scale's Dice + CE.
            sup = seg_supervised_loss(out_lb.flatten(0, 1), y_lb.repeat_interleave(scales, 0))
        else:  # batch Dice: one loss per scale, then their mean
            sup = sum(seg_supervised_loss(out_lb[:, s], y_lb, dice=dice) for s in range(scales))
            sup = sup / scales
        unsup = rectified_pyramid_consistency(out_ulb)
        return ramped_terms(
            sup, unsup, self.params.consistency, step, self.params.rampup * self.total_steps
        )
