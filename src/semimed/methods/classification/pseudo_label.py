"""Pseudo-Label: the model's own confident predictions on weak views train its strong views.

Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep Neural
Networks" (ICML 2013 Workshop on Challenges in Representation Learning), eq. 15:

    loss = CE(f(x_lb), y_lb)
         + lambda_u * linear_rampup(step, rampup * total_steps)
           * mean_u[ 1(max p_u >= threshold) * CE(f(x_ulb_s), argmax p_u) ]
    p_u  = softmax(f(x_ulb_w)), computed without gradient.

Lee took the argmax on the very input being trained, with no threshold, and annealed the weight
linearly (alpha(t), his eq. 16). The confidence threshold and the 0.4 linear ramp are USB's
version (Wang et al., NeurIPS 2022: ``p_cutoff: 0.95``, ``ulb_loss_ratio: 1.0``,
``unsup_warm_up: 0.4``). Here, as the project requires, the target comes from the WEAK view and
the loss is taken on the STRONG view, so a target is never the trained prediction itself.

Difference from FixMatch (``fixmatch.py``, Sohn et al. 2020): FixMatch is this loss with a
RandAugment strong view, no ramp-up, a temperature and an EMA model for evaluation. This method
ramps the weight up, has no EMA and validates the student. Both read the same ``x_ulb_s`` from
the data pipeline, so in this project the ramp and the evaluated model are the only differences.
Labeled, weak and strong images share one forward pass, as in FixMatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from semimed.config.checks import Checked, Range
from semimed.methods.base import Method
from semimed.methods.cost import joint_pass
from semimed.methods.losses import confident_pseudo_label_loss, linear_rampup


class PseudoLabel(Method):
    """Batch: ``x_lb`` (B, 1, H, W), ``y_lb`` (B,), ``x_ulb_w`` and ``x_ulb_s`` (U, 1, H, W)."""

    name = "pseudo_label"
    uses_unlabeled = True

    @dataclass(frozen=True)
    class Params(Checked):
        # confidence a pseudo-label needs to count
        threshold: Annotated[float, Range(ge=0, le=1)] = 0.95
        # final weight of the unsupervised term
        lambda_u: Annotated[float, Range(ge=0)] = 1.0
        # share of total_steps over which lambda_u ramps up linearly
        rampup: Annotated[float, Range(ge=0, le=1)] = 0.4

    intrinsic_passes = staticmethod(joint_pass)
    intrinsic_why = "as FixMatch: one pass over labeled, weak and strong"

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, x_ulb_w, x_ulb_s = batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]
        logits = self.net(torch.cat([x_lb, x_ulb_w, x_ulb_s]))
        logits_lb, logits_w, logits_s = logits.split([len(x_lb), len(x_ulb_w), len(x_ulb_s)])

        sup = F.cross_entropy(logits_lb, batch["y_lb"])
        unsup, mask = confident_pseudo_label_loss(logits_w, logits_s, self.params.threshold)
        weight = self.params.lambda_u * linear_rampup(step, self.params.rampup * self.total_steps)
        return {
            "loss": sup + weight * unsup,
            "sup": sup,
            "unsup": unsup,
            "mask_ratio": mask.float().mean(),
            "weight": sup.new_tensor(weight),
        }
