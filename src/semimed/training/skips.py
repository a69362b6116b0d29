"""Skipped updates of the training loop: a step whose loss or gradients are not finite applies
no update (`semimed.training.optimization.optimizer_step`); the loop counts it in the run's
`Tracker` and stops the run after `train.max_nonfinite` of them in a row.

`count_skip` counts a step decided on the host; `DeviceSkips` counts the steps of the
sync-free path on the device and reads them back at the loop's validation and checkpoint
points.
"""

from __future__ import annotations

import torch


def count_skip(tracker, stepped: bool, step: int, run: str, task: str, limit: int) -> None:
    """Count a skipped update; stop the run after `limit` in a row (`train.max_nonfinite`)."""
    streak = tracker.skipped(not stepped)
    if not stepped:
        print(f"warning: {run}: non-finite loss or gradients at step {step + 1}; update skipped")
    _stop_if(streak, limit, step + 1, run, task)


def _stop_if(streak: int, limit: int, step: int, run: str, task: str) -> None:
    if streak >= limit:
        raise RuntimeError(
            f"{run}: {streak} steps in a row with a non-finite loss or gradients (up to step "
            f"{step}); stopping. Lower {task}.train.lr, set {task}.train.grad_clip, or "
            "check the data for NaN"
        )


class DeviceSkips:
    """Updates skipped on the device (`optimizer_step`'s sync-free path), counted there: one
    tensor (skipped so far, skipped in a row now, longest run in a row) that `flush` reads back
    into the `Tracker` at the loop's validation and checkpoint points. A run of
    `train.max_nonfinite` skips therefore stops the run at the next such point."""

    def __init__(self) -> None:
        self.state = None

    def record(self, applied: torch.Tensor, run_before: int) -> None:
        """Count one step; `applied` is 1.0 or 0.0 (0-dim, on the device)."""
        if self.state is None:  # carries the tracker's run in a row (host steps, resumes)
            self.state = applied.new_tensor([0.0, run_before, run_before])
        skipped = 1.0 - applied
        self.state[0] += skipped
        self.state[1].add_(1.0).mul_(skipped)
        torch.maximum(self.state[2], self.state[1], out=self.state[2])

    def flush(self, tracker, step: int, run: str, task: str, limit: int) -> None:
        """Add the skips since the last flush to `tracker`; warn; stop after `limit` in a row."""
        if self.state is None:
            return
        skipped, in_a_row, longest = (int(v) for v in self.state.tolist())
        self.state = None
        tracker.nonfinite += skipped
        tracker.nonfinite_run = in_a_row
        if skipped:
            print(
                f"warning: {run}: {skipped} update(s) skipped (non-finite loss or gradients) "
                f"by step {step}"
            )
        _stop_if(longest, limit, step, run, task)
