"""Intrinsic cost rules that several methods share (see ``Method.intrinsic_passes``).

A rule maps ``(b, u, params)``, for b labeled and u unlabeled images per step (segmentation:
crops) and the method's Params, to ``(images forwarded, images back-propagated)`` through the
task's network(s) in one training step. The benchmark prices a step at forward + 2 * backward,
so ``supervised`` costs 3 b, and compares that with what the method measurably does.
"""

from __future__ import annotations

from typing import Any

# Why, for every method that trains two networks on the same images (the CPS family).
PAIR_WHY = "two networks, each on labeled + unlabeled"


def labeled_pass(b: int, u: int, params: Any) -> tuple[int, int]:
    """One pass over the labeled batch (supervised baselines)."""
    return b, b


def joint_pass(b: int, u: int, params: Any) -> tuple[int, int]:
    """Labeled + weak + strong views in one pass, all trained (FixMatch-like)."""
    return b + 2 * u, b + 2 * u


def teacher_pass(b: int, u: int, params: Any) -> tuple[int, int]:
    """Student on labeled + one unlabeled view; an EMA teacher on another, without grad."""
    return b + 2 * u, b + u


def pair_pass(b: int, u: int, params: Any) -> tuple[int, int]:
    """Two networks, each trained on labeled + unlabeled (cross pseudo supervision)."""
    return 2 * (b + u), 2 * (b + u)
