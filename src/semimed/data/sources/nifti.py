"""NIfTI volumes in the MSD / nnU-Net layout (covers Synapse and AMOS as DHC prepares them).

Layout under `data.root`::

    imagesTr/<case>.nii.gz  (nnU-Net v2: <case>_0000.nii.gz)   labeled volumes; C input
                            channels: <case>_0000 .. <case>_<C-1>.nii.gz (T2, ADC, ...)
    labelsTr/<case>.nii.gz                                      their label maps
    imagesTs/ [+ labelsTs/]   optional: with labels, more labeled cases (under
                              `split.official`: test, unless a list names them); without
                              labels, unlabeled volumes (a warning says so)
    imagesUnl/                optional: unlabeled volumes (the unlabeled pool)
    dataset.json              optional: "labels" (MSD {"0": "background", ...} or nnU-Net
                              {"background": 0, ...}), per-case "patient_id" in
                              "training" or "cases", and the channels' modalities in
                              "channel_names" (nnU-Net v2) or "modality" (MSD):
                              {"0": "T2", "1": "ADC"}, which `preprocess.normalize: auto`
                              follows (`semimed.data.intensity`)

Classes: `data.classes`, else dataset.json's labels. Group = `data.group_regex` on the case
id, else dataset.json's patient_id, else the case. `data.split_lists` (one case id per line,
as DHC's `labeled_20p.txt` / `unlabeled_20p.txt` / `eval.txt` / `test.txt`) give the
official split when `split.official` is true. Every volume is fully decoded here: a corrupt
file, a case missing an input channel, channels or image and label of different shape or
affine, a label value outside the classes or an image with NaN / infinite voxels (unless
`preprocess.nan_policy` is zero) stops ingest with the file's name. A label map without
foreground is a legal labeled case (all background). Intensities are warned about once per
dataset: when `preprocess.normalize` disagrees with the named modality, or, with none named,
when the HU window meets volumes whose range is unlike CT in HU.
"""

from __future__ import annotations

import json
from pathlib import Path

from semimed.data.intensity import resolve_mode
from semimed.data.sources.validate import (
    Index,
    IngestError,
    check_finite,
    check_pair,
    group_of,
    hu_warning,
    intensity_range,
    load_case,
    require_dir,
    require_file,
    spacing_warnings,
)

SUFFIX = ".nii.gz"


def case_id(path: Path) -> str:
    """`case_0001.nii.gz` -> `case_0001`."""
    return path.name.removesuffix(SUFFIX)


def _channel(name: str) -> tuple[str, int] | None:
    """`case_0001` -> ("case", 1): nnU-Net's input channel suffix (four digits), else None."""
    stem, _, channel = name.rpartition("_")
    return (stem, int(channel)) if stem and len(channel) == 4 and channel.isdigit() else None


def _cases(folder: Path, labels: Path | None = None, channels: int | None = None):
    """(case id, [image per input channel]) per case. nnU-Net names images
    `<case>_0000.nii.gz`, `<case>_0001.nii.gz`, ...: with `labels`, a file is channel k of
    `<case>` when labels has `<case>.nii.gz` (not `<file>.nii.gz`); without labels, the files
    are grouped so when the dataset has `channels` > 1, and the `_0000` suffix is dropped when
    every file has it. Every case must have the channels 0..C-1, C the same for all."""
    paths = volumes(folder)
    names = [case_id(p) for p in paths]
    all_first = bool(names) and all(n.endswith("_0000") for n in names)
    groups: dict[str, dict[int, Path]] = {}
    for name, p in zip(names, paths, strict=True):
        split = _channel(name)
        if labels is not None:
            labelled = (labels / f"{name}{SUFFIX}").is_file()
            grouped = split and not labelled and (labels / f"{split[0]}{SUFFIX}").is_file()
        else:
            grouped = split and ((channels or 1) > 1 or (all_first and split[1] == 0))
        cid, k = split if grouped else (name, 0)
        groups.setdefault(cid, {})[k] = p
    out = []
    want = channels or max((len(c) for c in groups.values()), default=1)
    for cid, chans in groups.items():
        if sorted(chans) != list(range(want)):
            have = ", ".join(f"{k:04d}" for k in sorted(chans))
            raise IngestError(
                f"{chans[min(chans)]}: case {cid!r} has input channels {have}; expected "
                f"{want} per case (_0000.._{want - 1:04d}.nii.gz)"
            )
        out.append((cid, [chans[k] for k in range(want)]))
    return out


