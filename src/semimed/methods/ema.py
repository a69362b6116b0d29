"""Exponential moving average (EMA) of a network's weights: the Mean Teacher update.

theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student   (Tarvainen & Valpola,
"Mean teachers are better role models", NeurIPS 2017, eq. 1). FixMatch-style methods keep
the same average only to evaluate it (Sohn et al. 2020; USB, Wang et al. NeurIPS 2022).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """Return a frozen deep copy of ``student`` (same weights, ``requires_grad=False``).

    The copy's train/eval mode is left to its owner: as a sub-module of a Method it follows
    ``method.train()`` / ``method.eval()``. During training the teacher therefore sees its own
    dropout noise, as in Tarvainen & Valpola (2017), where both student and teacher are noisy.
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


def warmup_decay(decay: float, step: int) -> float:
    """EMA decay for 0-based ``step``: ``min(decay, 1 - 1 / (step + 1))``.

    Early in training a high decay would keep the teacher near the random initialisation;
    this ramp (from the Mean Teacher reference code) makes the teacher the true running mean
    of all student weights so far until that mean's weight drops below ``1 - decay``.
    """
    return min(decay, 1.0 - 1.0 / (step + 1))


@torch.no_grad()
def update_ema(
    teacher: nn.Module, student: nn.Module, decay: float, applied: torch.Tensor | None = None
) -> None:
    """In place: teacher params <- decay * teacher + (1 - decay) * student; buffers copied.

    Buffers (BatchNorm running statistics, counters) are copied rather than averaged: they are
    statistics of the data, not learned weights, and the student's are the current ones.
    Both modules must have the same architecture (same parameter and buffer order). One
    multi-tensor kernel per group of tensors (``torch._foreach_lerp_``, as PyTorch's optimizers
    and timm's EMA), the same values as a ``lerp_`` per parameter.

    ``applied``: a 0-dim tensor, 1.0 or 0.0, on the parameters' device (the training loop's
    ``Method.update_applied``): 0.0 when the optimizer skipped this step's update on the device
    (non-finite loss or gradients), which leaves the parameters as they are without reading
    the flag back to the host; None = applied.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay: must be in [0, 1], got {decay}")
    params_t, params_s = list(teacher.parameters()), list(student.parameters())
    buffers_t, buffers_s = list(teacher.buffers()), list(student.buffers())
    if len(params_t) != len(params_s) or len(buffers_t) != len(buffers_s):
        raise ValueError(
            "update_ema: teacher and student differ in architecture "
            f"({len(params_t)} vs {len(params_s)} parameters, "
            f"{len(buffers_t)} vs {len(buffers_s)} buffers)"
        )
    weight = 1.0 - decay
    if params_t:
        if applied is None:
            torch._foreach_lerp_(params_t, params_s, weight)
        else:  # one weight tensor per parameter: a tensor passed as the Scalar weight is read
            w = weight * applied.float()  # back to the host
            torch._foreach_lerp_(params_t, params_s, [w] * len(params_t))
    if buffers_t:
        torch._foreach_copy_(buffers_t, buffers_s)
