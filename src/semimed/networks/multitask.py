"""Several classification tasks on one backbone: one linear head per task, as one matrix.

A multi-task network's head is one ``nn.Linear(F, K_1 + ... + K_T)``: its row blocks are the
T task heads (each block is an independent linear classifier, and a softmax is taken per
block), so every network keeps the ``Classifier(backbone, head)`` contract. Labels are
``(B, T)`` int64, column t holding task t's class index; single-task code keeps ``(B,)``.
The first task is the primary one: it stratifies the splits, selects checkpoints on the
validation split and gives the headline metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def split_logits(logits: Tensor, task_sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
    """(B, sum K_t) -> T tensors (B, K_t)."""
    if logits.shape[1] != sum(task_sizes):
        raise ValueError(f"logits have {logits.shape[1]} columns; task_sizes sum to {task_sizes}")
    return logits.split(list(task_sizes), dim=1)


def blockwise_softmax(logits: Tensor, task_sizes: tuple[int, ...]) -> Tensor:
    """Softmax within each task's block: (B, sum K_t) -> (B, sum K_t), each block sums to 1."""
    return torch.cat([b.softmax(dim=1) for b in split_logits(logits, task_sizes)], dim=1)


def multitask_cross_entropy(
    logits: Tensor, targets: Tensor, task_sizes: tuple[int, ...], label_smoothing: float = 0.0
) -> Tensor:
    """Sum over tasks of the cross-entropy of each block; ``targets`` (B,) or (B, T).

    With one task this is exactly ``F.cross_entropy``. Tasks are summed, not averaged, so
    adding a task does not shrink the primary task's gradient (the SimCLR echo paper trains
    one probe per task independently, which a sum of separate heads' losses reproduces).
    """
    if len(task_sizes) == 1:
        targets = targets.reshape(-1)
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    if targets.ndim != 2 or targets.shape[1] != len(task_sizes):
        raise ValueError(f"targets must be (B, {len(task_sizes)}); got {tuple(targets.shape)}")
    return sum(
        F.cross_entropy(block, targets[:, t], label_smoothing=label_smoothing)
        for t, block in enumerate(split_logits(logits, task_sizes))
    )
