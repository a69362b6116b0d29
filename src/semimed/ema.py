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
def update_ema(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: teacher params <- decay * teacher + (1 - decay) * student; buffers copied.

    Buffers (BatchNorm running statistics, counters) are copied rather than averaged: they are
    statistics of the data, not learned weights, and the student's are the current ones.
    Both modules must have the same architecture (same parameter and buffer order).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay: must be in [0, 1], got {decay}")
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s, 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
