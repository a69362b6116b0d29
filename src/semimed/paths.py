"""THE path layout of the pipeline: every file and folder a stage reads or writes.

dvc.yaml declares the same paths (tests/test_structure.py checks that they agree); stage
scripts and library code take their paths from here, never from string constants of their own.
All paths are relative to the repository root, where DVC runs the stages.
"""

from __future__ import annotations

from pathlib import Path

DATA, MODELS, METRICS, PLOTS = Path("data"), Path("models"), Path("metrics"), Path("plots")
SCRATCH = Path(".scratch")  # resumable training state, not a DVC output
SUMMARY = METRICS / "summary.json"  # mean +- std per method (dvc metrics show)
PAIRED = METRICS / "paired.json"  # per-case differences against supervised, per task
REPORT = PLOTS / "report"  # comparison figures and results.md
ANALYSIS = PLOTS / "analysis" / "classification"  # Grad-CAM, robustness, embeddings
HEADLINE = METRICS / "headline.json"  # headline mean and std per method and task (compact)
RESULTS = REPORT / "results.md"  # the report's tables and warnings
ROBUSTNESS = ANALYSIS / "robustness.json"  # per-seed balanced accuracy under perturbations


def data_dir(task: str, part: str) -> Path:
    """data/<task>/<part>: `ingested`, `processed` (folders) or `splits.json`."""
    return DATA / task / part


def ingested(task: str) -> Path:
    return data_dir(task, "ingested")


def processed(task: str) -> Path:
    return data_dir(task, "processed")


def splits(task: str) -> Path:
    return data_dir(task, "splits.json")


def run_dir(root: str | Path, task: str, method: str, seed: int) -> Path:
    """<root>/<task>/<method>/seed<k>: one run's folder under models/ or plots/..."""
    return Path(root) / task / method / f"seed{seed}"


def model_dir(task: str, method: str, seed: int) -> Path:
    """models/<task>/<method>/seed<k>/: the trained run (weights, train.json)."""
    return run_dir(MODELS, task, method, seed)


def scratch_dir(task: str, method: str, seed: int) -> Path:
    """.scratch/<task>/<method>/seed<k>/: the run's resumable checkpoint (last.pt), outside
    every DVC output (git- and DVC-ignored), so a crashed run resumes and the run cache works."""
    return run_dir(SCRATCH, task, method, seed)


def live_dir(task: str, method: str, seed: int) -> Path:
    """plots/train/<task>/<method>/seed<k>/: the run's DVCLive folder."""
    return run_dir(PLOTS / "train", task, method, seed)


def live_summary(task: str, method: str, seed: int) -> Path:
    """<live_dir>/metrics.json: DVCLive's last logged values (dvc.yaml `metrics`, not a plot)."""
    return live_dir(task, method, seed) / "metrics.json"


def eval_plots(task: str, method: str, seed: int) -> Path:
    """plots/eval/<task>/<method>/seed<k>/: confusion matrices or the overlay PNG."""
    return run_dir(PLOTS / "eval", task, method, seed)


def run_metrics(task: str, method: str, seed: int) -> Path:
    """metrics/<task>/<method>/seed<k>.json: one run's test metrics."""
    return run_dir(METRICS, task, method, seed).with_suffix(".json")


def run_cases(task: str, method: str, seed: int) -> Path:
    """metrics/<task>/<method>/seed<k>_cases.csv: one run's test scores per case (and class)."""
    return run_dir(METRICS, task, method, seed).with_name(f"seed{seed}_cases.csv")


def report_methods(task: str) -> Path:
    """plots/report/<task>_methods.json: one headline record per run (a DVC plot)."""
    return REPORT / f"{task}_methods.json"


def report_val_curves(task: str) -> Path:
    """plots/report/<task>_val_curves.json: every run's validation curve (a DVC plot)."""
    return REPORT / f"{task}_val_curves.json"


def val_curve(live: Path, metric: str) -> Path:
    """The DVCLive TSV of the validation metric inside a run's live folder, under DVCLive's
    curves folder ``<live>/plots/metrics`` (dvc.yaml `plots`, x: step)."""
    return Path(live) / "plots" / "metrics" / "val" / f"{metric}.tsv"
