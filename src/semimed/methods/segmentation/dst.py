"""DST on CPS: pseudo-labels train a separate head; a worst-case head guards the features.

Chen et al., "Debiased Self-Training for Semi-Supervised Learning" (NeurIPS 2022). Self-training
is biased because the head that makes the pseudo-labels also learns from them. DST (i) decouples
generation and use: the main head ``h`` learns from labels only and makes the pseudo-labels,
a pseudo head ``h_p`` on the same features learns from them; (ii) a worst-case head ``h_w``,
behind a gradient reversal layer (GRL), seeks the hypothesis that is right on labeled data but
wrong on unlabeled data, and the features are trained to defeat it:

    L_worst = eta' * CE(h_w(x_l), argmax h(x_l)) + NLL(log(1 - softmax h_w(x_u)), argmax h(x_u))

DHC (Wang & Li, MICCAI 2023, ``train_dst.py`` with ``vnet_dst.py``) puts DST on its CPS pair,
each V-Net with three decoders (main, pseudo, worst; the worst one behind a GRL whose
coefficient warms up as ``2 (hi - lo) / (1 + exp(-alpha i / N)) - (hi - lo) + lo``, lo 0,
hi 0.1, alpha 1, N 500 iterations), eta' 2, confidence threshold 0.95, CPS weight 1 (the
default here is 0.1, the protocol of DHC's published tables) with a sigmoid ramp-up over the
whole run, unweighted Dice (DHC's, ``dice``) + CE on the main heads.
Per network k:

    unsup_k = mean_v [conf(v) >= tau] CE(h_p^k(x)_v, argmax h^other(x)_v) + L_worst^k

over all voxels of the batch (labeled rows are ``x_l``, unlabeled ``x_u`` in ``L_worst``).
Differences from DHC:

* DHC takes the targets from the other network's pseudo head and trains the main head on them,
  so its pseudo head gets no gradient at all; we follow the paper: the other network's MAIN
  head makes the targets (and the confidence mask) and the pseudo head learns from them.
* Heads: our networks come unchanged from ``net_factory``, so the extra heads are fresh copies
  of each network's output layer (its last convolution: for ``unet`` the stride-2 transposed
  convolution that maps the top decoder features to logits; for ``dynunet`` its 1x1x1 output
  convolution; for MONAI's ``vnet`` only a 1x1x1 convolution on a C-channel map), fed the same
  input through a forward hook. Cheap (one layer each); at inference the network is untouched.
* The GRL coefficient follows our step counter.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semimed.config.checks import Range
from semimed.methods.cost import PAIR_WHY
from semimed.methods.losses import (
    hard_labels,
    masked_cross_entropy,
    ramped_terms,
)
from semimed.methods.segmentation.cps import CrossPseudoSupervision
from semimed.networks.segmentation import output_layer


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``-coeff`` (Ganin & Lempitsky,
    ICML 2015)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.coeff * grad, None


def grl_coefficient(step: int, hi: float, alpha: float, steps: float) -> float:
    """Warm-start GRL coefficient ``2 hi / (1 + exp(-alpha step / steps)) - hi`` (lo = 0):
    0 at step 0, rising towards ``hi``."""
    return 2.0 * hi / (1.0 + math.exp(-alpha * step / steps)) - hi


def worst_case_loss(logits: Tensor, worst_logits: Tensor, n_lb: int, eta: float) -> Tensor:
    """DST's worst-case estimation loss for logits (B + U, C, ...) of the main head (targets,
    detached here) and of the worst-case head; the first ``n_lb`` rows are labeled."""
    target = hard_labels(logits.detach())
    worst = worst_logits.float()
    on_labeled = F.cross_entropy(worst[:n_lb], target[:n_lb])
    log_wrong = torch.log((1.0 - worst[n_lb:].softmax(1) + 1e-6).clamp(max=1.0))
    return eta * on_labeled + F.nll_loss(log_wrong, target[n_lb:])


def confident_ce(student: Tensor, teacher: Tensor, threshold: float) -> Tensor:
    """CE of student logits (B, C, ...) against the teacher's argmax (detached), kept where the
    teacher's max softmax >= ``threshold``, averaged over all voxels (FixMatch-style)."""
    confidence, target = teacher.detach().float().softmax(1).max(1)
    return masked_cross_entropy(student.float(), target, confidence >= threshold)


