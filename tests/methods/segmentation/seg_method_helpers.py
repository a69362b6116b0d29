"""Shared by the segmentation method tests (not a test file): gradient checks and hand-built
logits / labels; the tiny UNet and the fixed batch are in tests/seg_helpers.py."""

import torch
import torch.nn.functional as F
from seg_helpers import NUM_CLASSES, trainable


def grads_reach(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable(module))


def param_grads_reach(params):
    """``grads_reach`` over an iterable of parameters."""
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def hand_logits(columns):
    """Logits (1, C, V, 1, 1) whose softmax has the given per-voxel probability columns."""
    probs = torch.tensor(columns, dtype=torch.float32).T  # (C, V)
    return probs.log().reshape(1, len(probs), -1, 1, 1)


def hand_labels(labels):
    return torch.tensor(labels).reshape(1, 1, -1, 1, 1)


def one_hot_logits(labels, scale=5.0):
    """Logits (N, C, V) whose argmax is ``labels`` (N, V)."""
    return scale * F.one_hot(torch.tensor(labels), NUM_CLASSES).movedim(-1, 1).float()
