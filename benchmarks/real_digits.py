"""A real-data check: scikit-learn's `load_digits` (1,797 real handwritten digits, 8x8, 10
classes; shipped inside scikit-learn, nothing downloaded) written out as an `image_folder`,
then the classification stages with the `cpu` preset at 10 % labels.

    python -m benchmarks.real_digits [--work DIR] [--methods supervised fixmatch supervised_full]
                                     [--seeds 0 1 2]

prints one line per run (test balanced accuracy, best/last step, converged) and the gap the
SSL methods close between `supervised` and `supervised_full`; tests/test_real_digits.py runs
it with one seed. Only the data keys (and the image size: 16 px, the digits being 8x8) differ from
the preset.
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


def params_for(work: Path, methods, seeds, preset: str = "cpu", labeled: float = 10) -> dict:
    """conf/ composed with `preset` (as `dvc exp run -S preset=...`) and the digits' data keys."""
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
    ]
    compose_and_dump(work / "params.yaml", str(ROOT / "conf"), None, "config", "", overrides)
    return yaml.safe_load((work / "params.yaml").read_text())


def _stage(work: Path, name: str, *args: str) -> None:
    cmd = [sys.executable, str(ROOT / "stages" / f"{name}.py"), "--params", "params.yaml", *args]
    out = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def run(work: Path, methods, seeds, preset: str = "cpu") -> list[dict]:
    """Write the digits, run ingest -> split -> train -> evaluate; one record per run."""
    work.mkdir(parents=True, exist_ok=True)
    write_digits(work / "digits")
    params_for(work, methods, seeds, preset)
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
                    "seconds": info["seconds"],
                }
            )
    return rows


def gap_closed(rows: list[dict], method: str) -> float:
    """(method - supervised) / (supervised_full - supervised), on mean balanced accuracy."""
    mean = {
        m: float(np.mean([r["balanced_accuracy"] for r in rows if r["method"] == m]))
        for m in {r["method"] for r in rows}
    }
    return (mean[method] - mean["supervised"]) / (mean["supervised_full"] - mean["supervised"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temp)")
    ap.add_argument("--methods", nargs="+", default=["supervised", "fixmatch", "supervised_full"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--preset", default="cpu")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="digits-"))
    rows = run(work, args.methods, args.seeds, args.preset)
    for r in rows:
        print(json.dumps(r))
    for m in args.methods:
        if m not in ("supervised", "supervised_full"):
            print(f"{m}: gap closed {gap_closed(rows, m):.2f}")


if __name__ == "__main__":
    main()
