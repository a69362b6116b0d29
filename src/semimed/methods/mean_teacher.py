"""Mean Teacher, shared by both tasks: the student matches an EMA teacher's softmax.

Tarvainen & Valpola, "Mean teachers are better role models: Weight-averaged consistency targets
improve semi-supervised deep learning results" (NeurIPS 2017), eqs. 1-2:

    loss = supervised(student(x_lb), y_lb)
         + consistency * sigmoid_rampup(step, rampup * total_steps)
           * mean[(softmax(student(x_ulb_s)) - softmax(teacher(x_ulb_w)))^2]
    teacher <- ema_decay * teacher + (1 - ema_decay) * student      (after each optimizer step)

The student sees the STRONG view and the teacher the WEAK one (USB's Mean Teacher once fed the
weak output where the strong one was meant; tests check which input reaches which network).
Labeled and strong images share one student pass; the teacher runs under no_grad on the weak
views alone. The teacher is validated and saved: the paper found the EMA model the more
accurate of the two. Task files (`classification/mean_teacher.py`,
`segmentation/mean_teacher.py`) only choose the supervised loss, the consistency's reduction
over classes and the default weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from semimed.config.checks import Checked, Range
from semimed.methods.base import Method
from semimed.methods.cost import teacher_pass
from semimed.methods.ema import make_teacher, update_ema, warmup_decay
from semimed.methods.losses import ramped_terms, softmax_mse


class MeanTeacher(Method):
    """Task-agnostic Mean Teacher; subclasses define `supervised_loss` and Params defaults."""

    name = "mean_teacher"
    uses_unlabeled = True

    @dataclass(frozen=True)
    class Params(Checked):
        # teacher EMA decay per step
        ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.99
        # final weight of the softmax-MSE consistency term
        consistency: Annotated[float, Range(ge=0)] = 1.0
        # share of total_steps over which the weight ramps up
        rampup: Annotated[float, Range(ge=0, le=1)] = 0.4

    intrinsic_passes = staticmethod(teacher_pass)
    intrinsic_why = "student on labeled + strong; EMA teacher on weak, no grad"

    def __init__(self, net_factory: Callable[[], nn.Module], *args: Any, **kwargs: Any) -> None:
        super().__init__(net_factory, *args, **kwargs)
        self.teacher = make_teacher(self.net)

    def supervised_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The task's loss on the labeled batch."""
        raise NotImplementedError

    def consistency_loss(self, logits_student: Tensor, logits_teacher: Tensor) -> Tensor:
        """The consistency cost between student and teacher logits; softmax MSE averaged over
        classes and samples (USB's, for classification) unless the task file says otherwise."""
        return softmax_mse(logits_student, logits_teacher)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, x_ulb_w, x_ulb_s = batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]
        logits_lb, logits_s = self.net(torch.cat([x_lb, x_ulb_s])).split([len(x_lb), len(x_ulb_s)])
        with torch.no_grad():
            logits_teacher = self.teacher(x_ulb_w)

        sup = self.supervised_loss(logits_lb, batch["y_lb"])
        unsup = self.consistency_loss(logits_s, logits_teacher)
        return ramped_terms(
            sup, unsup, self.params.consistency, step, self.params.rampup * self.total_steps
        )

    def on_step_end(self, step: int) -> None:
        decay = warmup_decay(self.params.ema_decay, step)
        update_ema(self.teacher, self.net, decay, self.update_applied)

    def inference_model(self) -> nn.Module:
        return self.teacher
