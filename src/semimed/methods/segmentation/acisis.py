"""AcISIS (Basak et al.) on Mean Teacher: class-wise sampling driven by a fused confidence score.

Basak, Ghosal & Sarkar, "Addressing Class Imbalance in Semi-supervised Image Segmentation: A
Study on Cardiac MRI" (MICCAI 2022). A confidence array records how well each class is learned;
a fuzzy rank fusion of several confidence indicators (Gompertz function) turns it into one score
per class; the unsupervised loss samples the pseudo-labelled voxels of each class with a rate
that grows as the score falls ("robust class-wise sampling"), each kept voxel weighted by the
prediction's confidence ("dynamic stabilisation").

As DHC (Wang & Li, MICCAI 2023, ``train_acisis.py``) computes it: a student and an EMA teacher
(same unlabeled crops, no extra perturbation); per class c, on the labeled voxels of class c of
the student's softmax p (``mean_c`` = mean over them):

    I = [mean_c(p_c * sum_k log p_k), mean_c(p_c), mean_c(max_k p_k - p_c)]   (3, C)
    R = softmax_c(I)  (per indicator);  G = 1 - exp(-exp(-2 R))  (Gompertz)
    per indicator the ``penalised`` classes with the largest G get G := 0.632, R := 0
    s_c = (1 - sum_i R_ic / 3) * sum_i G_ic;  s <- s / max s;  CC <- m CC + (1 - m) s
    r_c = ((1 - CC_c) / max_k (1 - CC_k)) ** lambda                      (sampling rate)
    mask(v) = [u_v < r_{argmax f(x_u)_v}] * max_k softmax f(x_u)_{v,k} ** beta
    unsup = mean_v mask(v) CE(f(x_u)_v, argmax teacher(x_u)_v)

loss = Dice + CE (unweighted: the script's 'wce+dice' is built without weights; DHC's batch
Dice without background, ``dice="dhc"``) + unsup (weight 1, no ramp-up; the default here is
weight 0.1 with a sigmoid ramp-up over the whole run, the protocol of DHC's published tables).
The student is validated and saved, as in DHC.

Per-step form: DHC averages the indicators over an epoch and updates CC once per epoch (about
500 updates, momentum 0.99); we update CC every step (400 updates), so its buffer moves on the
same time scale. DHC keeps the 12 lowest Gompertz values of its 14 (Synapse) or 16 (AMOS)
classes and cannot run with 12 or fewer; ``penalised`` (DHC Synapse: 14 - 12 = 2) counts the
penalised classes instead. DHC's EMA teacher uses ``min(0.99, 1 - 1 / (epoch + 1))`` with the
epoch index; ours the step index (``semimed.methods.ema.warmup_decay``). A class absent from a step's
labeled crops scores 0 on each indicator that step, as in DHC. DHC multiplies the (B, D, H, W)
probability maps by (B, 1, D, H, W) label masks, which broadcasts to every pair of crops (crop
j's probabilities at crop i's labels); we pair each crop with its own labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from semimed.config.checks import Range
from semimed.methods.cost import teacher_pass
from semimed.methods.losses import hard_labels, masked_cross_entropy, ramped_terms
from semimed.methods.segmentation.class_weights import (
    class_sampling_mask,
    ema_,
    label_class_sums,
    sampling_rates,
)
from semimed.methods.segmentation.mean_teacher import MeanTeacher

# Fuzzy rank fusion constants (the method's, not tunable): a penalised rank takes the Gompertz
# value at 0, 1 - exp(-1), the worst rank; a penalised confidence counts as 0.
PENALTY_RANK = 1.0 - math.exp(-1.0)
PENALTY_CONFIDENCE = 0.0


@torch.no_grad()
def confidence_indicators(logits: Tensor, labels: Tensor) -> Tensor:
    """Basak et al.'s three class-wise indicators (3, C) on logits (B, C, ...) and labels
    (B, 1, ...), as DHC computes them: entropy term, confidence, gap to the top probability."""
    probs = logits.float().softmax(1)
    terms = (
        probs * probs.add(1e-12).log().sum(1, keepdim=True),
        probs,
        probs.max(1, keepdim=True).values - probs,
    )
    rows = []
    for values in terms:
        sums, counts = label_class_sums(values, labels)
        rows.append(sums / (counts + 1e-12))
    return torch.stack(rows)


def fuzzy_rank_scores(indicators: Tensor, penalised: int) -> Tensor:
    """Fused class scores (C,) with maximum 1 from indicators (K, C) by fuzzy rank fusion (see
    the module docstring); per indicator the ``penalised`` largest Gompertz ranks are replaced
    by the penalty."""
    norm = indicators.float().softmax(1)
    rank = 1.0 - torch.exp(-torch.exp(-2.0 * norm))
    keep = max(rank.shape[1] - penalised, 0)
    kept = torch.zeros_like(rank, dtype=torch.bool)
    kept.scatter_(1, rank.argsort(dim=1)[:, :keep], True)
    fused_rank = torch.where(kept, rank, PENALTY_RANK).sum(0)
    fused_confidence = 1.0 - torch.where(kept, norm, PENALTY_CONFIDENCE).sum(0) / len(norm)
    score = fused_confidence * fused_rank
    return score / score.max()


class AcISIS(MeanTeacher):
    """Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "acisis"
    views = ("w",)

    @dataclass(frozen=True)
    class Params(MeanTeacher.Params):
        # teacher EMA decay per step (DHC), [0, 1)
        ema_decay: float = 0.99
        # weight of the sampled pseudo-label CE (DHC protocol: 0.1; train_acisis.py: 1), >= 0
        consistency: float = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC protocol: all), [0, 1]
        rampup: float = 1.0
        # EMA momentum of the class scores CC per step
        score_momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99
        # classes per indicator given the penalty rank (DHC Synapse)
        penalised: Annotated[int, Range(ge=0)] = 2
        # lambda, exponent of the sampling rates (DHC)
        rate_power: Annotated[float, Range(gt=0)] = 2.5
        # beta, exponent of the voxel confidence (DHC)
        stabilise_power: Annotated[float, Range(ge=0)] = 1.5
        # Dice of the supervised term (DHC's code: "dhc")
        dice: str = "dhc"

    intrinsic_passes = staticmethod(teacher_pass)
    intrinsic_why = "student on labeled + unlabeled; EMA teacher on unlabeled, no grad"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # CC: fused class scores; 0 = every sampling rate 1 until the first update.
        self.register_buffer("class_scores", torch.zeros(self.num_classes))

    @torch.no_grad()
    def update_rates(self, logits_lb: Tensor, y_lb: Tensor) -> Tensor:
        """One EMA step of the class scores from the labeled logits; the sampling rates (C,)."""
        fused = fuzzy_rank_scores(confidence_indicators(logits_lb, y_lb), self.params.penalised)
        ema_(self.class_scores, fused, self.params.score_momentum)
        return sampling_rates(self.class_scores, self.params.rate_power)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, y_lb, x_ulb = batch["x_lb"], batch["y_lb"], batch["x_ulb_w"]
        n = len(x_lb)
        logits = self.net(torch.cat([x_lb, x_ulb]))
        logits_lb, logits_ulb = logits[:n], logits[n:]
        with torch.no_grad():
            target = hard_labels(self.teacher(x_ulb))
            rates = self.update_rates(logits_lb.detach(), y_lb)
            confidence = logits_ulb.detach().float().softmax(1).max(1).values
            mask = class_sampling_mask(logits_ulb.detach(), rates)
            mask = mask * confidence.pow(self.params.stabilise_power)
        sup = self.supervised_loss(logits_lb, y_lb)
        unsup = masked_cross_entropy(logits_ulb.float(), target, mask)
        return ramped_terms(
            sup, unsup, self.params.consistency, step, self.params.rampup * self.total_steps
        )

    def inference_model(self) -> nn.Module:
        return self.net