class SideHeads(nn.Module):
    """Pseudo head and worst-case head beside a network's output layer: fresh copies of that
    layer, fed its input (captured by a forward hook while that layer is in training mode)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        layer = output_layer(net)
        self.pseudo, self.worst = copy.deepcopy(layer), copy.deepcopy(layer)
        for head in (self.pseudo, self.worst):
            head.reset_parameters()
        self._features: Tensor | None = None
        layer.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._features = inputs[0] if module.training else None

    def forward(self, main: Tensor, grl_coeff: float) -> tuple[Tensor, Tensor]:
        """Logits of the pseudo head and of the worst-case head (behind the GRL) for the last
        training forward of the network, whose main logits ``main`` they must match."""
        features, self._features = self._features, None
        if features is None:
            raise RuntimeError("SideHeads: run the network in training mode first")
        pseudo = self.pseudo(features)
        worst = self.worst(GradientReversal.apply(features, grl_coeff))
        if pseudo.shape != main.shape:
            raise RuntimeError(
                f"SideHeads: the network's last convolution gives {tuple(pseudo.shape)}, not "
                f"its output {tuple(main.shape)}; DST needs it to be the output layer"
            )
        return pseudo, worst


class DST(CrossPseudoSupervision):
    """Batch as CPS: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "dst"

    @dataclass(frozen=True)
    class Params(CrossPseudoSupervision.Params):
        # final weight of pseudo + worst-case terms (DHC protocol: 0.1; train_dst.py: 1), >= 0
        cps_weight: float = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC: all), [0, 1]
        rampup: float = 1.0
        # pseudo-labels kept where max softmax >= this (DHC)
        threshold: Annotated[float, Range(ge=0, le=1)] = 0.95
        # eta', weight of the labeled part of the worst-case loss (DHC)
        eta: Annotated[float, Range(ge=0)] = 2.0
        # GRL coefficient limit "hi" (DHC)
        grl_max: Annotated[float, Range(ge=0)] = 0.1
        # GRL warm-up speed alpha (DHC)
        grl_alpha: Annotated[float, Range(gt=0)] = 1.0
        # GRL warm-up scale N in steps (DHC: 500 iterations)
        grl_steps: Annotated[int, Range(ge=1)] = 500

    intrinsic_why = PAIR_WHY + " (+ pseudo and worst-case heads)"
    intrinsic_side_layers = 2  # SideHeads: two copies of the output layer on every pass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heads = SideHeads(self.net)
        self.heads2 = SideHeads(self.net2)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, y_lb = batch["x_lb"], batch["y_lb"]
        x = torch.cat([x_lb, batch["x_ulb_w"]])
        n = len(x_lb)
        p = self.params
        coeff = grl_coefficient(step, p.grl_max, p.grl_alpha, p.grl_steps)
        logits_a = self.net(x)
        pseudo_a, worst_a = self.heads(logits_a, coeff)
        logits_b = self.net2(x)
        pseudo_b, worst_b = self.heads2(logits_b, coeff)
        sup = self.supervised_loss(logits_a[:n], y_lb, None) + self.supervised_loss(
            logits_b[:n], y_lb, None
        )
        # Each pseudo head learns from the other network's main head (detached in the loss).
        pseudo = confident_ce(pseudo_a, logits_b, p.threshold) + confident_ce(
            pseudo_b, logits_a, p.threshold
        )
        worst = worst_case_loss(logits_a, worst_a, n, p.eta) + worst_case_loss(
            logits_b, worst_b, n, p.eta
        )
        unsup = pseudo + worst
        return ramped_terms(
            sup,
            unsup,
            p.cps_weight,
            step,
            p.rampup * self.total_steps,
            pseudo=pseudo,
            worst=worst,
        )
