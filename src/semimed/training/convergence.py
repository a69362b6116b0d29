"""The training budget, the stop rule and the convergence diagnostics of one run (no torch:
plain numbers).

Budget: `train.steps` is the maximum. `train.epochs` (optional) expresses the budget in passes
over the largest pool the method draws from: an epoch is ``ceil(pool / items drawn from it per
step)`` steps, for the labeled pool (``batch_size`` per step) and, for methods that use it, the
unlabeled pool (``batch_size * unlabeled_ratio``); the run's budget is ``min(steps, ceil(epochs
x the longest epoch))``. The learning-rate schedule spans the budget.

Stop protocol (`train.stop`): ``fixed`` trains every run `train.steps` steps (no early stop,
`patience` ignored, `epochs` refused), so every method of a task gets the same budget;
``early`` applies the early-stopping rule below when `train.patience` > 0.

Early stopping, on the smoothed validation curve: after each validation the smoothed score is
the mean of the last `train.smooth` validation scores (fewer at the start; 1 = the raw score).
The score to beat starts at the first smoothed score and moves only on an improvement, a
smoothed score more than `train.min_delta` above it (the convention of Keras' and Lightning's
EarlyStopping); `bad` counts the validations since the last improvement. The run stops when
``bad >= patience``, the step is at least `train.min_steps`, and the smoothed curve is not
still rising: the least-squares slope of its last ``2 x patience`` values (fewer at the
start) is not positive. The best checkpoint is chosen on the
raw validation score, whatever the rule.

Converged (the rule the report flags runs by): the run stopped early, or, with at least two
validations, the best smoothed score of the last quarter of its validations (``ceil(n / 4)``
of them) is no more than `train.min_delta` above the best smoothed score before them. A run
still improving at its end is *under-trained*: its number says more about the budget than
about the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RULE = (
    "converged = stopped early by patience (no smoothed gain of more than train.min_delta over "
    "the score to beat for train.patience validations, and the least-squares slope of the last "
    "2 x train.patience smoothed scores not positive), "
    "or (with >= 2 validations) the best smoothed validation score of the last ceil(n/4) "
    "validations is no more than train.min_delta above the best smoothed score before them; "
    "smoothed = mean of the last train.smooth validation scores"
)


def budget(steps: int, epochs: float | None, pools: list[tuple[int, int]]) -> int:
    """Steps a run may take: `steps`, or fewer when `epochs` passes over the largest pool
    (`pools`: (items in the pool, items drawn from it per step)) take fewer."""
    if not epochs:
        return steps
    epoch = max(math.ceil(n / per_step) for n, per_step in pools if n)
    return max(1, min(steps, math.ceil(epochs * epoch)))


def protocol(train) -> dict:
    """The budget protocol of a task's `train` section, as the report states it: ``stop``,
    the keys that rule reads, and ``text``, one sentence."""
    if train.stop == "fixed":
        return {
            "stop": "fixed",
            "steps": train.steps,
            "text": f"fixed budget: every method trains {train.steps:,} steps; the best "
            "validation checkpoint is tested",
        }
    keys = ("steps", "epochs", "patience", "min_steps", "min_delta", "smooth")
    out: dict = {"stop": "early"} | {k: getattr(train, k) for k in keys}
    out["text"] = (
        f"early stopping: at most {train.steps:,} steps"
        + (f" or {train.epochs:g} epochs, whichever is fewer" if train.epochs else "")
        + (
            f"; a run stops after {train.patience} validations without a gain of more than "
            f"{train.min_delta:g} in the mean of the last {train.smooth} validation scores, "
            f"unless that mean still rises, never before step {train.min_steps:,}"
            if train.patience
            else "; patience 0: no run stops early"
        )
        + "; the best validation checkpoint is tested"
    )
    return out


def smoothed(scores: list[float], k: int) -> list[float]:
    """Trailing running mean of `scores` over the last `k` values (fewer at the start)."""
    windows = (scores[max(0, i + 1 - k) : i + 1] for i in range(len(scores)))
    return [sum(w) / len(w) for w in windows]


@dataclass
class Tracker:
    """Validation history, the stop rule's state and non-finite-step counts of one run
    (resumable: its `state_dict` is plain numbers; `load_state_dict` replays the stop rule
    over the saved history and reads only that and the skip counts)."""

    patience: int  # 0: never stops early (train.stop fixed, or patience 0)
    min_steps: int
    min_delta: float
    smooth: int = 1  # validations in the running mean
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, raw val score)
    to_beat: float = -math.inf  # smoothed score an improvement must beat by min_delta
    bad: int = 0  # validations since the last improvement
    stopped: bool = False  # early stopping fired
    nonfinite: int = 0  # skipped steps (non-finite loss or gradients), in total
    nonfinite_run: int = 0  # ... in a row, up to the last step

    @classmethod
    def for_train(cls, t) -> Tracker:
        """The tracker of a run with train section `t` (`train.stop` fixed: patience 0)."""
        return cls(t.patience if t.stop == "early" else 0, t.min_steps, t.min_delta, t.smooth)

    def curve(self) -> list[float]:
        """The smoothed validation curve, one value per validation."""
        return smoothed([s for _, s in self.history], self.smooth)

    def validated(self, step: int, score: float) -> bool:
        """Record a validation at `step`; True when early stopping says stop now."""
        self.history.append((step, float(score)))
        curve = self.curve()
        if curve[-1] > self.to_beat + self.min_delta or len(curve) == 1:
            self.to_beat, self.bad = curve[-1], 0
        else:
            self.bad += 1
        p = self.patience
        self.stopped = 0 < p <= self.bad and step >= self.min_steps and not self._rising(curve)
        return self.stopped

    def _rising(self, curve: list[float]) -> bool:
        """The least-squares slope of the last 2 x patience smoothed scores (fewer at the
        start), against the validation's index, is positive."""
        return _slope(list(enumerate(curve[-2 * self.patience :]))) > 0

    def skipped(self, skipped: bool) -> int:
        """Count a step whose update was skipped (or not); returns the run of skips so far."""
        self.nonfinite += int(skipped)
        self.nonfinite_run = self.nonfinite_run + 1 if skipped else 0
        return self.nonfinite_run

    def report(self, last_step: int) -> dict:
        """The diagnostics `train.json` and the metrics carry (see the module docstring)."""
        n = len(self.history)
        q = max(1, math.ceil(n / 4))
        curve = list(zip([h[0] for h in self.history], self.curve(), strict=True))
        tail, before = curve[-q:], curve[:-q]
        gain = max(s for _, s in tail) - max(s for _, s in before) if before else 0.0
        best_step = max(self.history, key=lambda h: h[1])[0] if n else -1  # on the raw score
        return {
            "evaluations": n,
            "best_step": best_step,
            "last_step": last_step,
            "stopped_early": self.stopped,
            "last_quarter_gain": round(gain, 6),
            "trend_per_1k_steps": round(_slope(tail) * 1000, 6),
            "converged": self.stopped or (n >= 2 and gain <= self.min_delta),
            "skipped_steps": self.nonfinite,
            "smooth": self.smooth,
            "rule": RULE,
        }

    def state_dict(self) -> dict:
        return {
            "history": [list(h) for h in self.history],
            "to_beat": self.to_beat,
            "bad": self.bad,
            "stopped": self.stopped,
            "nonfinite": self.nonfinite,
            "nonfinite_run": self.nonfinite_run,
        }

    def load_state_dict(self, state: dict) -> None:
        history = [(int(s), float(v)) for s, v in state["history"]]
        self.history, self.to_beat, self.bad, self.stopped = [], -math.inf, 0, False
        for step, score in history:  # replays the rule: the same state as the saved run's
            self.validated(step, score)
        self.nonfinite, self.nonfinite_run = int(state["nonfinite"]), int(state["nonfinite_run"])


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of score against step (0 for fewer than two points)."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
