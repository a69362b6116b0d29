"""The training budget and the convergence diagnostics of one run (no torch: plain numbers).

Budget: `train.steps` is the maximum. `train.epochs` (optional) expresses the budget in passes
over the largest pool the method draws from: an epoch is ``ceil(pool / items drawn from it per
step)`` steps, for the labeled pool (``batch_size`` per step) and, for methods that use it, the
unlabeled pool (``batch_size * unlabeled_ratio``); the run's budget is ``min(steps, ceil(epochs
x the longest epoch))``. The learning-rate schedule spans the budget.

Early stopping (`train.patience` > 0): after each validation, an improvement is a score more
than `train.min_delta` above the best so far; the run stops after `patience` validations in a
row without one, never before `train.min_steps`. The best checkpoint is kept as always.

Converged (the rule the report flags runs by): the run stopped early, or, with at least two
validations, the best score of the last quarter of its validations (``ceil(n / 4)`` of them)
is no more than `train.min_delta` above the best score before them. A run still improving at
its end is *under-trained*: its number says more about the budget than about the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RULE = (
    "converged = stopped early by patience, or (with >= 2 validations) the best validation "
    "score of the last ceil(n/4) validations is no more than train.min_delta above the best "
    "score before them"
)


def budget(steps: int, epochs: float | None, pools: list[tuple[int, int]]) -> int:
    """Steps a run may take: `steps`, or fewer when `epochs` passes over the largest pool
    (`pools`: (items in the pool, items drawn from it per step)) take fewer."""
    if not epochs:
        return steps
    epoch = max(math.ceil(n / per_step) for n, per_step in pools if n)
    return max(1, min(steps, math.ceil(epochs * epoch)))


@dataclass
class Tracker:
    """Validation history, patience and non-finite-step counts of one run (resumable: its
    `state_dict` is plain numbers)."""

    patience: int
    min_steps: int
    min_delta: float
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, val score)
    bad: int = 0  # validations in a row without an improvement
    stopped: bool = False  # early stopping fired
    nonfinite: int = 0  # skipped steps (non-finite loss or gradients), in total
    nonfinite_run: int = 0  # ... in a row, up to the last step

    def validated(self, step: int, score: float) -> bool:
        """Record a validation at `step`; True when early stopping says stop now."""
        best = max((s for _, s in self.history), default=-math.inf)
        self.bad = 0 if score > best + self.min_delta else self.bad + 1
        self.history.append((step, float(score)))
        self.stopped = 0 < self.patience <= self.bad and step >= self.min_steps
        return self.stopped

    def skipped(self, skipped: bool) -> int:
        """Count a step whose update was skipped (or not); returns the run of skips so far."""
        self.nonfinite += int(skipped)
        self.nonfinite_run = self.nonfinite_run + 1 if skipped else 0
        return self.nonfinite_run

    def report(self, last_step: int) -> dict:
        """The diagnostics `train.json` and the metrics carry (see the module docstring)."""
        n = len(self.history)
        q = max(1, math.ceil(n / 4))
        tail, before = self.history[-q:], self.history[:-q]
        gain = max(s for _, s in tail) - max(s for _, s in before) if before else 0.0
        best_step = max(self.history, key=lambda h: h[1])[0] if n else -1
        return {
            "evaluations": n,
            "best_step": best_step,
            "last_step": last_step,
            "stopped_early": self.stopped,
            "last_quarter_gain": round(gain, 6),
            "trend_per_1k_steps": round(_slope(tail) * 1000, 6),
            "converged": self.stopped or (n >= 2 and gain <= self.min_delta),
            "skipped_steps": self.nonfinite,
            "rule": RULE,
        }

    def state_dict(self) -> dict:
        return {
            "history": [list(h) for h in self.history],
            "bad": self.bad,
            "stopped": self.stopped,
            "nonfinite": self.nonfinite,
            "nonfinite_run": self.nonfinite_run,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = [(int(s), float(v)) for s, v in state["history"]]
        self.bad, self.stopped = int(state["bad"]), bool(state["stopped"])
        self.nonfinite, self.nonfinite_run = int(state["nonfinite"]), int(state["nonfinite_run"])


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of score against step (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
