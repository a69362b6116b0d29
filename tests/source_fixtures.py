"""Tiny datasets in each source's on-disk layout, built inside the tests (no downloads).

Every builder writes under `root` and returns it; images are small random textures whose
mean intensity depends on the class, so a few training steps have something to learn.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


def _image(rng, label: int, size: int = 16, rgb: bool = False) -> np.ndarray:
    base = rng.integers(0, 80, size=(size, size, 3) if rgb else (size, size))
    return (base + 60 * label).clip(0, 255).astype(np.uint8)


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tmed2(root: Path, patients: int = 12, seed: int = 0) -> Path:
    """labels_per_image.csv + labeled/<study>_<frame>.png + unlabeled/ frames."""
    rng = np.random.default_rng(seed)
    views = ["PLAX", "PSAX", "A4C", "A2C", "A4CorA2CorOther"]
    sev = ["no_AS", "mild_AS", "mildtomod_AS", "moderate_AS", "severe_AS"]
    rows = []
    for p in range(patients):
        part = "test" if p % 4 == 3 else ("val" if p % 4 == 2 else "train")
        for f in range(5):
            key = f"{p}s1_{f}.png"
            save_image(root / "labeled" / key, _image(rng, f % 3))
            rows.append([key, "labeled", views[f], sev[p % 5], part, part])
    for k in range(6):
        save_image(root / "unlabeled" / f"{100 + k}s1_0.png", _image(rng, k % 3))
    header = ["query_key", "SourceFolder", "view_label", "diagnosis_label"]
    header += ["view_classifier_split", "diagnosis_classifier_split"]
    write_csv(root / "labels_per_image.csv", header, rows)
    return root


ISIC = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


def isic2018(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    """Training Input/GroundTruth (one-hot), lesion groupings, Test part, unlabeled/."""
    rng = np.random.default_rng(seed)
    for part, n in (("Training", per_class), ("Validation", 1), ("Test", 1)):
        rows, groups = [], []
        for c in range(len(ISIC)):
            for k in range(n):
                name = f"ISIC_{part[:2]}{c}{k:03d}"
                save_image(
                    root / f"ISIC2018_Task3_{part}_Input" / f"{name}.jpg",
                    _image(rng, c % 3, rgb=True),
                )
                rows.append([name] + [float(j == c) for j in range(len(ISIC))])
                groups.append([name, f"HAM_{part[:2]}{c}{k // 2}"])
        gt = f"ISIC2018_Task3_{part}_GroundTruth"
        write_csv(root / gt / f"{gt}.csv", ["image", *ISIC], rows)
        if part == "Training":
            write_csv(
                root / "ISIC2018_Task3_Training_LesionGroupings.csv", ["image", "lesion_id"], groups
            )
    for k in range(4):
        save_image(root / "unlabeled" / f"ISIC_U{k:03d}.jpg", _image(rng, k % 3, rgb=True))
    return root


def image_folder(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    """<class>/P<k>_<n>.png for classes benign / malignant (two images per patient) + unlabeled/."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(["benign", "malignant"]):
        for k in range(per_class):
            save_image(root / name / f"P{c}{k // 2:02d}_{k}.png", _image(rng, 2 * c))
    for k in range(5):
        save_image(root / "unlabeled" / f"U{k:02d}_0.png", _image(rng, k % 2))
    return root


def csv_manifest(root: Path, patients: int = 12, seed: int = 0) -> Path:
    """images/*.png + labels.csv (path, dx, site, patient, split); some rows unlabeled."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        part = "test" if p % 4 == 3 else ("val" if p % 4 == 2 else "train")
        for k in range(3):
            rel = f"images/pat{p}_{k}.png"
            save_image(root / rel, _image(rng, (p + k) % 3))
            dx = ["nevus", "melanoma", "keratosis"][(p + k) % 3]
            site = ["trunk", "face"][k % 2]
            rows.append([rel, "" if (p < 4 and k == 2) else dx, site, f"pat{p}", part])
    write_csv(root / "labels.csv", ["path", "dx", "site", "patient", "split"], rows)
    return root


def medmnist(root: Path, name: str = "toymnist.npz", volume: bool = False, seed: int = 0) -> Path:
    """A MedMNIST-style npz: {train,val,test}_{images,labels}, 2D (N, 12, 12) or 3D (N, 8, 8, 8)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n in (("train", 24), ("val", 8), ("test", 8)):
        y = np.arange(n) % 3
        shape = (n, 8, 8, 8) if volume else (n, 12, 12)
        x = rng.integers(0, 80, size=shape) + 60 * y.reshape((-1,) + (1,) * (len(shape) - 1))
        arrays[f"{part}_images"] = x.clip(0, 255).astype(np.uint8)
        arrays[f"{part}_labels"] = y.reshape(-1, 1).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / name, **arrays)
    return root


