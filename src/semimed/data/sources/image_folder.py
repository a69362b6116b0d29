"""A folder per class (torchvision `ImageFolder` style), plus an optional `unlabeled/` folder.

Layout under `data.root`::

    <class name>/<image>.png|jpg|jpeg|bmp|tif   one folder per class (at least two)
    unlabeled/**/<image>                        optional: images without labels

Target `label`; classes are the folder names (sorted; numerically if all are integers).
Id = the path under `data.root` without extension (`benign/0`, `unlabeled/scan3/0`), so
the same file name in two class folders gives two items, as in torchvision's ImageFolder.
Group = `data.group_regex` on the path inside the class (or `unlabeled/`) folder without
extension (`0`, `scan3/0`), else the image. There is no official split.
"""

from __future__ import annotations

from pathlib import Path

from semimed.data.sources.validate import (
    Index,
    IngestError,
    check_image,
    check_targets,
    group_of,
    sorted_names,
)

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
UNLABELED = "unlabeled"


def images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def read(cfg, root: Path) -> Index:
    check_targets({"label": None}, cfg.data.targets, "image_folder")
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    classes = sorted_names(p.name for p in folders if p.name != UNLABELED)
    if len(classes) < 2:
        raise IngestError(
            f"{root}: expected one sub-folder per class (at least two) and optionally "
            f"{UNLABELED}/; found {', '.join(p.name for p in folders) or 'none'}"
        )
    records = []
    for name in [*classes, UNLABELED]:
        paths = images_under(root / name) if (root / name).is_dir() else []
        if name != UNLABELED and not paths:
            raise IngestError(f"{root / name}: class folder without images ({', '.join(SUFFIXES)})")
        for path in paths:
            check_image(path)
            inner = path.relative_to(root / name).with_suffix("").as_posix()
            records.append(
                {
                    "id": f"{name}/{inner}",
                    "image": str(path),
                    "group": group_of(inner, cfg.data.group_regex, f"{name}/{inner}"),
                    "labels": None if name == UNLABELED else {"label": name},
                }
            )
    return Index({"label": classes}, records)
