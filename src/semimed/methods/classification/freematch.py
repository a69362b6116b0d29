"""FreeMatch: FixMatch with self-adaptive per-class thresholds and a fairness term.

Wang et al., "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning" (ICLR 2023),
eqs. 4-9. With q = softmax(f(x_ulb_w)) (U, C) (no gradient), Q = softmax(f(x_ulb_s)) and m the
EMA momentum, every step first updates (tau_0 = 1/C, p_0 = h_0 = 1/C per class):

    tau_t  = m * tau_{t-1} + (1 - m) * mean_u max_c q_uc            global threshold
    p_t    = m * p_{t-1}   + (1 - m) * mean_u q_u                   (C,) class probabilities
    h_t    = m * h_{t-1}   + (1 - m) * Hist(argmax q_u) / U         (C,) predicted-class histogram
    tau_t(c) = tau_t * p_t(c) / max_c' p_t(c')                      per-class threshold

and then, with mask_u = [max_c q_uc >= tau_t(argmax q_u)] and hard labels argmax q_u,

    unsup = mean_u[ mask_u * CE(f(x_ulb_s)_u, argmax q_u) ]
    fair  = -H(a, b) = sum_c a_c log b_c,   a = SumNorm(p_t / h_t),   b = SumNorm(pbar / hbar)
    loss  = CE(f(x_lb), y_lb) + lambda_u * unsup + lambda_f * fair

where pbar (C,) is the mean of Q over masked samples, hbar (C,) the histogram of argmax Q over
them, SumNorm(v) = v / sum(v) and H the cross-entropy. Classes no masked sample predicts (hbar =
0) are left out of b and of the sum: their ratio is undefined (the paper is silent; USB sets it
to 0 and adds a constant without gradient); likewise a_c = 0 where h_t(c) = 0 (only possible
with m = 0). No masked sample: fair = 0.

Choices here: the thresholds start at 1/C as in the paper and in USB (its
``FreeMatchThresholdingHook`` sets p_model = label_hist = 1/C and tau = mean(p_model) = 1/C;
one older revision started all three at 1); the update uses the current batch before masking
it (paper, Alg. 1); tau, p_t and h_t are registered buffers, so ``state_dict`` checkpoints
resume exactly. Under DDP the update uses the weak-view probabilities of every process
(``gather.all_rows``, as USB's ``concat_all_gather``), not one process's share; the mask and
losses use the local share. Labeled, weak and strong images share ONE forward pass
(as ``fixmatch.py``); an EMA of the student is evaluated.

Fix-A-Step gate (Huang et al., "Fix-A-Step: Semi-supervised Learning from Uncurated Unlabeled
Data", AISTATS 2023), used with FreeMatch by the TMED-2 lightweight-network study: with
``gate``, g_sup and g_unsup (gradients of ``sup`` and ``lambda_u * unsup + lambda_f * fair``
w.r.t. the trainable weights) are computed with ``torch.autograd.grad``; if <g_sup, g_unsup> < 0
the returned ``loss`` is ``sup`` alone (``gate_open`` 0). Extra cost per step: two backward passes
on top of the loop's own (about 1 forward + 3 backward instead of 1 + 1, ~2.3x the compute),
memory for two gradient copies, and one host-device sync to read the sign.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot
from torch import Tensor, nn

from semimed.config.checks import Checked, OneOf, Range
from semimed.methods.base import EvaluatesEMA
from semimed.methods.classification.gather import all_rows
from semimed.methods.losses import masked_cross_entropy


def self_adaptive_thresholds(tau: Tensor, p_model: Tensor) -> Tensor:
    """Per-class thresholds (C,): ``tau * p_model / max(p_model)``."""
    return tau * p_model / p_model.max()


def self_adaptive_mask(probs: Tensor, tau: Tensor, p_model: Tensor) -> tuple[Tensor, Tensor]:
    """Mask (U,) bool and hard labels (U,) of probs (U, C): keep max p >= its class threshold."""
    confidence, labels = probs.max(dim=1)
    return confidence >= self_adaptive_thresholds(tau, p_model)[labels], labels


def fairness_loss(logits_s: Tensor, mask: Tensor, p_model: Tensor, label_hist: Tensor) -> Tensor:
    """``sum_c a_c log b_c`` of the module docstring; logits_s (U, C), mask (U,), EMAs (C,)."""
    probs_s = logits_s.float().softmax(dim=1)
    keep = mask.to(probs_s.dtype)[:, None]
    hist = (one_hot(probs_s.argmax(dim=1, keepdim=True), probs_s.shape[1]) * keep).sum(dim=0)
    present = hist > 0
    # Sums, not means, over masked samples: the constant factors cancel in SumNorm.
    ratio = torch.where(present, (probs_s * keep).sum(dim=0) / hist.clamp_min(1), 0.0)
    log_b = (ratio / ratio.sum().clamp_min(1e-12)).clamp_min(1e-12).log()
    a = torch.where(label_hist > 0, p_model / label_hist.clamp_min(1e-12), 0.0)
    return (a / a.sum() * torch.where(present, log_b, 0.0)).sum()


def gradient_inner_product(loss_a: Tensor, loss_b: Tensor, params: Sequence[Tensor]) -> Tensor:
    """<d loss_a / d params, d loss_b / d params>, a float32 scalar; graphs kept, .grad untouched."""
    grads_a = torch.autograd.grad(loss_a, params, retain_graph=True, allow_unused=True)
    grads_b = torch.autograd.grad(loss_b, params, retain_graph=True, allow_unused=True)
    inner = loss_a.new_zeros((), dtype=torch.float32)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        if ga is not None and gb is not None:
            inner = inner + (ga.float() * gb.float()).sum()
    return inner


class FreeMatch(EvaluatesEMA):
    """Batch: ``x_lb`` (B, 1, H, W), ``y_lb`` (B,), ``x_ulb_w`` and ``x_ulb_s`` (U, 1, H, W)."""

    name = "freematch"
    uses_unlabeled = True

    @dataclass(frozen=True)
    class Params(Checked):
        # EMA momentum m of tau, p_t and h_t (paper: 0.999)
        momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99
        # weight w_u of the masked pseudo-label CE
        lambda_u: Annotated[float, Range(ge=0)] = 1.0
        # weight w_f of the self-adaptive fairness term
        lambda_f: Annotated[float, Range(ge=0)] = 0.01
        # Fix-A-Step: drop the unlabeled terms when gradients conflict
        gate: Annotated[bool, OneOf(True, False)] = False
        # decay of the evaluated EMA model; 0 = no EMA (paper: 0.999)
        ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.99

    intrinsic_why = "as FixMatch; the Fix-A-Step gate adds two backward passes"

    @staticmethod
    def intrinsic_passes(b: int, u: int, params: FreeMatch.Params) -> tuple[int, int]:
        return b + 2 * u, (3 if params.gate else 1) * (b + 2 * u)

    def __init__(
        self,
        net_factory: Callable[[], nn.Module],
        params: Any,
        num_classes: int,
        total_steps: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(net_factory, params, num_classes, total_steps, **kwargs)
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("tau", torch.tensor(1.0 / num_classes))  # () global threshold
        self.register_buffer("p_model", uniform.clone())  # (C,) EMA of mean weak probabilities
        self.register_buffer("label_hist", uniform.clone())  # (C,) EMA of weak argmax histogram

    def class_thresholds(self) -> Tensor:
        """Per-class thresholds (C,) of the current state."""
        return self_adaptive_thresholds(self.tau, self.p_model)

    @torch.no_grad()
    def update_thresholds(self, probs: Tensor) -> None:
        """EMA updates of tau, p_model and label_hist from weak-view probabilities (U, C)
        (under DDP: those of every process)."""
        probs = all_rows(probs)
        m = self.params.momentum
        predicted = probs.argmax(dim=1, keepdim=True)
        hist = one_hot(predicted, self.num_classes, dtype=probs.dtype).mean(dim=0)
        self.tau.lerp_(probs.max(dim=1).values.mean(), 1.0 - m)
        self.p_model.lerp_(probs.mean(dim=0), 1.0 - m)
        self.label_hist.lerp_(hist, 1.0 - m)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, x_ulb_w, x_ulb_s = batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]
        logits = self.net(torch.cat([x_lb, x_ulb_w, x_ulb_s]))
        logits_lb, logits_w, logits_s = logits.split([len(x_lb), len(x_ulb_w), len(x_ulb_s)])

        sup = F.cross_entropy(logits_lb, batch["y_lb"])
        probs_w = logits_w.detach().float().softmax(dim=1)
        self.update_thresholds(probs_w)
        mask, pseudo_labels = self_adaptive_mask(probs_w, self.tau, self.p_model)
        unsup = masked_cross_entropy(logits_s, pseudo_labels, mask)
        fair = fairness_loss(logits_s, mask, self.p_model, self.label_hist)
        unlabeled = self.params.lambda_u * unsup + self.params.lambda_f * fair

        terms = {
            "loss": sup + unlabeled,
            "sup": sup,
            "unsup": unsup,
            "fairness": fair,
            "mask_ratio": mask.float().mean(),
            "tau": self.tau.clone(),
        }
        if self.params.gate:
            trainable = [p for p in self.net.parameters() if p.requires_grad]
            gate_open = bool(gradient_inner_product(sup, unlabeled, trainable) >= 0)
            terms["loss"] = terms["loss"] if gate_open else sup
            terms["gate_open"] = sup.new_tensor(float(gate_open))
        return terms
