"""A generic CSV manifest (source `csv`): one row per image, labels for one or several tasks.

`data.csv` names the file (relative to `data.root`) and its columns: `path_column` (image
path, relative to root or absolute), `labels` (target name -> column; an empty cell is an
unknown label, and a row missing a learned target's label joins the unlabeled pool),
`group_column` (patient id; "" = `data.group_regex` on the id) and `split_column`
(train/val/test, read when `split.official` is true). Classes per target are the distinct
non-empty values of its column (sorted; numerically if all are integers). Id = the path as
written in the CSV (must be unique).
"""

from __future__ import annotations

from pathlib import Path

from semimed.data.sources.validate import (
    Index,
    IngestError,
    check_image,
    group_of,
    read_csv,
    sorted_names,
    split_cell,
)


def read(cfg, root: Path) -> Index:
    c = cfg.data.csv
    split_col = c.split_column if cfg.split.official else ""
    if cfg.split.official and not split_col:
        raise IngestError(
            "classification.data.csv.split_column: must name a column when split.official is true"
        )
    columns = [c.path_column, *c.labels.values()]
    columns += [x for x in (c.group_column, split_col) if x]
    csv_path = root / c.file
    rows = read_csv(csv_path, columns, "classification.data.csv")
    records = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        rel = row[c.path_column].strip()
        image = Path(rel) if Path(rel).is_absolute() else root / rel
        check_image(image)
        labels = {t: row[col].strip() or None for t, col in c.labels.items()}
        group = row[c.group_column].strip() if c.group_column else ""
        rec = {
            "id": rel,
            "image": str(image),
            "group": group or group_of(Path(rel).stem, cfg.data.group_regex, rel),
            "labels": labels if any(labels.values()) else None,
        }
        if split_col:
            rec["split"] = split_cell(row[split_col], f"{csv_path}: line {n} ({rel})")
        records.append(rec)
    classes = {
        t: sorted_names(r["labels"][t] for r in records if r["labels"] and r["labels"][t])
        for t in c.labels
    }
    return Index(classes, records)
