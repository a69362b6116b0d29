"""A real-data check: scikit-learn's `load_digits` (1,797 real handwritten digits, 8x8, 10
classes; shipped inside scikit-learn, nothing downloaded) written out as an `image_folder`,
then the classification stages with the `cpu` preset at 10 % labels.

    python -m benchmarks.real_digits [--work DIR] [--methods all | supervised fixmatch ...]
                                     [--seeds 0 1 2] [--set classification.train.stop=fixed ...]
    python -m benchmarks.real_digits --table seed0.log seed1.log   # the table of earlier runs

prints one line per run (test balanced accuracy, best/last step, converged), then a Markdown
table per method: balanced accuracy and steps as mean +- std over seeds, and the share of the
`supervised` -> `supervised_full` gap it closes, per seed (paired by seed) as mean +- std.
`--set` adds Hydra overrides after the preset (e.g. the budget protocol). tests/pipeline/test_real_digits.py
runs it with one seed. Only the data keys (and the image size: 16 px, the digits being 8x8)
differ from the preset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "preprocess", "split")
METHODS = (  # every classification method of the registry, the two bounds first
    "supervised",
    "supervised_full",
    "fixmatch",
    "freematch",
    "mean_teacher",
    "pseudo_label",
    "mixmatch",
    "tear",
    "simclr",
)
BOUNDS = ("supervised", "supervised_full")


def write_digits(root: Path) -> int:
    """`load_digits` as <root>/<digit>/d<i>.png (8-bit grayscale; 0..16 scaled to 0..240);
    returns the number of images."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8)).save(folder / f"d{i:04d}.png")
    return len(digits.target)


def params_for(
    work: Path, methods, seeds, preset: str = "cpu", labeled: float = 10, extra=()
) -> dict:
    """conf/ composed with `preset` (as `dvc exp run -S preset=...`), the digits' data keys and
    the `extra` Hydra overrides."""
    from dvc.utils.hydra import compose_and_dump

    overrides = [
        f"preset={preset}",
        "classification.data.source=image_folder",
        "classification.data.targets=[label]",
        f"classification.data.root={work / 'digits'}",
        f"classification.split.labeled_percent={labeled}",
        "classification.preprocess.image_size=16",
        f"classification.methods=[{','.join(methods)}]",
        f"classification.seeds=[{','.join(str(s) for s in seeds)}]",
        *extra,
    ]
    compose_and_dump(work / "params.yaml", str(ROOT / "conf"), None, "config", "", overrides)
    return yaml.safe_load((work / "params.yaml").read_text())


def _stage(work: Path, name: str, *args: str) -> None:
    cmd = [sys.executable, str(ROOT / "stages" / f"{name}.py"), "--params", "params.yaml", *args]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def run(work: Path, methods, seeds, preset: str = "cpu", extra=()) -> list[dict]:
    """Write the digits, run ingest -> split -> train -> evaluate; one record per run."""
    work.mkdir(parents=True, exist_ok=True)
    write_digits(work / "digits")
    params_for(work, methods, seeds, preset, extra=extra)
    for name in STAGES:
        _stage(work, name, "--task", "classification")
    rows = []
    for method in methods:
        for seed in seeds:
            run_args = ("--task", "classification", "--method", method, "--seed", str(seed))
            _stage(work, "train", *run_args)
            _stage(work, "evaluate", *run_args)
            run_dir = Path("classification") / method / f"seed{seed}"
            info = json.loads((work / "models" / run_dir / "train.json").read_text())
            test = json.loads((work / "metrics" / f"{run_dir}.json").read_text())
            rows.append(
                {
                    "method": method,
                    "seed": seed,
                    "balanced_accuracy": test["balanced_accuracy"],
                    "best_step": info["best_step"],
                    "last_step": info["last_step"],
                    "converged": info["convergence"]["converged"],
                    "stopped_early": info["convergence"]["stopped_early"],
                    "seconds": info["seconds"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def gap_closed(rows: list[dict], method: str) -> float:
    """(method - supervised) / (supervised_full - supervised), on mean balanced accuracy."""
    mean = {
        m: float(np.mean([r["balanced_accuracy"] for r in rows if r["method"] == m]))
        for m in {r["method"] for r in rows}
    }
    return (mean[method] - mean["supervised"]) / (mean["supervised_full"] - mean["supervised"])


def gap_closed_per_seed(rows: list[dict], method: str) -> list[float]:
    """The gap closed of each seed that ran `method` and both bounds (paired by seed)."""
    score = {(r["method"], r["seed"]): r["balanced_accuracy"] for r in rows}
    out = []
    for (m, seed), value in score.items():
        low, high = score.get(("supervised", seed)), score.get(("supervised_full", seed))
        if m == method and low is not None and high is not None and high != low:
            out.append((value - low) / (high - low))
    return out


def _pm(values: list[float], fmt: str) -> str:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):{fmt}} +- {std:{fmt}}"


def table(rows: list[dict]) -> str:
    """Markdown: per method, balanced accuracy, last step and the gap closed over seeds."""
    out = [
        "| method | balanced accuracy | last step | stopped early | gap closed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == m]
        gaps = gap_closed_per_seed(rows, m) if m not in BOUNDS else []
        gap = _pm([100 * g for g in gaps], ".0f") + " %" if gaps else "-"
        stopped = f"{sum(r['stopped_early'] for r in mine)} / {len(mine)}"
        acc = _pm([r["balanced_accuracy"] for r in mine], ".3f")
        steps = _pm([r["last_step"] for r in mine], ".0f")
        out.append(f"| {m} | {acc} | {steps} | {stopped} | {gap} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp)")
    ap.add_argument("--methods", nargs="+", default=["supervised", "fixmatch", "supervised_full"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], help="Hydra overrides after the preset")
    ap.add_argument("--table", nargs="+", type=Path, help="only the table of these runs' logs")
    args = ap.parse_args()
    if args.table:  # the JSON lines of earlier runs' output (e.g. one log per seed)
        lines = [line for log in args.table for line in log.read_text().splitlines()]
        print(table([json.loads(line) for line in lines if line.startswith('{"method"')]))
        return
    methods = list(METHODS) if args.methods == ["all"] else args.methods
    work = args.work or Path(tempfile.mkdtemp(prefix="digits-"))
    rows = run(work, methods, args.seeds, args.preset, extra=args.set)  # prints each row
    print(table(rows))


if __name__ == "__main__":
    main()
