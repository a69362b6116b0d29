"""Convergence of each run and the warnings the report puts in front of its numbers.

A mean over seeds says nothing about whether the runs had finished learning, nor whether the
comparison can separate methods at all. Three checks, written as words a reader cannot miss
(stage output, ``plots/report/results.md``, ``metrics/summary.json``):

* **under-trained**: a run whose ``train.json`` says ``converged: false`` (the training loop
  applies the rule of `semimed.training.convergence` and writes it; it is not recomputed here) was
  still improving at its last evaluation, so its test score understates the method;
* **upper bound not above baseline**: ``supervised_full`` (every label) must beat
  ``supervised`` (the labeled subset) by more than the larger seed std of the two (at least
  `MIN_MARGIN`); otherwise there is no gap for a semi-supervised method to close and the
  table cannot rank methods;
* **unequal budgets**: a method whose runs stopped, on average over seeds (``last_step``),
  at under `MIN_BUDGET_SHARE` of the steps of the ``supervised`` runs was compared at a
  smaller budget than the baseline (early stopping ended it sooner).

The report also states each task's budget protocol (`semimed.training.convergence.protocol`).

A run whose ``train.json`` has no ``convergence`` block is *unknown*: neither converged nor
flagged under-trained, and said so. No torch here: the report stage imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

from semimed.training.record import CONVERGENCE, TOP, pick, training_record

LOWER, UPPER = "supervised", "supervised_full"
MIN_MARGIN = 0.01  # smallest headline gap that counts as "above", whatever the seed std
MIN_BUDGET_SHARE = 0.6  # of supervised's mean last step, below which budgets are unequal
UNDER_TRAINED, UNKNOWN, UNEQUAL = "†", "?", "‡"  # marks after a method's name in the tables

Training = Mapping[str, Mapping[int, Mapping[str, object]]]  # [method][seed] -> block


def training_block(run_metrics: Mapping) -> dict[str, int | float | bool]:
    """The ``training`` block of one run's metrics file (numbers and bools only); a file
    without one falls back to the train.json copy under its ``train`` key."""
    if isinstance(block := run_metrics.get("training"), Mapping):
        return pick(block, TOP | CONVERGENCE)
    train = run_metrics.get("train")
    return training_record(train if isinstance(train, Mapping) else {})


def status(record: Mapping) -> str:
    """``"converged"``, ``"under-trained"`` (still improving at the last evaluation) or
    ``"unknown"`` (no convergence record)."""
    converged = record.get("converged")
    if converged is None:
        return "unknown"
    return "converged" if converged else "under-trained"


def _runs(training: Training, state: str) -> list[str]:
    return [
        f"{method} seed{seed}"
        for method, seeds in training.items()
        for seed, record in seeds.items()
        if status(record) == state
    ]


def under_trained_flag(training: Training) -> str | None:
    """``"under-trained: N of M runs were still improving at their last evaluation (...)"``
    or None when no run is known to be under-trained."""
    total = sum(len(seeds) for seeds in training.values())
    bad = _runs(training, "under-trained")
    if not bad:
        return None
    return (
        f"under-trained: {len(bad)} of {total} runs were still improving at their last "
        f"evaluation ({', '.join(bad)}); their test scores understate the method. Give them "
        "more steps (train.steps, or the epochs budget) and rerun before comparing."
    )


def unknown_flag(training: Training) -> str | None:
    """A note for runs without a convergence record (no ``convergence`` block in their
    train.json), or None when every run has one."""
    total = sum(len(seeds) for seeds in training.values())
    unknown = _runs(training, "unknown")
    if not unknown:
        return None
    which = "all of them" if len(unknown) == total else ", ".join(unknown)
    return (
        f"convergence unknown: {len(unknown)} of {total} runs have no convergence record in "
        f"their train.json ({which}); retrain them to check."
    )


def upper_bound_flag(stats: Mapping[str, Mapping], headline: str) -> str | None:
    """``"upper bound not above baseline: this comparison is not informative (...)"`` when
    `UPPER`'s mean `headline` does not beat `LOWER`'s by more than ``max(std_lower,
    std_upper, MIN_MARGIN)``; None when it does or when either did not run.

    Args:
        stats: one task of a summary, ``{method: {metric: {"mean", "std", "n"}}}``.
    """
    try:
        low, high = stats[LOWER][headline], stats[UPPER][headline]
    except KeyError:
        return None
    margin = max(low["std"], high["std"], MIN_MARGIN)
    gain = high["mean"] - low["mean"]
    if gain > margin:
        return None
    return (
        "upper bound not above baseline: this comparison is not informative "
        f"({UPPER} {headline} {high['mean']:.3f} +- {high['std']:.3f} vs {LOWER} "
        f"{low['mean']:.3f} +- {low['std']:.3f}: a gain of {gain:+.3f}, not more than "
        f"{margin:.3f}, the larger seed std or {MIN_MARGIN}). Train longer or label more "
        "before ranking semi-supervised methods."
    )


def _mean_last_step(seeds: Mapping[int, Mapping]) -> float | None:
    steps = [r["last_step"] for r in seeds.values() if "last_step" in r]
    return sum(steps) / len(steps) if steps else None


def budget_shares(training: Training) -> dict[str, float]:
    """``{method: mean last step / supervised's mean last step}`` for every method but
    `LOWER` whose runs recorded their last step (empty without `LOWER`'s)."""
    base = _mean_last_step(training.get(LOWER, {}))
    if not base:
        return {}
    return {
        method: mean / base
        for method, seeds in training.items()
        if method != LOWER and (mean := _mean_last_step(seeds)) is not None
    }


def _unequal(training: Training) -> dict[str, float]:
    return {m: share for m, share in budget_shares(training).items() if share < MIN_BUDGET_SHARE}


def unequal_budget_flag(training: Training) -> str | None:
    """``"unequal budgets: ..."`` naming each method whose runs stopped at under
    `MIN_BUDGET_SHARE` of `LOWER`'s steps (means over seeds), or None."""
    short = _unequal(training)
    if not short:
        return None
    base = _mean_last_step(training[LOWER])
    which = ", ".join(
        f"{m} at {_mean_last_step(training[m]):,.0f} steps ({100 * share:.0f} %)"
        for m, share in short.items()
    )
    return (
        f"unequal budgets: {len(short)} method(s) stopped at under "
        f"{100 * MIN_BUDGET_SHARE:.0f} % of the {base:,.0f} steps of {LOWER} (means over seeds): "
        f"{which}; their scores may reflect the shorter training more than the method. Compare "
        "at an equal budget (train.stop=fixed) or raise train.patience / train.min_steps."
    )


def task_flags(stats: Mapping[str, Mapping], headline: str, training: Training) -> list[str]:
    """Every warning for one task, most severe first."""
    found = (
        under_trained_flag(training),
        upper_bound_flag(stats, headline),
        unequal_budget_flag(training),
        unknown_flag(training),
    )
    return [flag for flag in found if flag]


def marks(training: Training) -> dict[str, str]:
    """``{method: mark}`` for the headline tables: `UNDER_TRAINED` when any of its runs was
    still improving, else `UNKNOWN` when any run's convergence is unknown; then `UNEQUAL`
    when its runs stopped at under `MIN_BUDGET_SHARE` of supervised's steps."""
    out = {}
    unequal = _unequal(training)
    for method, seeds in training.items():
        states = {status(record) for record in seeds.values()}
        mark = ""
        if "under-trained" in states:
            mark = UNDER_TRAINED
        elif "unknown" in states:
            mark = UNKNOWN
        mark += UNEQUAL if method in unequal else ""
        if mark:
            out[method] = mark
    return out


def footnote(mark: Mapping[str, str]) -> str:
    """The legend of the marks used in a table ('' when none is)."""
    used = {m[:1] for m in mark.values()}
    notes = []
    if UNDER_TRAINED in used:
        notes.append(
            f"{UNDER_TRAINED} under-trained: at least one run of this method was still "
            "improving at its last evaluation (see the warnings)."
        )
    if UNKNOWN in used:
        notes.append(f"{UNKNOWN} convergence unknown: trained before convergence was recorded.")
    if any(UNEQUAL in m for m in mark.values()):
        notes.append(
            f"{UNEQUAL} unequal budget: its runs stopped at under "
            f"{100 * MIN_BUDGET_SHARE:.0f} % of supervised's steps (see the warnings)."
        )
    return "".join(f"\n{n}\n" for n in notes)


def annotate(
    summary_task: Mapping[str, dict],
    training: Training,
    flags: list[str],
    budget: Mapping | None = None,
) -> dict:
    """One task of ``metrics/summary.json``: each method's statistics plus ``runs`` and
    ``converged_runs`` (counts), ``steps_vs_supervised`` (its mean last step over
    supervised's; methods other than supervised) and ``budget`` (``"equal"``, or ``"unequal:
    N % of supervised's steps"``), the task's ``flags`` (list of strings) and, given, its
    ``budget`` protocol (`semimed.training.convergence.protocol`)."""
    out: dict = {}
    shares = budget_shares(training)
    for method, stats in summary_task.items():
        seeds = training.get(method, {})
        converged = sum(status(r) == "converged" for r in seeds.values())
        out[method] = dict(stats) | {"runs": len(seeds), "converged_runs": converged}
        if (share := shares.get(method)) is not None:
            unequal = share < MIN_BUDGET_SHARE
            words = f"unequal: {100 * share:.0f} % of supervised's steps" if unequal else "equal"
            out[method] |= {"steps_vs_supervised": round(share, 4), "budget": words}
    out["flags"] = list(flags)
    if budget is not None:
        out["budget"] = dict(budget)
    return out


def warnings_block(flags: list[str], prefix: str = "") -> str:
    """Markdown block quote, one bold ``WARNING`` paragraph per flag ('' when there is none)."""
    if not flags:
        return ""
    return "\n>\n".join(f"> **WARNING** {prefix}{flag}" for flag in flags) + "\n\n"
