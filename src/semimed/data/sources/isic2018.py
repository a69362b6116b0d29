"""ISIC 2018 Task 3 (skin-lesion diagnosis, Codella et al. 2019 / HAM10000): JPEGs + one-hot CSV.

Layout under `data.root` (the challenge's archive names)::

    ISIC2018_Task3_Training_Input/ISIC_*.jpg
    ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
        columns image, MEL, NV, BCC, AKIEC, BKL, DF, VASC (one 1.0 per row)
    ISIC2018_Task3_Training_LesionGroupings.csv      optional: image, lesion_id
    ISIC2018_Task3_{Validation,Test}_Input/ + _GroundTruth/...csv   optional
    unlabeled/*.jpg|png                              optional: the unlabeled pool

Target `diagnosis` (7 classes, in the CSV's column order). Group = the lesion id of the
groupings file (several images show one lesion: they must stay in one split), else
`data.group_regex` on the image id, else the image itself. With `split.official` the
Validation and Test archives are val and test; without it they join our split.
"""

from __future__ import annotations

from pathlib import Path

from semimed.data.sources.validate import (
    Index,
    IngestError,
    check_image,
    check_targets,
    group_of,
    read_csv,
)

CLASSES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
PARTS = {"Training": "train", "Validation": "val", "Test": "test"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _lesions(root: Path) -> dict[str, str]:
    path = root / "ISIC2018_Task3_Training_LesionGroupings.csv"
    if not path.is_file():
        return {}
    return {r["image"]: r["lesion_id"] for r in read_csv(path, ["image", "lesion_id"], path.name)}


def _part(root: Path, part: str, cfg, lesions: dict) -> list[dict]:
    name = f"ISIC2018_Task3_{part}"
    csv_path = root / f"{name}_GroundTruth" / f"{name}_GroundTruth.csv"
    if part != "Training" and not csv_path.is_file():
        return []
    rows = read_csv(csv_path, ["image", *CLASSES], "classification.data.source=isic2018")
    records = []
    for n, row in enumerate(rows, start=2):
        try:
            hot = [float(row[c]) for c in CLASSES]
        except ValueError:
            raise IngestError(
                f"{csv_path}: line {n} ({row['image']}) has a non-numeric label"
            ) from None
        if sorted(hot) != [0.0] * (len(CLASSES) - 1) + [1.0]:
            raise IngestError(
                f"{csv_path}: line {n} ({row['image']}) must have exactly one 1 among "
                f"{', '.join(CLASSES)}"
            )
        image = root / f"{name}_Input" / f"{row['image']}.jpg"
        check_image(image)
        rec = {
            "id": row["image"],
            "image": str(image),
            "group": lesions.get(row["image"]) or group_of(row["image"], cfg.data.group_regex),
            "labels": {"diagnosis": CLASSES[hot.index(1.0)]},
        }
        if cfg.split.official:
            rec["split"] = PARTS[part]
        records.append(rec)
    return records


def read(cfg, root: Path) -> Index:
    check_targets({"diagnosis": CLASSES}, cfg.data.targets, "isic2018")
    lesions = _lesions(root)
    records = [r for part in PARTS for r in _part(root, part, cfg, lesions)]
    folder = root / "unlabeled"
    extra = (
        sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if folder.is_dir()
        else []
    )
    for path in extra:
        check_image(path)
        rec = {
            "id": path.stem,
            "image": str(path),
            "group": group_of(path.stem, cfg.data.group_regex),
        }
        records.append(
            {**rec, "labels": None, **({"split": "train"} if cfg.split.official else {})}
        )
    return Index({"diagnosis": CLASSES}, records)