def channel_names(meta: dict, path: Path, channels: int) -> list[str] | None:
    """dataset.json's names of the input channels (`channel_names`, else MSD's `modality`),
    in channel order; None when it names none. Their count must be the cases' channels."""
    names = meta.get("channel_names") or meta.get("modality")
    if not names:
        return None
    if not isinstance(names, dict) or not all(str(k).isdigit() for k in names):
        raise IngestError(f"{path}: 'channel_names' must map channel numbers to names")
    ordered = [str(names[k]) for k in sorted(names, key=int)]
    if len(ordered) != channels:
        raise IngestError(
            f"{path}: names {len(ordered)} input channels ({', '.join(ordered)}); the images "
            f"have {channels} (one 3D file per channel, <case>_0000.nii.gz ..)"
        )
    return ordered


def volumes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith("."))


def read_meta(root: Path, classes: tuple[str, ...]) -> tuple[list[str], dict[str, str], dict]:
    """Class names (params, else dataset.json), dataset.json's patient ids per case and the
    whole of dataset.json ({} without one)."""
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
        return list(classes), patients, meta
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
    return [pairs[k] for k in range(len(pairs))], patients, meta


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
    classes, patients, meta = read_meta(root, d.classes)
    images_tr = require_dir(root / "imagesTr", "segmentation.data.root (imagesTr/)")
    labels_tr = root / "labelsTr"
    cases = _cases(images_tr, labels_tr)
    if not cases:
        raise IngestError(f"{images_tr}: no {SUFFIX} volumes")
    channels = len(cases[0][1])
    names = channel_names(meta, root / "dataset.json", channels)
    pairs = [(c, img, labels_tr / f"{c}{SUFFIX}", None) for c, img in cases]
    warnings, unlabeled = [], []
    if (root / "imagesTs").is_dir():
        labels_ts = root / "labelsTs"
        if labels_ts.is_dir():
            ts = _cases(root / "imagesTs", labels_ts, channels)
            pairs += [(c, img, labels_ts / f"{c}{SUFFIX}", "test") for c, img in ts]
        elif ts := _cases(root / "imagesTs", channels=channels):
            unlabeled += ts
            warnings.append(
                f"{root / 'imagesTs'}: no labelsTs/, its {len(ts)} volumes join the unlabeled pool"
            )
    if (root / "imagesUnl").is_dir():
        unlabeled += _cases(root / "imagesUnl", channels=channels)

    records, ranges = [], {}
    for cid, img, lab, part in [*pairs, *((c, i, None, "train_unlabeled") for c, i in unlabeled)]:
        if lab is None:
            images, _, spacing = load_case(img)
        else:
            images, spacing, _ = check_pair(img, require_file(lab, f"label of {img[0]}"), classes)
        for path, image in zip(img, images, strict=True):
            warnings += check_finite(path, image, p.nan_policy)
        warnings += spacing_warnings(img[0], spacing, p.spacing)
        ranges[str(img[0])] = intensity_range(images[0])
        records.append(
            {
                "id": cid,
                "image": str(img[0]) if channels == 1 else [str(i) for i in img],
                "label": None if lab is None else str(lab),
                "group": group_of(cid, d.group_regex, patients.get(cid)),
                "part": part,
            }
        )
    warnings += _intensity_warnings(p, names, ranges)
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
    return Index(classes, records, warnings, {"channels": channels, "channel_names": names})


def _intensity_warnings(p, names, ranges) -> list[str]:
    """At most one line per dataset: the normalisation disagrees with dataset.json's modality,
    or (no modality named) the HU window meets intensities unlike HU."""
    mode, warning = resolve_mode(p.normalize, names)
    if warning:
        return [warning]
    return hu_warning(ranges, p.window) if mode == "ct_window" and names is None else []
