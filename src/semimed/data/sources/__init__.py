"""Data sources -> one manifest format (the ingest stage).

One reader per source, in `SOURCES[task][name]`; each takes (TaskConfig, root) and returns
an `Index` after checking every file it lists (see `validate`). Whatever the source, ingest
writes `<out>/manifest.json`:

classification::

    {"task": "classification", "source": name, "classes": {target: [names]},
     "records": [{"id": str, "image": path, "group": patient id,
                  "labels": {target: name or null} or null,     # null: unlabeled image
                  ["array": npz key, "row": int,]                # medmnist: image in an npz
                  ["split": "train" | "val" | "test"]}, ...],   # only with split.official
     "warnings": [str]}

segmentation::

    {"task": "segmentation", "source": name, "classes": ["background", ...],
     "records": [{"id": str, "image": path (one input channel) or [path per channel],
                  "label": path or null, "group": patient id,
                  ["split": "train" | "train_labeled" | "train_unlabeled" | "val" | "test"]}],
     "warnings": [str], "channels": C, "channel_names": [name per channel] or null}

Paths are as given under `data.root` (relative to the repository root, where DVC runs
stages, or absolute). Nothing is copied from the user's folder; the synthetic source
generates its files inside `<out>`. The folder is written atomically: a failed check leaves
nothing behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

from semimed.config import TaskConfig
from semimed.data.sources import image_folder, isic2018, medmnist, nifti, synthetic, table, tmed2
from semimed.data.sources.validate import (
    Index,
    IngestError,
    check_split_groups,
    check_targets,
    check_unique_ids,
    require_dir,
)
from semimed.io import atomic_dir, write_json_atomic
from semimed.tasks import spec

SOURCES = {
    "classification": {
        "synthetic": synthetic.read_echo,
        "tmed2": tmed2.read,
        "isic2018": isic2018.read,
        "image_folder": image_folder.read,
        "csv": table.read,
        "medmnist": medmnist.read,
    },
    "segmentation": {"synthetic": synthetic.read_ct, "nifti": nifti.read},
}

__all__ = ["SOURCES", "Index", "IngestError", "ingest"]


def _relocate(records: list[dict], old: Path, new: Path) -> None:
    """Point generated files (written in the temporary folder) at their final place."""
    for rec in records:
        for key in ("image", "label"):
            if rec.get(key):
                rec[key] = str(new / Path(rec[key]).relative_to(old))


def ingest(cfg: TaskConfig, out_dir: Path) -> dict:
    """Index (or generate) the task's data, check it, write `<out_dir>/manifest.json`."""
    out_dir, source = Path(out_dir), cfg.data.source
    key = f"{cfg.task}.data"
    with atomic_dir(out_dir) as tmp:
        if source == "synthetic":
            index = SOURCES[cfg.task][source](cfg, tmp)
            _relocate(index.records, tmp, out_dir)
        else:
            root = require_dir(Path(cfg.data.root), f"{key}.root")
            index = SOURCES[cfg.task][source](cfg, root)
        where = f"{key}.source={source} ({cfg.data.root})"
        check_unique_ids(index.records, where)
        check_split_groups(index.records, where)
        if spec(cfg.task).has_targets:
            check_targets(index.classes, cfg.data.targets, source)
        for line in index.warnings:
            print(f"warning: {line}", file=sys.stderr)
        manifest = {
            "task": cfg.task,
            "source": source,
            "classes": index.classes,
            "records": index.records,
            "warnings": index.warnings,
            **index.extra,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest
