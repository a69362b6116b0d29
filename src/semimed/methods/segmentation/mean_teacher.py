"""Mean Teacher for 3D segmentation: the student matches an EMA teacher's voxel-wise softmax.

Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency targets
improve semi-supervised deep learning results" (NeurIPS 2017), in the form SSL4MIS (Luo et al.)
and the DHC baselines (Wang & Li, MICCAI 2023) use for volumes:

    loss = DiceCE(student(x_lb), y_lb)
         + consistency * sigmoid_rampup(step, rampup * total_steps)
           * mean[(softmax(student(x_ulb_s)) - softmax(teacher(x_ulb_w)))^2]

The student sees the STRONG view and the teacher the WEAK one (USB's Mean Teacher once fed the
weak output where the strong one was meant; tests check which input reaches which network).
The two views are spatially aligned (intensity-only perturbation), so voxel-wise consistency is
meaningful. SSL4MIS perturbs the teacher input with clipped Gaussian noise instead; here the
data pipeline's views play that role. Defaults follow SSL4MIS: EMA decay 0.99, consistency
weight 0.1 (also DHC's 0.1 * exp(-5 (1 - t)^2)). The teacher is the model validated and saved:
Tarvainen & Valpola (2017) found the EMA model the more accurate of the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from semimed.ema import make_teacher, update_ema, warmup_decay
from semimed.losses import seg_supervised_loss, sigmoid_rampup, softmax_mse
from semimed.methods.base import Method


class MeanTeacher(Method):
    """Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w``, ``x_ulb_s`` (U, 1, D, H, W)."""

    name = "mean_teacher"
    uses_unlabeled = True

    @dataclass(frozen=True)
    class Params:
        ema_decay: float = 0.99  # teacher EMA decay per step, [0, 1)
        consistency: float = 0.1  # final weight of the consistency term, >= 0
        rampup: float = 0.4  # share of total_steps over which the weight ramps up, [0, 1]

        def __post_init__(self) -> None:
            if not 0.0 <= self.ema_decay < 1.0:
                raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
            if self.consistency < 0.0:
                raise ValueError(f"consistency: must be >= 0, got {self.consistency}")
            if not 0.0 <= self.rampup <= 1.0:
                raise ValueError(f"rampup: must be in [0, 1], got {self.rampup}")

    def __init__(
        self,
        net_factory: Callable[[], nn.Module],
        params: Any,
        num_classes: int,
        total_steps: int,
    ) -> None:
        super().__init__(net_factory, params, num_classes, total_steps)
        self.teacher = make_teacher(self.net)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, x_ulb_w, x_ulb_s = batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]
        # One student pass over labeled + strong views (instance norm: no cross-sample mixing).
        logits_lb, logits_s = self.net(torch.cat([x_lb, x_ulb_s])).split([len(x_lb), len(x_ulb_s)])
        with torch.no_grad():
            logits_teacher = self.teacher(x_ulb_w)

        sup = seg_supervised_loss(logits_lb, batch["y_lb"])
        unsup = softmax_mse(logits_s, logits_teacher)
        weight = self.params.consistency * sigmoid_rampup(
            step, self.params.rampup * self.total_steps
        )
        return {
            "loss": sup + weight * unsup,
            "sup": sup,
            "unsup": unsup,
            "weight": sup.new_tensor(weight),
        }

    def on_step_end(self, step: int) -> None:
        update_ema(self.teacher, self.net, warmup_decay(self.params.ema_decay, step))

    def inference_model(self) -> nn.Module:
        return self.teacher
