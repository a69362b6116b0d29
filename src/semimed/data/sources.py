"""Data sources -> one manifest format (the ingest stage).

Whatever the source, ingest writes `<out>/manifest.json`:

classification::

    {"task": "classification", "classes": {"view": [...], "severity": [...]},
     "records": [{"id": str, "image": path, "group": patient id,
                  "labels": {"view": name, "severity": name}}, ...]}

segmentation::

    {"task": "segmentation", "classes": ["background", "liver", ...],
     "records": [{"id": str, "image": path, "label": path, "group": patient id}, ...]}

Paths are relative to the repository root (where DVC runs stages). The synthetic source
first generates its files inside `<out>`; the whole folder is written atomically.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from semimed.config import ConfigError, TaskConfig
from semimed.data import synthetic
from semimed.io import atomic_dir, write_json_atomic

# TMED-2 label vocabulary (REFERENCES.md, seed 000); the synthetic echo data uses the same.
VIEW_CLASSES = ["PLAX", "PSAX", "A4C", "A2C"]
SEVERITY_CLASSES = ["no_AS", "mild_AS", "severe_AS"]


def read_tmed_csv(csv_path: Path, image_dir: Path) -> list[dict]:
    """Read a TMED-2 style label CSV into manifest records (group = patient, else study).

    Columns used: `query_key` (file name), `view_label`, `diagnosis_label`, and optionally
    `patient_id`; the study id is `query_key.split('_')[0]` as in TMED-2.
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"query_key", "view_label", "diagnosis_label"}
    if not rows or not need <= set(rows[0]):
        raise ConfigError(f"{csv_path}: expected columns {sorted(need)}")
    records = []
    for row in rows:
        key = row["query_key"]
        labels = {"view": row["view_label"], "severity": row["diagnosis_label"]}
        for task, names in (("view", VIEW_CLASSES), ("severity", SEVERITY_CLASSES)):
            if labels[task] not in names:
                raise ConfigError(
                    f"{csv_path}: row {key!r} has {task} label {labels[task]!r}; "
                    f"expected one of {', '.join(names)}"
                )
        records.append(
            {
                "id": key,
                "image": str(image_dir / key),
                "group": row.get("patient_id") or key.split("_")[0],
                "labels": labels,
            }
        )
    return records


def read_msd_dataset(root: Path, final_root: Path) -> tuple[list[str], list[dict]]:
    """Read an MSD / nnU-Net style `dataset.json` (imagesTr/labelsTr) into manifest records.

    `final_root` is where the files will live once the ingest folder is in place.
    """
    meta = json.loads((root / "dataset.json").read_text())
    labels = meta["labels"]  # {"background": 0, "liver": 1, ...}
    classes = [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    records = []
    for case in meta["cases"]:
        case_id = Path(case["image"]).name.removesuffix(".nii.gz")
        records.append(
            {
                "id": case_id,
                "image": str(final_root / case["image"]),
                "label": str(final_root / case["label"]),
                "group": case.get("patient_id", case_id),
            }
        )
    return classes, records


def ingest(cfg: TaskConfig, out_dir: Path) -> dict:
    """Create (synthetic) or index the task's data; write `<out_dir>/manifest.json` atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if cfg.task == "classification":
            syn = cfg.data.synthetic
            synthetic.generate_echo(
                tmp,
                num_patients=syn.num_patients,
                studies_per_patient=syn.studies_per_patient,
                frames_per_study=syn.frames_per_study,
                image_size=syn.image_size,
                seed=syn.seed,
            )
            records = read_tmed_csv(tmp / "labels.csv", out_dir / "images")
            classes = {"view": VIEW_CLASSES, "severity": SEVERITY_CLASSES}
        else:
            synthetic.generate_ct(
                tmp, num_cases=cfg.data.synthetic.num_cases, seed=cfg.data.synthetic.seed
            )
            classes, records = read_msd_dataset(tmp, out_dir)
        manifest = {
            "task": cfg.task,
            "source": cfg.data.source,
            "classes": classes,
            "records": records,
        }
        write_json_atomic(tmp / "manifest.json", manifest)
    return manifest
