"""SimCLR: contrastive pretraining of the backbone, then a linear probe on frozen features.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML 2020), as used by the SimCLR multi-task echo model (RHD): one run of
``total_steps`` holds both phases.

Phase 1, pretraining on every train image (labels hidden, ``unlabeled_pool = "all"``):

    loss = NT-Xent(g(h(x_ulb_s)), g(h(x_ulb_s2)); temperature)       (paper eq. 1)

h = ``net.backbone`` (one pass over both views), g = the projection MLP F -> hidden -> ReLU ->
out (paper: 512 -> 512 -> 128 on ResNet features), owned by this method and dropped afterwards.
Phase 2, linear probe: ``loss = CE(net.head(h(x_lb)), y_lb)`` with h frozen (features under
no_grad, backbone in eval mode so BatchNorm statistics and dropout are fixed).

Switch (the RHD model early-stops on the epoch's mean contrastive loss, patience 5): the mean
contrastive loss of each window of ``window`` steps must beat the best window so far by
``min_delta``; after ``patience`` windows without that the probe starts one step later (the
step after next, so that the loop's schedule, computed before ``on_step_end``, knows it in
time), and at the latest at step ``ceil(max_pretrain_fraction * total_steps)``. The phase
follows the 0-based step (``step >= probe_start``); the phase, the first probe step and the
plateau tracker are buffers, so a run resumed from a checkpoint continues in its phase.

The loop's optimizer holds every parameter. Those a phase does not use get no gradient (their
``.grad`` stays None, not zero), so SGD / Adam / AdamW neither step nor decay them: the head is
untouched in phase 1, the backbone and projector in phase 2. ``requires_grad`` is never changed,
so a resumed run builds the same optimizer.

Learning rate: each phase replays the loop's whole schedule (``train.warmup_steps`` warm-up,
then ``train.schedule`` decay) compressed onto its own steps (``lr_factor``): pretraining over
its planned ``ceil(max_pretrain_fraction * total_steps)`` steps, the probe over the steps that
remain, so the probe gets its own warm-up and peak rate (the loop's ``LambdaLR`` asks
``method.lr_factor(step, schedule)``; other methods return ``schedule(step)``). No probe loss
scale: Adam's steps do not depend on the loss scale.
Validation and ``best.pt`` use ``net`` throughout; the head starts at zero so that phase-1
scores are chance level (a random head can score above chance, and above the probe, during
pretraining).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from semimed.config.checks import Checked, Range
from semimed.methods.base import Method
from semimed.methods.classification.losses import nt_xent
from semimed.networks.multitask import multitask_cross_entropy

PRETRAIN, PROBE = 1, 2


class SimCLR(Method):
    """Phase 1 batch: ``x_ulb_s``, ``x_ulb_s2`` (U, 1, H, W), two independent strong views of the
    same images. Phase 2 batch: ``x_lb`` (B, 1, H, W), ``y_lb`` (B,)."""

    name = "simclr"
    uses_unlabeled = True
    views = ("s", "s2")
    unlabeled_pool = "all"
    multitask = True

    @dataclass(frozen=True)
    class Params(Checked):
        # NT-Xent temperature (RHD model: 0.5)
        temperature: Annotated[float, Range(gt=0)] = 0.5
        # hidden width of the projection MLP
        proj_hidden: Annotated[int, Range(ge=1)] = 512
        # output width of the projection MLP
        proj_dim: Annotated[int, Range(ge=1)] = 128
        # steps per window of the mean contrastive loss
        window: Annotated[int, Range(ge=1)] = 10
        # windows without improvement before the probe starts (RHD model: 5)
        patience: Annotated[int, Range(ge=1)] = 5
        # decrease of the window mean that counts, loss units
        min_delta: Annotated[float, Range(ge=0)] = 0.0
        # share of total_steps that ends pretraining
        max_pretrain_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.7

    intrinsic_why = "pretraining: backbone on two strong views (the later linear probe is cheaper)"

    @staticmethod
    def intrinsic_passes(b: int, u: int, params: SimCLR.Params) -> tuple[int, int]:
        return 2 * u, 2 * u

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A zero head outputs equal logits: phase-1 validation scores are exactly chance (every
        # image predicted as class 0), so best.pt can only come from the probe. A linear probe
        # starting at zero is logistic regression's usual start.
        nn.init.zeros_(self.net.head.weight)
        nn.init.zeros_(self.net.head.bias)
        p = self.params
        self.projector = nn.Sequential(
            nn.Linear(self.net.head.in_features, p.proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(p.proj_hidden, p.proj_dim),
        )
        self.register_buffer("phase", torch.tensor(PRETRAIN))
        self.register_buffer("window_sum", torch.zeros(()))  # contrastive loss summed this window
        # finite losses summed into this window
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("best_window", torch.tensor(float("inf")))  # best window mean
        self.register_buffer("stale_windows", torch.zeros((), dtype=torch.long))
        # Planned pretraining steps: the probe starts here unless a plateau comes first.
        self.pretrain_steps = math.ceil(p.max_pretrain_fraction * self.total_steps)
        self.register_buffer("probe_start", torch.tensor(self.pretrain_steps))  # first probe step
        # Host copies spare a GPU sync per step; refreshed when a checkpoint loads.
        self._probing, self._probe_start = False, self.pretrain_steps
        self.register_load_state_dict_post_hook(SimCLR._sync_phase)

    @staticmethod
    def _sync_phase(module: SimCLR, incompatible_keys: Any) -> None:
        module._probing = int(module.phase) == PROBE
        module._probe_start = int(module.probe_start)

    def lr_factor(self, step: int, schedule: Callable[[float], float]) -> float:
        """Learning-rate factor of 0-based ``step``: ``schedule`` (the loop's factor as a function
        of the step, warm-up and decay over ``total_steps``) replayed over the phase's own
        steps, so the probe starts with its own warm-up rather than the pretraining's tail."""
        start, total = self._probe_start, self.total_steps
        if step < start:
            return schedule(step * total / self.pretrain_steps)
        return schedule((step - start) * total / max(1, total - start))

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        if not self._probing and step >= self._probe_start:
            self.phase.fill_(PROBE)
            self._probing = True
        if self._probing:
            self.net.backbone.eval()
            with torch.no_grad():
                features = self.net.backbone(batch["x_lb"])
            # one probe per task: the head's row blocks (semimed.networks.multitask)
            sup = multitask_cross_entropy(self.net.head(features), batch["y_lb"], self.task_sizes)
            zero = sup.new_zeros(())
            return {"loss": sup, "sup": sup, "contrastive": zero, "phase": zero + PROBE}

        x_a, x_b = batch["x_ulb_s"], batch["x_ulb_s2"]
        z_a, z_b = self.projector(self.net.backbone(torch.cat([x_a, x_b]))).split(
            [len(x_a), len(x_b)]
        )
        contrastive = nt_xent(z_a, z_b, self.params.temperature)
        # A non-finite loss (a step the loop skips) adds 0 and does not count in the window.
        finite = contrastive.detach().float().isfinite()
        self.window_sum += torch.where(finite, contrastive.detach().float(), 0.0)
        self.window_steps += finite.long()
        zero = contrastive.new_zeros(())
        return {
            "loss": contrastive,
            "sup": zero,
            "contrastive": contrastive,
            "phase": zero + PRETRAIN,
        }

    def on_step_end(self, step: int) -> None:
        if self._probing:
            return
        done, p = step + 1, self.params
        if done % p.window == 0:  # one host sync per window
            counted = int(self.window_steps)
            mean = float(self.window_sum) / counted if counted else float("inf")
            self.window_sum.zero_()
            self.window_steps.zero_()
            if mean < float(self.best_window) - p.min_delta:
                self.best_window.fill_(mean)
                self.stale_windows.zero_()
            else:
                self.stale_windows += 1
            if int(self.stale_windows) >= p.patience and step + 2 < self._probe_start:
                # The loop has already set the rate of step + 1: the probe starts after it.
                self.probe_start.fill_(step + 2)
                self._probe_start = step + 2
