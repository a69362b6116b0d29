"""Label efficiency: the headline metric against the labeled percentage, from DVC experiments.

The sweep it expects (one experiment per labeled percentage, every method and seed each)::

    dvc exp run --queue -S 'classification.split.labeled_percent=5,10,20,50'
    dvc queue start            # add `-j 2` to run two experiments at once
    dvc queue status           # repeat until all are done (or `dvc queue logs <name>`)
    python -m benchmarks.label_efficiency --out plots/label_efficiency.png \\
        --json metrics/label_efficiency.json

Run it from the repository root. Segmentation: ``--task segmentation`` (``--metric`` defaults to
the task's headline metric, `semimed.tasks`; ``--method NAME``, repeatable, keeps only the
methods the sweep ran when an experiment with more methods shares a percentage).

It reads ``dvc exp show --json`` (or a saved copy, ``--from-json``) and, for the workspace,
the baseline commit(s) and every finished experiment, takes the param
``classification.split.labeled_percent`` and ``metrics/summary.json``
(``{task: {method: {metric: {"mean", "std", "n"}}}}``, written by the report stage). Queued,
running or failed experiments have no metrics yet and are skipped. Entries with the same
labeled percentage and the same numbers (the workspace after ``dvc exp apply``, say) count
once; if they differ, the first in the order workspace, commit, newest experiment wins and the
others are named in a warning: restrict the sources with ``--exp NAME`` when other params
changed between experiments.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from semimed import paths
from semimed.io import save_figure, write_json_atomic
from semimed.tasks import spec

PARAMS_FILE = "params.yaml"
SUMMARY_FILE = paths.SUMMARY.as_posix()


def _entries(exp_show: Sequence[Mapping]) -> Iterator[tuple[str, Mapping]]:
    """(name, data) of the workspace, each baseline and its experiments, in that order."""
    for row in exp_show:
        rev = row["rev"]
        yield row.get("name") or (rev if rev == "workspace" else rev[:7]), row.get("data") or {}
        for exp in row.get("experiments") or []:
            for rev in exp.get("revs") or []:
                yield rev.get("name") or rev["rev"][:7], rev.get("data") or {}


def _file_data(section: Mapping, path: str) -> dict:
    return ((section or {}).get(path) or {}).get("data") or {}


def parse_exp_show(
    exp_show: Sequence[Mapping],
    task: str = "classification",
    metric: str = "balanced_accuracy",
    only: Sequence[str] = (),
) -> list[dict]:
    """Records ``{"method", "labeled_percent", <metric>, "std", "n", "experiment"}``, methods
    in order of first appearance, then by labeled percentage; ``only`` keeps just the named
    entries (``workspace``, a commit's branch or short rev, an experiment's name)."""
    kept: dict[tuple[str, float], dict] = {}
    for name, data in _entries(exp_show):
        if only and name not in only:
            continue
        params = _file_data(data.get("params"), PARAMS_FILE)
        summary = _file_data(data.get("metrics"), SUMMARY_FILE).get(task) or {}
        percent = ((params.get(task) or {}).get("split") or {}).get("labeled_percent")
        if percent is None or not summary:
            continue  # queued, running or failed: no metrics yet
        for method, stats in summary.items():
            if metric not in stats:
                continue
            record = {
                "method": method,
                "labeled_percent": float(percent),
                metric: round(stats[metric]["mean"], 6),
                "std": round(stats[metric]["std"], 6),
                "n": stats[metric]["n"],
                "experiment": name,
            }
            first = kept.setdefault((method, float(percent)), record)
            same = all(first[k] == record[k] for k in (metric, "std", "n"))
            if first is not record and not same:
                print(
                    f"warning: {method} at {percent}% labeled: keeping {first['experiment']}, "
                    f"ignoring {name} (different result; see --exp)",
                    file=sys.stderr,
                )
    order = {method: i for i, method in enumerate(dict.fromkeys(m for m, _ in kept))}
    return sorted(kept.values(), key=lambda r: (order[r["method"]], r["labeled_percent"]))


def plot_label_efficiency(records: Sequence[Mapping], metric: str, out_png: Path) -> None:
    """``metric`` (mean +- std over seeds) vs labeled percentage, one line per method."""
    if not records:
        raise ValueError("records: no experiment has both labeled_percent and metrics")
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        x, m, s = (np.asarray([r[k] for r in rows]) for k in ("labeled_percent", metric, "std"))
        ax.errorbar(x, m, yerr=s, marker="o", markersize=4, capsize=3, label=method)
    ax.set_xscale("log")
    ticks = sorted({r["labeled_percent"] for r in records})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labeled training images or volumes (%)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"label efficiency: {metric} (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out_png)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--json", type=Path, help="also write the records to this JSON file")
    p.add_argument("--from-json", type=Path, help="saved `dvc exp show --json` output")
    p.add_argument("--task", default="classification", help="section of metrics/summary.json")
    p.add_argument("--metric", help="metric to plot (default: the task's headline metric)")
    p.add_argument("--exp", action="append", default=[], help="use only this entry (repeatable)")
    p.add_argument(
        "--method", action="append", default=[], help="plot only this method (repeatable)"
    )
    args = p.parse_args(argv)
    args.metric = args.metric or spec(args.task).headline
    if args.from_json:
        exp_show = json.loads(args.from_json.read_text())
    else:
        cmd = ["dvc", "exp", "show", "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: `{' '.join(cmd)}` failed: {done.stderr.strip()}")
        exp_show = json.loads(done.stdout)
    records = parse_exp_show(exp_show, args.task, args.metric, args.exp)
    if args.method:
        records = [r for r in records if r["method"] in args.method]
    try:
        plot_label_efficiency(records, args.metric, args.out)
    except ValueError as err:
        sys.exit(f"error: {err}")
    if args.json:
        write_json_atomic(args.json, records)
    for r in records:
        print(
            f"{r['method']:>16} {r['labeled_percent']:>6g}%  {r[args.metric]:.3f} +- {r['std']:.3f}"
        )


if __name__ == "__main__":
    main()
