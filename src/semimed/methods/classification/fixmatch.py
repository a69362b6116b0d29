"""FixMatch: pseudo-labels from weak views train the strong views, above a confidence threshold.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence"
(NeurIPS 2020), eq. 4:

    loss = CE(f(x_lb), y_lb) + lambda_u * mean_u[ 1(max p_u >= tau) * CE(f(x_ulb_s), argmax p_u) ]
    p_u  = softmax(f(x_ulb_w) / T), computed without gradient.

Labeled, weak and strong images go through the network in ONE forward pass, as in the paper's
reference code and USB (Wang et al., NeurIPS 2022): BatchNorm then normalises with statistics of
the whole mixed batch, and the step costs one (larger) pass. The temperature T only changes
which samples pass the threshold (labels are hard); T = 1 is the paper. An EMA of the student
(``ema_decay``, 0.99 by default; the paper and TEAR use 0.999) is the model validated and
saved, as USB evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from semimed.config.checks import Checked, Range
from semimed.methods.base import EvaluatesEMA
from semimed.methods.cost import joint_pass
from semimed.methods.losses import confident_pseudo_label_loss


class FixMatch(EvaluatesEMA):
    """Batch: ``x_lb`` (B, 1, H, W), ``y_lb`` (B,), ``x_ulb_w`` and ``x_ulb_s`` (U, 1, H, W)."""

    name = "fixmatch"
    uses_unlabeled = True

    @dataclass(frozen=True)
    class Params(Checked):
        # confidence tau a pseudo-label needs to count
        threshold: Annotated[float, Range(ge=0, le=1)] = 0.95
        # weight of the unsupervised term
        lambda_u: Annotated[float, Range(ge=0)] = 1.0
        # T of the softmax that gives confidences
        temperature: Annotated[float, Range(gt=0)] = 1.0
        # decay of the evaluated EMA model; 0 = no EMA (paper: 0.999)
        ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.99

    intrinsic_passes = staticmethod(joint_pass)
    intrinsic_why = "labeled + weak + strong in ONE pass (BN sees the mixed batch)"

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, x_ulb_w, x_ulb_s = batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]
        logits = self.net(torch.cat([x_lb, x_ulb_w, x_ulb_s]))
        logits_lb, logits_w, logits_s = logits.split([len(x_lb), len(x_ulb_w), len(x_ulb_s)])

        sup = F.cross_entropy(logits_lb, batch["y_lb"])
        # The weak view only supplies (detached) targets; the strong view is trained.
        unsup, mask = confident_pseudo_label_loss(
            logits_w, logits_s, self.params.threshold, self.params.temperature
        )

        return {
            "loss": sup + self.params.lambda_u * unsup,
            "sup": sup,
            "unsup": unsup,
            "mask_ratio": mask.float().mean(),
        }
