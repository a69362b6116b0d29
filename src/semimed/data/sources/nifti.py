"""NIfTI volumes in the MSD / nnU-Net layout (covers Synapse and AMOS as DHC prepares them).

Layout under `data.root`::

    imagesTr/<case>.nii.gz  (nnU-Net v2: <case>_0000.nii.gz)   labeled volumes
    labelsTr/<case>.nii.gz                                      their label maps
    imagesTs/ [+ labelsTs/]   optional: with labels, more labeled cases (under
                              `split.official`: test, unless a list names them); without
                              labels, unlabeled volumes (a warning says so)
    imagesUnl/                optional: unlabeled volumes (the unlabeled pool)
    dataset.json              optional: "labels" (MSD {"0": "background", ...} or nnU-Net
                              {"background": 0, ...}) and per-case "patient_id" in
                              "training" or "cases"

Classes: `data.classes`, else dataset.json's labels. Group = `data.group_regex` on the case
id, else dataset.json's patient_id, else the case. `data.split_lists` (one case id per line,
as DHC's `labeled_20p.txt` / `unlabeled_20p.txt` / `eval.txt` / `test.txt`) give the
official split when `split.official` is true. Every volume is fully decoded here: a corrupt
file, an image/label shape or affine mismatch, a label value outside the classes or an image
with NaN / infinite voxels (unless `preprocess.nan_policy` is zero) stops ingest with the
file's name. A label map without foreground is a legal labeled case (all background).
"""

from __future__ import annotations

import json
from pathlib import Path

from semimed.data.sources.validate import (
    Index,
    IngestError,
    check_finite,
    check_pair,
    group_of,
    load_nifti,
    require_dir,
    require_file,
    volume_warnings,
)

SUFFIX = ".nii.gz"


def case_id(path: Path) -> str:
    """`case_0001.nii.gz` -> `case_0001`."""
    return path.name.removesuffix(SUFFIX)


def _cases(folder: Path, labels: Path | None = None) -> list[tuple[str, Path]]:
    """(case id, image) per volume. nnU-Net v2 names images `<case>_0000.nii.gz`: the suffix
    is dropped when `labels` has `<case>.nii.gz` (or, without labels, when every image has
    it); a second channel (`<case>_0001` with a `<case>` label) is refused."""
    paths = volumes(folder)
    names = [case_id(p) for p in paths]
    all_first = bool(names) and all(n.endswith("_0000") for n in names)
    out = []
    for name, p in zip(names, paths, strict=True):
        stem, _, channel = name.rpartition("_")
        if labels is None:
            out.append((stem if all_first else name, p))
            continue
        if not (labels / f"{name}{SUFFIX}").is_file() and (labels / f"{stem}{SUFFIX}").is_file():
            if channel != "0000":
                raise IngestError(f"{p}: extra input channel {channel}; only single-channel cases")
            name = stem
        out.append((name, p))
    return out


def volumes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith("."))


def read_meta(root: Path, classes: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """Class names (params, else dataset.json) and dataset.json's patient ids per case."""
    path = root / "dataset.json"
    meta = {}
    if path.is_file():
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise IngestError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    patients = {
        case_id(Path(c["image"])).removesuffix("_0000"): str(c["patient_id"])
        for c in meta.get("cases", meta.get("training", []))
        if isinstance(c, dict) and "image" in c and "patient_id" in c
    }
    if classes:
        return list(classes), patients
    if "labels" not in meta:
        raise IngestError(
            f"segmentation.data.classes: empty and {path} has no 'labels'; name the classes"
        )
    labels = meta["labels"]
    try:  # MSD: {"0": "background"}; nnU-Net v2: {"background": 0}
        pairs = (
            {int(k): v for k, v in labels.items()}
            if all(str(k).isdigit() for k in labels)
            else {int(v): k for k, v in labels.items()}
        )
    except (TypeError, ValueError):
        raise IngestError(f"{path}: 'labels' must map names to single integer values") from None
    if sorted(pairs) != list(range(len(pairs))) or len(pairs) < 2:
        raise IngestError(f"{path}: 'labels' must number the classes 0..C-1 (C >= 2)")
    return [pairs[k] for k in range(len(pairs))], patients


def read_lists(root: Path, lists, ids: set[str]) -> dict[str, str]:
    """case id -> split name from the official list files; unknown or repeated ids fail."""
    where: dict[str, str] = {}
    for name in ("train_labeled", "train_unlabeled", "val", "test"):
        rel = getattr(lists, name)
        if not rel:
            continue
        path = require_file(root / rel, f"segmentation.data.split_lists.{name}")
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            cid = Path(line.strip()).name.removesuffix(SUFFIX).removesuffix(".h5")
            if not cid:
                continue
            if cid not in ids:
                raise IngestError(f"{path}: line {n}: case {cid!r} is not in the data")
            if where.setdefault(cid, name) != name:
                raise IngestError(f"{path}: line {n}: case {cid!r} is also listed in {where[cid]}")
    return where


def read(cfg, root: Path) -> Index:
    d, p = cfg.data, cfg.preprocess
    classes, patients = read_meta(root, d.classes)
    images_tr = require_dir(root / "imagesTr", "segmentation.data.root (imagesTr/)")
    labels_tr = root / "labelsTr"
    pairs = [(c, img, labels_tr / f"{c}{SUFFIX}", None) for c, img in _cases(images_tr, labels_tr)]
    if not pairs:
        raise IngestError(f"{images_tr}: no {SUFFIX} volumes")
    warnings, unlabeled = [], []
    if (root / "imagesTs").is_dir():
        labels_ts = root / "labelsTs"
        if labels_ts.is_dir():
            ts = _cases(root / "imagesTs", labels_ts)
            pairs += [(c, img, labels_ts / f"{c}{SUFFIX}", "test") for c, img in ts]
        elif ts := _cases(root / "imagesTs"):
            unlabeled += ts
            warnings.append(
                f"{root / 'imagesTs'}: no labelsTs/, its {len(ts)} volumes join the unlabeled pool"
            )
    if (root / "imagesUnl").is_dir():
        unlabeled += _cases(root / "imagesUnl")

    records = []
    for cid, img, lab, part in pairs:
        image, spacing, _ = check_pair(img, require_file(lab, f"label of {img}"), classes)
        warnings += check_finite(img, image, p.nan_policy)
        warnings += volume_warnings(img, image, spacing, p.spacing, p.window)
        rec = {"id": cid, "image": str(img), "label": str(lab)}
        records.append(
            {**rec, "group": group_of(cid, d.group_regex, patients.get(cid)), "part": part}
        )
    for cid, img in unlabeled:
        image, _, spacing = load_nifti(img)
        warnings += check_finite(img, image, p.nan_policy)
        warnings += volume_warnings(img, image, spacing, p.spacing, p.window)
        rec = {
            "id": cid,
            "image": str(img),
            "label": None,
            "group": group_of(cid, d.group_regex, patients.get(cid)),
        }
        records.append({**rec, "part": "train_unlabeled"})
    if cfg.split.official:
        listed = read_lists(root, d.split_lists, {r["id"] for r in records})
        for rec in records:
            rec["split"] = listed.get(rec["id"]) or rec["part"] or "train"
            if rec["label"] is None and rec["split"] != "train_unlabeled":
                raise IngestError(
                    f"segmentation.data.split_lists: case {rec['id']!r} has no label map but is "
                    f"listed in {rec['split']}"
                )
    for rec in records:
        del rec["part"]
    return Index(classes, records, warnings)
