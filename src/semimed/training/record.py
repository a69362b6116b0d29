"""A run's ``train.json``: what the loop writes (`summary`) and what evaluation and the report
read back from it (`training_record`).

No torch here, and no import of the loop: the evaluate and report stages import this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from semimed.tasks import spec

# train.json -> the metrics file's "training" block: (key in train.json's "convergence"
# block, or at its top level) -> type. Numbers and bools only, so DVC can show and diff them.
CONVERGENCE = {
    "evaluations": int,
    "best_step": int,
    "last_step": int,
    "stopped_early": bool,
    "converged": bool,
    "last_quarter_gain": float,
    "trend_per_1k_steps": float,
    "skipped_steps": int,  # steps whose update the loop skipped (non-finite loss or gradients)
}
TOP = {"max_steps": int, "budget_steps": int, "best_step": int, "last_step": int}


def summary(
    cfg,
    t,
    best: dict,
    tracker,
    seconds: float,
    fp: str,
    *,
    method: str,
    seed: int,
    device: str,
    first_step: float | None,
) -> dict:
    """train.json: what happened in one run, also kept in a finished run's last.pt.

    Args:
        cfg: the task's config; `t` its train section with the run's budget as ``steps``.
        best: ``{"score", "step"}`` of the best validation.
        tracker: the run's `semimed.training.convergence.Tracker` (its diagnostics).
        seconds: wall time of the run, over every session of it.
        fp: the run's checkpoint fingerprint.
        device: where it trained (``"cpu"``, ``"cuda:0"``, ``"2 x cuda"``).
        first_step: seconds to the end of the first step under ``train.compile`` (None:
            not compiled), written as ``compile_first_step_seconds``.
    """
    metric = spec(cfg.task).headline
    done = tracker.history[-1][0] if tracker.history else 0
    out = {
        "task": cfg.task,
        "method": method,
        "seed": seed,
        "steps": done,
        "max_steps": cfg.train.steps,
        "budget_steps": t.steps,
        "last_step": done,
        f"best_val_{metric}": round(best["score"], 6),
        "best_step": best["step"],
        "convergence": tracker.report(done),
        "seconds": round(seconds, 1),
        "device": device,
        "fingerprint": fp,
    }
    if first_step is not None:
        out["compile_first_step_seconds"] = round(first_step, 2)
    return out


def _valid(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (kind is float or float(value).is_integer())


def pick(source: object, keys: Mapping[str, type]) -> dict[str, int | float | bool]:
    """The entries of `source` named in `keys` whose value is of the type given there (a
    finite number; ints as ints, bools only for bools), cast to it; {} for a non-mapping."""
    if not isinstance(source, Mapping):
        return {}
    return {key: kind(source[key]) for key, kind in keys.items() if _valid(source.get(key), kind)}


def training_record(train_info: Mapping) -> dict[str, int | float | bool]:
    """The convergence facts of one run's ``train.json`` as a flat dict of numbers and bools:
    ``max_steps``, ``budget_steps``, ``best_step``, ``last_step``, ``evaluations``,
    ``stopped_early``, ``converged``, ``last_quarter_gain``, ``trend_per_1k_steps``,
    ``skipped_steps`` (see `semimed.training.convergence`).

    A key that is missing or of the wrong type is left out; without ``converged`` the run's
    convergence is unknown (see `semimed.report.flags.status`)."""
    return pick(train_info, TOP) | pick(train_info.get("convergence"), CONVERGENCE)
