"""Resumable checkpoints of one training run, written atomically.

* ``last.pt``  resumable state (`semimed.training.state.Run.checkpoint_state`: method,
  optimizer, schedule, step, best score, the best weights so far, the convergence tracker,
  the DVCLive folder's files and, per process, every random state, the data stream's position
  and the loss sums), in the run's scratch folder
* ``<model_dir>/best.pt``  `inference_model()` weights at the best validation score

A checkpoint resumes only if its fingerprint (params of this run, data, split and package
source) matches; otherwise the run starts afresh. `rewind` makes the run's folders match the
checkpoint after a kill, so a resumed run continues exactly as the uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import torch

from semimed.config import TaskConfig
from semimed.io import write_bytes_atomic

PACKAGE = Path(__file__).parent  # every .py below it is part of a run's fingerprint


def fingerprint(cfg: TaskConfig, method: str, params, seed: int, data_files: list[Path]) -> str:
    """Hash of everything that defines a run (`params`: the method's parsed Params)."""
    h = hashlib.sha256()
    spec = {
        "task": cfg.task,
        "method": method,
        "seed": seed,
        "train": asdict(cfg.train),
        "network": asdict(cfg.network),
        "params": asdict(params),
        "targets": getattr(cfg.data, "targets", None),
    }
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for path in data_files:
        h.update(Path(path).read_bytes())
    for src in sorted(PACKAGE.rglob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def cpu_copy(state: OrderedDict) -> OrderedDict:
    """A state_dict copied to the CPU, with its `_metadata` (module versions)."""
    out = OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in state.items())
    out._metadata = state._metadata
    return out


def save(obj, path: Path) -> None:
    """`torch.save` to `path` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: Path, fp: str, verbose: bool = True) -> dict | None:
    """Return the resumable state at `path` if it is readable and matches `fp`."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or corrupt file: start over, loudly
        if verbose:
            print(f"warning: {path} is unreadable ({type(err).__name__}); training from scratch")
        return None
    if state.get("fingerprint") != fp:
        if verbose:
            print(f"note: {path} belongs to other params/data/code; training from scratch")
        return None
    return state


def snapshot(live_dir: Path) -> dict[str, str]:
    """The DVCLive folder's text files (relative path -> content), kept in the checkpoint so
    a resumed run gets back the rows logged up to its step even after DVC removed the folder."""
    live_dir = Path(live_dir)
    return {
        str(f.relative_to(live_dir)): f.read_text()
        for f in sorted(live_dir.rglob("*"))
        if f.is_file() and not f.name.endswith(".tmp") and f.name not in KEEP
    }


# Files of the DVCLive folder a rewind leaves alone: DVC's .gitignore for the cached
# metrics.json (in git, written by DVC before the stage runs; deleting it would make git
# offer the DVC-cached file for committing).
KEEP = (".gitignore",)


def _clear(folder: Path) -> None:
    """Empty `folder` but for `KEEP` (top level) files."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name in KEEP and child.is_file():
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def rewind(model_dir: Path, live_dir: Path, state: dict | None) -> None:
    """Make the run's folders match `state` (None: a fresh start).

    A kill (or DVC, which removes a stage's outputs before running it) can leave files newer
    than the checkpoint, or none at all: best.pt of a later validation, DVCLive rows of later
    steps, temporary files of an interrupted atomic write. The folders are rebuilt from the
    checkpoint: best.pt from its best weights, the DVCLive folder from its snapshot; the steps
    after the checkpoint run again and log again."""
    _clear(live_dir)
    if state is None:  # stale files of another run must not survive
        shutil.rmtree(model_dir, ignore_errors=True)
        model_dir.mkdir(parents=True, exist_ok=True)
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    for leftover in model_dir.glob(".*.tmp"):
        leftover.unlink()
    if state["best_weights"] is None:
        (model_dir / "best.pt").unlink(missing_ok=True)
    else:
        save(state["best_weights"], model_dir / "best.pt")
    for rel, text in state["live"].items():
        write_bytes_atomic(live_dir / rel, text.encode())
