"""TMED-2 (Tufts Medical Echocardiogram Dataset, Huang et al. 2021-2022): PNG frames + CSV.

Layout under `data.root` (as the release unpacks)::

    <tmed2.csv>                       columns query_key, SourceFolder, view_label,
                                      diagnosis_label, view_classifier_split,
                                      diagnosis_classifier_split (+ optional patient_id)
    <SourceFolder>/<query_key>        the PNG frame of each row
    <tmed2.unlabeled_dirs>/**/*.png   frames without labels: the unlabeled pool

Targets: `view` (PLAX, PSAX, A4C, A2C, A4CorA2CorOther) and `severity`, the 3 ordinal AS
levels of the lightweight echo SSL model (TMED-2 view/AS): no_AS; mild_AS (mild and
mild-to-moderate); severe_AS (moderate and severe). Group = `patient_id` if the CSV has it,
else the study id (`query_key.split('_')[0]`). With `split.official` the primary target's
`<view|diagnosis>_classifier_split` column gives train/val/test. An empty label cell is an
unknown label: a row without a label for one of the learned targets joins the unlabeled pool.
"""

from __future__ import annotations

from pathlib import Path

from semimed.data.sources.validate import (
    Index,
    IngestError,
    check_image,
    check_targets,
    read_csv,
    require_dir,
    split_cell,
)

VIEW_CLASSES = ["PLAX", "PSAX", "A4C", "A2C", "A4CorA2CorOther"]
SEVERITY_CLASSES = ["no_AS", "mild_AS", "severe_AS"]
# Release values -> our 3 levels (an already-3-level CSV maps onto itself).
SEVERITY_LEVELS = {
    "no_AS": "no_AS",
    "mild_AS": "mild_AS",
    "mildtomod_AS": "mild_AS",
    "moderate_AS": "severe_AS",
    "severe_AS": "severe_AS",
}
COLUMNS = {"view": "view_label", "severity": "diagnosis_label"}
SPLIT_COLUMNS = {"view": "view_classifier_split", "severity": "diagnosis_classifier_split"}


def read_tmed_csv(
    csv_path: Path,
    root: Path,
    view_classes: list[str],
    primary: str,
    official: bool = False,
) -> list[dict]:
    """Rows of a TMED-2 style label CSV -> records (images checked readable); `primary`
    names the target whose split column `official` reads."""
    split_col = SPLIT_COLUMNS[primary] if official else None
    need = ["query_key", "SourceFolder", *COLUMNS.values()] + ([split_col] if split_col else [])
    rows = read_csv(csv_path, need, "classification.data.tmed2.csv")
    vocab = {"view": {v: v for v in view_classes}, "severity": SEVERITY_LEVELS}
    records = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        key = row["query_key"]
        labels = {}
        for t in COLUMNS:
            raw = row[COLUMNS[t]].strip()
            if raw and raw not in vocab[t]:
                raise IngestError(
                    f"{csv_path}: line {n} ({key}) has {COLUMNS[t]} {raw!r}; expected one of "
                    f"{', '.join(vocab[t])}"
                )
            labels[t] = vocab[t].get(raw)
        image = root / row["SourceFolder"] / key
        check_image(image)
        rec = {
            "id": key,
            "image": str(image),
            "group": row.get("patient_id") or key.split("_")[0],
            "labels": labels,
        }
        if split_col:
            rec["split"] = split_cell(row[split_col], f"{csv_path}: line {n} ({key})")
        records.append(rec)
    return records


def unlabeled_frames(root: Path, dirs, official: bool) -> list[dict]:
    """PNG frames under `dirs` (relative to root) -> label-free records grouped by study."""
    records = []
    for d in dirs:
        folder = require_dir(root / d, "classification.data.tmed2.unlabeled_dirs")
        for path in sorted(folder.rglob("*.png")):
            check_image(path)
            rec = {"id": path.name, "image": str(path), "group": path.name.split("_")[0]}
            records.append({**rec, "labels": None, **({"split": "train"} if official else {})})
    return records


def read(cfg, root: Path) -> Index:
    d = cfg.data
    official = cfg.split.official
    check_targets(COLUMNS, d.targets, "tmed2")
    records = read_tmed_csv(root / d.tmed2.csv, root, VIEW_CLASSES, d.target, official)
    records += unlabeled_frames(root, d.tmed2.unlabeled_dirs, official)
    return Index({"view": VIEW_CLASSES, "severity": SEVERITY_CLASSES}, records)
