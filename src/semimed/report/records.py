"""What the report hands to DVC: compact headline metrics and per-run plot records.

* ``metrics/headline.json`` (`headline_metrics`): one value per method per task, the headline
  metric's mean and std over seeds, so ``dvc metrics show``, ``dvc metrics diff`` and ``dvc
  exp show`` stay a few columns wide and a diff between experiments with different method
  sets stays a few readable rows. The detailed numbers stay in ``metrics/summary.json``.
* ``plots/report/<task>_methods.json`` (`method_records`): one record per run, ``{"method",
  "seed", <headline>}``, for a per-method comparison chart that ``dvc plots diff`` overlays
  across experiments.
* ``plots/report/<task>_val_curves.json`` (`val_curve_records`): one record per logged
  validation point, ``{"method", "seed", "step", "val"}``, read from each run's DVCLive TSV.

Values that are not finite are left out (JSON has no NaN). No torch here.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from semimed import paths

DIGITS = 4  # headline.json: enough to see a difference, short enough to read in a terminal
RECORD_DIGITS = 6  # plot records: as the per-run metrics files round

Runs = Mapping[str, Mapping[int, Mapping[str, float]]]  # [method][seed] -> {metric: value}


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def headline_metrics(stats: Mapping[str, Mapping], headline: str) -> dict:
    """One task of ``metrics/headline.json``: ``{method: {<headline>: mean, "std": std}}``
    rounded to `DIGITS`, from one task of a summary ``{method: {metric: {"mean", "std",
    "n"}}}``; methods without the headline (no seed produced it) are left out."""
    return {
        method: {
            headline: round(m[headline]["mean"], DIGITS),
            "std": round(m[headline]["std"], DIGITS),
        }
        for method, m in stats.items()
        if headline in m
    }


def method_records(runs: Runs, headline: str) -> list[dict]:
    """``[{"method", "seed", <headline>}]``, one per run that has a finite headline value, in
    method then seed order."""
    return [
        {"method": method, "seed": int(seed), headline: round(float(m[headline]), RECORD_DIGITS)}
        for method, seeds in runs.items()
        for seed, m in seeds.items()
        if _finite(m.get(headline))
    ]


def read_val_curve(live_dir: Path, metric: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of the validation `metric` a run's DVCLive folder logged."""
    with open(paths.val_curve(live_dir, metric), newline="") as f:
        return [(int(r["step"]), float(r[metric])) for r in csv.DictReader(f, delimiter="\t")]


def val_curve_records(curves: Mapping[str, Mapping[int, list[tuple[int, float]]]]) -> list[dict]:
    """``curves[method][seed] = [(step, value)]`` -> ``[{"method", "seed", "step", "val"}]``
    (non-finite values left out)."""
    return [
        {"method": method, "seed": int(seed), "step": int(step), "val": round(v, RECORD_DIGITS)}
        for method, seeds in curves.items()
        for seed, points in seeds.items()
        for step, v in points
        if _finite(v)
    ]
