"""Files in and out of prediction: finding inputs, refusing bad ones, writing results safely.

Inputs are a file, a folder (searched recursively) or a CSV with a path column (relative
paths are relative to the CSV's folder). Every problem is a `PredictError` with one line that
names the file, raised before anything is written. Outputs go to a temporary folder beside
the output folder that replaces it whole on success (`semimed.io.atomic_dir`), so a failed
run leaves nothing partial behind; an existing output folder is replaced only if it holds a
previous run's `predictions.json`.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from semimed.config import ConfigError
from semimed.io import atomic_dir, write_bytes_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
MANIFEST = "predictions.json"  # written last; marks a folder as ours to replace


class PredictError(ConfigError):
    """Bad input for prediction or export; the one-line message names the file (a
    ConfigError, so stages and the console script end with that line, exit code 2)."""


@dataclass(frozen=True)
class Item:
    """One input: `id` (names its outputs; a relative path without suffix) and its file;
    a multi-channel volume also has `channels`, one file per input channel (`path` is the
    first)."""

    id: str
    path: Path
    channels: tuple[Path, ...] = ()

    @property
    def files(self) -> list[Path]:
        return list(self.channels) or [self.path]


def _suffix(path: Path, suffixes: Sequence[str]) -> str | None:
    name = path.name.lower()
    return next((s for s in suffixes if name.endswith(s)), None)


def _stem(path: Path, suffixes: Sequence[str]) -> str:
    suffix = _suffix(path, suffixes)
    return path.name[: -len(suffix)] if suffix else path.stem


def discover(
    inputs: Sequence[str | Path], suffixes: Sequence[str], path_column: str = "path"
) -> list[Item]:
    """Every input file, in a stable order: files as given, folders' files (with one of
    `suffixes`, hidden files skipped) sorted by path, a CSV's rows in order."""
    items: list[Item] = []
    kind = "NIfTI volume" if suffixes == NIFTI_SUFFIXES else "image"
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and _suffix(p, suffixes) and not p.name.startswith(".")
            )
            if not found:
                raise PredictError(f"{path}: no {kind} files ({', '.join(suffixes)}) inside")
            for p in found:
                rel = p.relative_to(path)
                items.append(Item((rel.parent / _stem(p, suffixes)).as_posix(), p))
        elif path.suffix.lower() == ".csv" and path.is_file():
            items += _csv_items(path, suffixes, path_column, kind)
        elif path.is_file():
            if not _suffix(path, suffixes):
                raise PredictError(f"{path}: not a {kind} file ({', '.join(suffixes)})")
            items.append(Item(_stem(path, suffixes), path))
        else:
            raise PredictError(f"{path}: no such file or folder")
    seen: dict[str, Path] = {}
    for item in items:
        if item.id in seen:
            raise PredictError(f"{item.path}: same name as {seen[item.id]}; outputs would clash")
        seen[item.id] = item.path
    return items


def _csv_items(path: Path, suffixes: Sequence[str], column: str, kind: str) -> list[Item]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PredictError(f"{path}: unreadable CSV ({err.__class__.__name__})") from None
    if not rows:
        raise PredictError(f"{path}: no rows")
    if column not in rows[0]:
        raise PredictError(
            f"{path}: no {column!r} column (has {', '.join(rows[0])}); use --path-column"
        )
    items = []
    for k, row in enumerate(rows, start=2):  # line 1 is the header
        file = path.parent / row[column] if row[column] else None
        if file is None or not file.is_file():
            raise PredictError(f"{path}: line {k}: {row[column]!r} is not a file")
        if not _suffix(file, suffixes):
            raise PredictError(f"{path}: line {k}: {file} is not a {kind} file")
        items.append(Item(row.get("id") or _stem(file, suffixes), file))
    return items


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_output(
    output: str | Path,
    inputs: Sequence[str | Path],
    items: Sequence[Item],
    model: Path,
    marker: str = MANIFEST,
) -> Path:
    """Refuse an output folder that is, holds or sits inside an input or the model folder,
    or that exists with files of its own (no `marker`: not a previous run's output)."""
    out = Path(output).resolve()
    for raw in [*inputs, *(f for i in items for f in i.files), model]:
        src = Path(raw).resolve()
        if _inside(src, out):
            raise PredictError(f"{output}: output folder would overwrite or contain {raw}")
        if src.is_dir() and _inside(out, src):
            raise PredictError(f"{output}: output folder lies inside {raw}; choose another")
    if out.exists():
        if not out.is_dir():
            raise PredictError(f"{output}: exists and is not a folder")
        if any(out.iterdir()) and not (out / marker).is_file():
            raise PredictError(
                f"{output}: exists and holds files of its own (no {marker}); choose another"
            )
    return Path(output)


