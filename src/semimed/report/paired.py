"""Paired comparison of each method against `supervised` over the same TEST cases.

Means over seeds (the report's tables) hide which cases a method wins or loses; with a few
dozen test cases the spread between cases is the larger source of uncertainty. Here each
method's per-case score is paired with supervised's on the same case (averaged over the seeds
both ran), and the mean difference gets a percentile bootstrap 95 % interval (Efron &
Tibshirani, 1993) and the Wilcoxon signed-rank p-value (Wilcoxon, 1945).

Per-case score: segmentation -- the case's mean Dice over its scored foreground classes
(the empty-mask rule included); classification -- correctness 0/1 of the primary target,
so the mean difference is the accuracy difference. Inputs are the evaluate stage's per-case
CSVs (`paths.run_cases`). No torch here: the report stage imports this module.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

BASELINE = "supervised"
N_BOOTSTRAP = 2000  # bootstrap resamples of the test cases
BOOTSTRAP_SEED = 0  # fixed: the same files give the same interval


def read_cases(path: str | Path) -> list[dict[str, str]]:
    """The rows of one per-case CSV."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def case_scores(rows: Iterable[Mapping[str, str]], dense: bool) -> dict[str, float]:
    """``{case id: score}``: mean Dice over the case's rows (segmentation, `dense`) or
    1.0/0.0 for a correct/wrong prediction (classification)."""
    if not dense:
        return {r["id"]: float(r["label"] == r["prediction"]) for r in rows}
    dice: dict[str, list[float]] = {}
    for r in rows:
        dice.setdefault(r["case"], []).append(float(r["dice"]))
    return {case: float(np.mean(v)) for case, v in dice.items()}


def mean_over_seeds(per_seed: Mapping[int, Mapping[str, float]], seeds) -> dict[str, float]:
    """Each case's mean over `seeds` (cases scored in every one of them)."""
    cases = set.intersection(*(set(per_seed[s]) for s in seeds)) if seeds else set()
    return {c: float(np.mean([per_seed[s][c] for s in seeds])) for c in sorted(cases)}


def paired_difference(
    method: Mapping[str, float],
    baseline: Mapping[str, float],
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """Mean of ``method[c] - baseline[c]`` over the cases both have (paired by id), with a
    percentile bootstrap 95 % interval and the two-sided Wilcoxon signed-rank p-value.

    All-zero differences: p = 1.0 (nothing to rank). No common case: values are None.
    """
    cases = sorted(set(method) & set(baseline))
    d = np.array([method[c] - baseline[c] for c in cases], dtype=np.float64)
    if d.size == 0:
        return {"n": 0, "mean_diff": None, "ci_low": None, "ci_high": None, "p_value": None}
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, d.size, size=(n_bootstrap, d.size))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    if np.all(d == 0):
        p = 1.0
    else:
        with warnings.catch_warnings():  # small samples with ties: scipy's normal approximation
            warnings.simplefilter("ignore", UserWarning)
            p = float(wilcoxon(d).pvalue)
    return {
        "n": int(d.size),
        "mean_diff": round(float(d.mean()), 6),
        "ci_low": round(float(low), 6),
        "ci_high": round(float(high), 6),
        "p_value": round(p, 6),
    }


def compare(
    scores: Mapping[str, Mapping[int, Mapping[str, float]]], baseline: str = BASELINE
) -> dict[str, dict]:
    """``scores[method][seed] = {case: score}`` -> ``{method: paired_difference | {"seeds"}}``
    for every method except `baseline`, over the seeds it shares with `baseline`."""
    if baseline not in scores:
        return {}
    out = {}
    for method, per_seed in scores.items():
        if method == baseline:
            continue
        seeds = sorted(set(per_seed) & set(scores[baseline]))
        result = paired_difference(
            mean_over_seeds(per_seed, seeds), mean_over_seeds(scores[baseline], seeds)
        )
        out[method] = result | {"seeds": seeds}
    return out


def detection(rows: Iterable[Mapping[str, str]]) -> dict:
    """Segmentation (case, class) pairs: how many the empty-mask rule penalised (missed or
    hallucinated organ, Dice 0) and the mean Dice over the detected ones (both non-empty)."""
    rows = list(rows)
    hit = [float(r["dice"]) for r in rows if r["empty_rule"].lower() != "true"]
    return {
        "pairs": len(rows),
        "penalised": len(rows) - len(hit),
        "dice_detected": round(float(np.mean(hit)), 6) if hit else None,
    }


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def paired_table(results: Mapping[str, dict], what: str) -> str:
    """Markdown: one row per method, `what` difference vs supervised with its 95 % CI."""
    rows = [
        f"| method | {what} - supervised | 95 % CI | Wilcoxon p | cases | seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, r in results.items():
        ci = "-" if r["ci_low"] is None else f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
        seeds = ", ".join(str(s) for s in r["seeds"])
        rows.append(f"| {method} | {_fmt(r['mean_diff'])} | {ci} | {p} | {r['n']} | {seeds} |")
    return "\n".join(rows) + "\n"


def mean_detection(per_seed: list[dict]) -> dict:
    """`detection` of each seed -> means over seeds (``dice_detected`` also its sample std)."""
    dice = [d["dice_detected"] for d in per_seed if d["dice_detected"] is not None]
    return {
        "pairs": round(float(np.mean([d["pairs"] for d in per_seed])), 3),
        "penalised": round(float(np.mean([d["penalised"] for d in per_seed])), 3),
        "dice_detected": round(float(np.mean(dice)), 6) if dice else None,
        "dice_detected_std": round(float(np.std(dice, ddof=1)), 6) if len(dice) > 1 else 0.0,
    }


def detection_table(per_method: Mapping[str, dict]) -> str:
    """Markdown: per method, `mean_detection`'s numbers."""
    rows = [
        "| method | penalised pairs (of scored) | Dice over detected pairs |",
        "| --- | --- | --- |",
    ]
    for method, d in per_method.items():
        dice = "-"
        if d["dice_detected"] is not None:
            dice = f"{d['dice_detected']:.3f} +- {d['dice_detected_std']:.3f}"
        rows.append(f"| {method} | {d['penalised']:g} of {d['pairs']:g} | {dice} |")
    return "\n".join(rows) + "\n"


def task_section(task: str, methods, seeds, dense: bool, case_path) -> tuple[dict, str]:
    """Read every run's per-case CSV (`case_path(task, method, seed)`) of `task`:
    ``({"methods": compare(...)[, "detection": ...]}, markdown)`` for summary and report."""
    rows = {m: {s: read_cases(case_path(task, m, s)) for s in seeds} for m in methods}
    scores = {m: {s: case_scores(r, dense) for s, r in per.items()} for m, per in rows.items()}
    results = compare(scores)
    what = "mean Dice per case" if dense else "accuracy"
    text = paired_table(results, what) if results else "(no supervised baseline to pair with)\n"
    entry: dict = {
        "methods": {
            m: {k: v for k, v in r.items() if k != "seeds"} | {"n_seeds": len(r["seeds"])}
            for m, r in results.items()
        }
    }
    if dense:
        det = {m: mean_detection([detection(r) for r in per.values()]) for m, per in rows.items()}
        entry["detection"] = det
        text += (
            "\n(case, class) pairs the empty-mask rule penalised (Dice 0, counted per run) and "
            f"Dice over the detected pairs (mean +- std over seeds):\n\n{detection_table(det)}"
        )
    return entry, f"### {task}\n\n{text}"
