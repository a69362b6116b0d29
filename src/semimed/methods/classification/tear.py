"""TEAR: FixMatch with an EMA teacher, Adaptive Pseudo Labeling (AdaPL) and Iterative
Prototype Harmonizing (IPH).

Yang, Liu, Chen & Yuan, "Semi-Supervised Medical Image Classification with Temporal
Knowledge-Aware Regularization" (MICCAI 2022). Per step, with U unlabeled images:

    q     = DA(softmax(teacher(x_ulb_w)))       EMA teacher, no gradient, weak view only
    loss  = CE(f(x_lb), y_lb)
          + lambda_u     * mean_u[1(max q >= tau) CE(f(x_ulb_s), argmax q)]          FixMatch
          + lambda_adapl * mean_u[w_u D(sharpen(q_u, T_u), softmax f(x_ulb_s)_u)]    AdaPL
          + lambda_iph   * mean_pairs[1 - cos(student cluster mean, teacher class mean)]  IPH

DA (distribution alignment, as in the authors' code): q = p / mean(last ``da_length``
batch-mean teacher predictions), renormalised; the history starts filled with the uniform
distribution, so early steps are barely aligned. The student's labeled, weak and strong images
share one backbone pass (``features -> net.head``); the teacher runs on the weak view alone, in
eval mode as in the authors' code (no dropout; BatchNorm uses the running statistics that
``update_ema`` copies from the student), and is the evaluated model. Unlike the released
code, whose pseudo-labels come from the student's weak view, the teacher gives them here, as
the paper's temporal-ensemble framing describes.

AdaPL. The paper relaxes hard pseudo-labels to soft ones according to a loss estimate built
from each sample's history across iterations; the released code lacks it (only CLI hints:
weight 0.1, distance mse/kl/emd, re-weighting ``1 / (k + exp(-gamma x))``, gamma in [1, 4],
minimum weight 0.5). OUR choices:
  * loss estimate m_i: an EMA, over the visits of unlabeled sample i (``adapl_momentum``; the
    first visit sets it), of d_i = D(q_i, softmax f(x_ulb_s)_i), the distance between the
    teacher's aligned weak-view distribution and the student's strong-view prediction, taken
    without gradient. Buffer ``adapl_memory`` (num_unlabeled,), indexed by ``batch["i_ulb"]``;
    the current visit is included before m_i is used.
  * temperature T_i = 1 / (k + exp(-gamma m_i)), in [1/(k+1), 1/k): a sample with no estimated
    loss is sharpened as in MixMatch (T = 1/2 for k = 1), one with a large estimate keeps the
    teacher's own distribution (T -> 1).
  * weight w_i = max(min_weight, 1 - r_i) with r_i = (T_i - 1/(k+1)) k (k+1) in [0, 1), the
    share of the way from the sharpest to the softest target.
  * the term covers every unlabeled sample (no confidence mask): the weights, not a threshold,
    temper unreliable ones; D is ``mse`` (sum over classes of squared differences) or ``kl``
    (KL(target || student)); ``emd`` is not offered.
IPH. The student's weak-view unlabeled features are clustered into K = num_classes groups by a
deterministic k-means (``losses.kmeans_assign``, ``iph_iters`` Lloyd steps); a student
prototype is a cluster's mean feature (with gradient), a teacher prototype the mean teacher
feature of the samples the teacher assigns (argmax q) to a class. OUR choice: clusters are
matched to classes one-to-one by the Hungarian algorithm on cosine similarity (the released
code paired cluster k with class k, an arbitrary order); the loss averages 1 - cos over the
pairs of non-empty clusters and present classes. AdaPL and IPH each cost one host sync per
step on a GPU (the Hungarian matching runs on the CPU).
DDP: the alignment history and the AdaPL memory record the rows of every process
(``gather.all_rows``); the losses use the local share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semimed.config.checks import Checked, OneOf, Range
from semimed.methods.base import Method
from semimed.methods.classification.gather import all_rows
from semimed.methods.classification.losses import (
    group_means,
    kmeans_assign,
    matched_prototype_loss,
    sharpen,
)
from semimed.methods.ema import make_teacher, update_ema, warmup_decay
from semimed.methods.losses import confident_pseudo_label_loss

DISTANCES = ("mse", "kl")


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (no dropout, BatchNorm running statistics), then each
    sub-module's own mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def distance(target: Tensor, logits: Tensor, kind: str) -> Tensor:
    """Per-sample distance (U,) between target distributions (U, C) and softmax(logits (U, C))."""
    if kind == "kl":
        return F.kl_div(logits.log_softmax(dim=1), target, reduction="none").sum(dim=1)
    return (target - logits.softmax(dim=1)).pow(2).sum(dim=1)


def adapl_relaxation(
    loss_estimate: Tensor, gamma: float, k: float, min_weight: float
) -> tuple[Tensor, Tensor]:
    """Sharpening temperature (U,) and weight (U,) from loss estimates (U,) >= 0 (see above)."""
    temperature = 1.0 / (k + torch.exp(-gamma * loss_estimate))
    relaxation = (temperature - 1.0 / (k + 1.0)) * k * (k + 1.0)
    return temperature, (1.0 - relaxation).clamp_min(min_weight)


class TEAR(Method):
    """Batch: ``x_lb`` (B, 1, H, W), ``y_lb`` (B,), ``x_ulb_w``, ``x_ulb_s`` (U, 1, H, W),
    ``i_ulb`` (U,) int64 positions in the unlabeled pool (< ``num_unlabeled``)."""

    name = "tear"
    uses_unlabeled = True
    views = ("w", "s")

    @dataclass(frozen=True)
    class Params(Checked):
        # aligned teacher confidence a hard pseudo-label needs
        threshold: Annotated[float, Range(ge=0, le=1)] = 0.95
        # weight of the FixMatch term
        lambda_u: Annotated[float, Range(ge=0)] = 1.0
        # teacher EMA decay per step (teacher is evaluated; paper: 0.999)
        ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.99
        # batch-mean predictions averaged by distribution alignment
        da_length: Annotated[int, Range(ge=1)] = 32
        # weight of the AdaPL term
        lambda_adapl: Annotated[float, Range(ge=0)] = 0.1
        # D between soft target and student
        adapl_distance: Annotated[str, OneOf(*DISTANCES)] = "mse"
        # gamma of 1 / (k + exp(-gamma m))
        adapl_gamma: Annotated[float, Range(ge=1, le=4)] = 1.0
        # k of the same sigmoid: temperatures in [1/(k+1), 1/k)
        adapl_k: Annotated[float, Range(ge=1)] = 1.0
        # floor of a sample's AdaPL weight
        adapl_min_weight: Annotated[float, Range(ge=0, le=1)] = 0.5
        # EMA momentum of a sample's loss estimate per visit
        adapl_momentum: Annotated[float, Range(ge=0, lt=1)] = 0.7
        # weight of the IPH term
        lambda_iph: Annotated[float, Range(ge=0)] = 0.1
        # Lloyd iterations of the per-batch k-means
        iph_iters: Annotated[int, Range(ge=1)] = 5

    intrinsic_why = "student on labeled + weak + strong; EMA teacher on weak, no grad"

    @staticmethod
    def intrinsic_passes(b: int, u: int, params: TEAR.Params) -> tuple[int, int]:
        return b + 3 * u, b + 2 * u

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = make_teacher(self.net)
        c = self.num_classes
        uniform = torch.full((self.params.da_length, c), 1.0 / c)
        self.register_buffer("da_history", uniform)
        self.register_buffer("da_next", torch.zeros((), dtype=torch.long))  # row to overwrite
        self.register_buffer("adapl_memory", torch.zeros(self.num_unlabeled))
        self.register_buffer("adapl_seen", torch.zeros(self.num_unlabeled, dtype=torch.bool))

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        if self.num_unlabeled < 1:
            raise RuntimeError("tear: needs num_unlabeled >= 1 (its per-sample AdaPL memory)")
        x_lb, x_ulb_w, x_ulb_s = batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]
        sizes = [len(x_lb), len(x_ulb_w), len(x_ulb_s)]
        features = self.net.backbone(torch.cat([x_lb, x_ulb_w, x_ulb_s]))
        logits_lb, _, logits_s = self.net.head(features).split(sizes)
        with torch.no_grad(), eval_mode(self.teacher):
            teacher_features = self.teacher.backbone(x_ulb_w)
            targets = self._align(self.teacher.head(teacher_features).float().softmax(dim=1))

        p = self.params
        sup = F.cross_entropy(logits_lb, batch["y_lb"])
        # Log-probabilities are logits whose softmax gives the aligned probabilities back.
        unsup, mask = confident_pseudo_label_loss(targets.log(), logits_s, p.threshold)
        adapl, weight = self._adapl(targets, logits_s, batch["i_ulb"])
        iph = self._iph(features.split(sizes)[1], teacher_features, targets.argmax(dim=1))
        return {
            "loss": sup + p.lambda_u * unsup + p.lambda_adapl * adapl + p.lambda_iph * iph,
            "sup": sup,
            "unsup": unsup,
            "adapl": adapl,
            "iph": iph,
            "mask_ratio": mask.float().mean(),
            "adapl_weight": weight.mean(),
        }

    @torch.no_grad()
    def _align(self, probs: Tensor) -> Tensor:
        """Distribution alignment of teacher probabilities (U, C); records their batch mean."""
        # index_copy_ with a tensor row keeps the step free of host syncs on a GPU; under DDP
        # the batch mean is over every process's rows.
        batch_mean = all_rows(probs).mean(dim=0, keepdim=True)
        self.da_history.index_copy_(0, self.da_next.view(1), batch_mean)
        self.da_next.add_(1).remainder_(len(self.da_history))
        aligned = probs / self.da_history.mean(dim=0)
        return aligned / aligned.sum(dim=1, keepdim=True)

    def _adapl(self, targets: Tensor, logits_s: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """AdaPL term and per-sample weights (U,); updates the memory at ``index`` (U,)."""
        p = self.params
        with torch.no_grad():
            d = distance(targets, logits_s, p.adapl_distance).float()
            past = p.adapl_momentum * self.adapl_memory[index] + (1 - p.adapl_momentum) * d
            estimate = torch.where(self.adapl_seen[index], past, d)
            # Under DDP every process records every process's samples (the buffers are rank 0's
            # after the step).
            every_index = all_rows(index)
            self.adapl_memory[every_index] = all_rows(estimate)
            self.adapl_seen[every_index] = True
            temperature, weight = adapl_relaxation(
                estimate, p.adapl_gamma, p.adapl_k, p.adapl_min_weight
            )
            soft = sharpen(targets, temperature[:, None])
        return (weight * distance(soft, logits_s, p.adapl_distance)).mean(), weight

    def _iph(self, features_w: Tensor, teacher_features: Tensor, teacher_labels: Tensor) -> Tensor:
        """IPH term from student (U, F) and teacher (U, F) weak-view features."""
        k = self.num_classes
        # In float32 even under autocast: 1 - cos is often ~1e-2, which bf16 rounds to 0.
        with torch.autocast(features_w.device.type, enabled=False):
            student, teacher = features_w.float(), teacher_features.float()
            clusters = kmeans_assign(student, k, self.params.iph_iters)
            return matched_prototype_loss(
                *group_means(student, clusters, k), *group_means(teacher, teacher_labels, k)
            )

    def on_step_end(self, step: int) -> None:
        decay = warmup_decay(self.params.ema_decay, step)
        update_ema(self.teacher, self.net, decay, self.update_applied)

    def inference_model(self) -> nn.Module:
        return self.teacher