@contextlib.contextmanager
def output_folder(output: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces `output` on success; on failure nothing is
    left: neither the temporary folder nor parents this call created."""
    output = Path(output)
    created = [p for p in [output.parent, *output.parent.parents] if not p.exists()]
    try:
        with atomic_dir(output) as tmp:
            yield tmp
    except BaseException:
        for parent in created:  # deepest first
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def read_volume(path: Path, in_channels: int) -> nib.spatialimages.SpatialImage:
    """The NIfTI header of `path`, refused unless it is a 3D volume (X, Y, Z) with the
    model's channel count (a 4D file is (X, Y, Z, C))."""
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises many kinds; the user needs one line
        first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise PredictError(f"{path}: unreadable as NIfTI ({first})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] != in_channels:
        raise PredictError(
            f"{path}: has {shape[3]} channels (shape {list(shape)}); the model takes {in_channels}"
        )
    if len(shape) != 3:
        raise PredictError(
            f"{path}: is {len(shape)}D (shape {list(shape)}); the model takes 3D volumes (X, Y, Z)"
        )
    return img


def group_channels(items: Sequence[Item], in_channels: int) -> list[Item]:
    """Volumes of a model with `in_channels` > 1: the files `<case>_0000.nii.gz` ..
    `<case>_<C-1>.nii.gz` (nnU-Net's names) become one item `<case>`; a file without a channel
    suffix, or a case missing a channel, is refused. One channel: `items` as they are."""
    if in_channels == 1:
        return list(items)
    cases: dict[str, dict[int, Path]] = {}
    for item in items:
        stem, _, channel = item.id.rpartition("_")
        if not (stem and len(channel) == 4 and channel.isdigit()):
            raise PredictError(
                f"{item.path}: the model takes {in_channels} input channels, one file each, "
                f"named <case>_0000 .. <case>_{in_channels - 1:04d}.nii.gz; this name has none"
            )
        cases.setdefault(stem, {})[int(channel)] = item.path
    out = []
    for case, files in cases.items():
        if sorted(files) != list(range(in_channels)):
            have = ", ".join(f"_{k:04d}" for k in sorted(files))
            raise PredictError(
                f"{files[min(files)]}: case {case!r} has channels {have}; the model takes "
                f"{in_channels} (_0000 .. _{in_channels - 1:04d})"
            )
        paths = tuple(files[k] for k in range(in_channels))
        out.append(Item(case, paths[0], paths))
    return out


def read_case(item: Item, in_channels: int) -> nib.spatialimages.SpatialImage:
    """The header of `item`'s first file (`read_volume`), after checking every channel file
    is a 3D volume on that file's grid (the same shape, affine within 1e-3)."""
    ref = read_volume(item.path, in_channels)
    for path in item.files[1:]:
        img = read_volume(path, in_channels)
        if tuple(img.shape) != tuple(ref.shape):
            raise PredictError(
                f"{path}: shape {list(img.shape)} differs from channel 0 {item.path} "
                f"{list(ref.shape)} (every input channel must share one voxel grid)"
            )
        if not np.allclose(img.affine, ref.affine, atol=1e-3):
            raise PredictError(
                f"{path}: affine differs from channel 0 {item.path} (every input channel "
                "must share one voxel grid)"
            )
    return ref


def _like(data: np.ndarray, ref: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """A NIfTI of `data` on `ref`'s grid: the same affine, qform/sform and units."""
    out = nib.Nifti1Image(data, ref.affine)
    header = ref.header
    sform = int(header["sform_code"]) if "sform_code" in header else 0
    qform = int(header["qform_code"]) if "qform_code" in header else 0
    if sform or qform:
        out.set_sform(ref.affine if sform else None, code=sform)
        out.set_qform(ref.get_qform() if qform else None, code=qform)
    else:
        out.set_sform(ref.affine, code=2)  # no code in the input: keep its affine explicitly
    with contextlib.suppress(Exception):
        out.header.set_xyzt_units(*ref.header.get_xyzt_units())
    return out


def write_nifti(path: Path, data: np.ndarray, ref: nib.spatialimages.SpatialImage) -> None:
    """Write `data` (X, Y, Z) or (X, Y, Z, C) in `ref`'s grid, atomically."""
    img = _like(data, ref)
    img.set_data_dtype(data.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, _to_bytes(img, path))


def _to_bytes(img: nib.Nifti1Image, path: Path) -> bytes:
    if path.name.endswith(".gz"):
        import gzip

        return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
    return img.to_bytes()


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """A CSV with `columns` in that order, atomically."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def write_manifest(folder: Path, obj: dict) -> None:
    write_bytes_atomic(folder / MANIFEST, (json.dumps(obj, indent=2) + "\n").encode())