def save_nifti(path: Path, array: np.ndarray, spacing=(4.0, 4.0, 4.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def ct_case(rng, size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """A body (fat) with a 'liver' block (class 1) and a small 'kidney' block (class 2), in HU."""
    hu = np.full((size,) * 3, -1000, np.int16)
    hu[2:-2, 2:-2, 2:-2] = -100
    lab = np.zeros((size,) * 3, np.uint8)
    o = rng.integers(3, 6, size=3)
    lab[o[0] : o[0] + 8, o[1] : o[1] + 8, o[2] : o[2] + 8] = 1
    lab[o[0] + 9 : o[0] + 12, o[1] : o[1] + 3, o[2] : o[2] + 3] = 2
    hu[lab == 1], hu[lab == 2] = 60, 150
    hu = hu + rng.integers(-20, 20, size=hu.shape).astype(np.int16)
    return hu, lab


def nifti(
    root: Path, cases: int = 10, unlabeled: int = 3, seed: int = 0, lists: bool = False
) -> Path:
    """imagesTr/labelsTr (nnU-Net `_0000` image names), imagesUnl/, MSD dataset.json, lists."""
    rng = np.random.default_rng(seed)
    for k in range(cases):
        hu, lab = ct_case(rng)
        save_nifti(root / "imagesTr" / f"ct_{k:03d}_0000.nii.gz", hu)
        save_nifti(root / "labelsTr" / f"ct_{k:03d}.nii.gz", lab)
    for k in range(unlabeled):
        save_nifti(root / "imagesUnl" / f"un_{k:03d}.nii.gz", ct_case(rng)[0])
    meta = {"name": "toy", "labels": {"0": "background", "1": "liver", "2": "kidney"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    if lists:
        (root / "splits").mkdir()
        ids = [f"ct_{k:03d}" for k in range(cases)]
        for name, part in (
            ("labeled.txt", ids[:2]),
            ("unlabeled.txt", ids[2:5]),
            ("eval.txt", ids[5:7]),
            ("test.txt", ids[7:]),
        ):
            (root / "splits" / name).write_text("\n".join(part) + "\n")
    return root


def mr_case(rng, size: int = 16) -> tuple[list[np.ndarray], np.ndarray]:
    """Two MR-like sequences (T2: lesion bright; ADC: lesion dark) of a body on a zero
    background, in arbitrary scanner units, and its label map (class 1: a lesion block)."""
    lab = np.zeros((size,) * 3, np.uint8)
    o = rng.integers(3, size - 9, size=3)
    lab[o[0] : o[0] + 6, o[1] : o[1] + 6, o[2] : o[2] + 6] = 1
    t2 = np.zeros((size,) * 3, np.float32)
    adc = np.zeros((size,) * 3, np.float32)
    body = (slice(2, -2),) * 3
    t2[body], adc[body] = 300, 1400
    t2[lab == 1], adc[lab == 1] = 700, 600
    t2[body] += rng.normal(0, 30, t2[body].shape)
    adc[body] += rng.normal(0, 60, adc[body].shape)
    return [t2.astype(np.int16), adc.astype(np.int16)], lab


def mr_nifti(
    root: Path, cases: int = 6, unlabeled: int = 2, seed: int = 0, channels=("T2", "ADC")
) -> Path:
    """nnU-Net v2 layout with one file per input channel: imagesTr/mr_<k>_000<c>.nii.gz,
    labelsTr/mr_<k>.nii.gz, imagesUnl/ (the same naming), dataset.json with channel_names."""
    rng = np.random.default_rng(seed)
    for k in range(cases + unlabeled):
        images, lab = mr_case(rng)
        folder = "imagesTr" if k < cases else "imagesUnl"
        for c in range(len(channels)):
            save_nifti(root / folder / f"mr_{k:03d}_{c:04d}.nii.gz", images[c])
        if k < cases:
            save_nifti(root / "labelsTr" / f"mr_{k:03d}.nii.gz", lab)
    meta = {
        "name": "toy-mr",
        "channel_names": {str(c): name for c, name in enumerate(channels)},
        "labels": {"background": 0, "lesion": 1},
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
