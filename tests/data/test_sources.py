"""Every data source end to end through the stages, and every bad-input case's exact error.

Datasets are built inside the tests in each source's layout (tests/source_fixtures.py).
The pipeline tests run the stage scripts' `run()` in order (ingest, preprocess, split, then
train and evaluate per method) in a temporary working folder, as `dvc repro` would; the real
`dvc repro` on user data is in tests/pipeline/test_pipeline_e2e.py.
"""

from __future__ import annotations

import copy
import gzip
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import source_fixtures as fx
import yaml
from conftest import ROOT, TINY, merge

from semimed.build import check_unlabeled_pool, parse_task
from semimed.config import ConfigError
from semimed.data.preprocess import preprocess
from semimed.data.sources import ingest
from semimed.data.sources.validate import IngestError
from semimed.data.splits import make_splits


def _params(default_params, task: str, data: dict, **sections) -> dict:
    over = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    merge(over[task]["data"], copy.deepcopy(data))
    if "labels" in data.get("csv", {}):  # a mapping that replaces, not merges
        over[task]["data"]["csv"]["labels"] = dict(data["csv"]["labels"])
    for name, value in sections.items():
        merge(over[task][name], value)
    return over


def _cfg(default_params, task, data, **sections):
    return parse_task(task, _params(default_params, task, data, **sections)[task])


def run_stage(stage: str, monkeypatch, *args: str) -> None:
    fn = runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="stage")["run"]
    monkeypatch.setattr(sys, "argv", [stage, *args])
    fn()


def pipeline(tmp_path, monkeypatch, params: dict, task: str, methods) -> dict:
    """ingest -> preprocess -> split -> train -> evaluate through the stage scripts."""
    monkeypatch.chdir(tmp_path)
    params[task]["methods"] = list(methods)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("ingest", "preprocess", "split"):
        run_stage(stage, monkeypatch, "--task", task)
    metrics = {}
    for m in methods:
        for stage in ("train", "evaluate"):
            run_stage(stage, monkeypatch, "--task", task, "--method", m, "--seed", "0")
        metrics[m] = json.loads((tmp_path / "metrics" / task / m / "seed0.json").read_text())
    return metrics


def _split(tmp_path) -> dict:
    return json.loads(next(tmp_path.glob("data/*/splits.json")).read_text())


# ------------------------------------------------------------------ each source, end to end
def test_tmed2_official_split_and_unlabeled_frames(tmp_path, monkeypatch, default_params):
    root = fx.tmed2(tmp_path / "tmed")
    data = {"source": "tmed2", "root": str(root), "targets": ["severity"]}
    params = _params(default_params, "classification", data, split={"official": True})
    metrics = pipeline(tmp_path, monkeypatch, params, "classification", ["supervised", "fixmatch"])
    split = _split(tmp_path)
    assert split["counts"]["test"] == 15 and split["counts"]["val"] == 15  # 3 patients x 5
    assert split["unlabeled_only"] == [f"{100 + k}s1_0.png" for k in range(6)]
    manifest = json.loads((tmp_path / "data/classification/ingested/manifest.json").read_text())
    assert manifest["classes"]["view"][-1] == "A4CorA2CorOther"
    # release values fold into 3 levels: mild-to-moderate -> mild, moderate -> severe
    sev = {r["id"]: r["labels"]["severity"] for r in manifest["records"] if r["labels"]}
    assert sev["2s1_0.png"] == "mild_AS" and sev["3s1_0.png"] == "severe_AS"
    assert set(metrics["fixmatch"]) >= {"balanced_accuracy", "accuracy"}


def test_isic2018_rgb_lesion_groups(tmp_path, monkeypatch, default_params):
    root = fx.isic2018(tmp_path / "isic")
    data = {"source": "isic2018", "root": str(root), "targets": ["diagnosis"]}
    params = _params(default_params, "classification", data, preprocess={"channels": 3})
    params["classification"]["split"].update(labeled_percent=60, test_percent=20, val_percent=20)
    pipeline(tmp_path, monkeypatch, params, "classification", ["supervised", "fixmatch"])
    images = np.load(tmp_path / "data/classification/processed/images.npy")
    assert images.shape[1:] == (3, 32, 32)
    manifest = json.loads((tmp_path / "data/classification/processed/manifest.json").read_text())
    group = {r["id"]: r["group"] for r in manifest["records"]}
    assert group["ISIC_Tr0000"] == group["ISIC_Tr0001"] == "HAM_Tr00"  # one lesion, one group
    split = _split(tmp_path)
    assert len(split["unlabeled_only"]) == 4 and split["counts"]["test"] > 0


def test_image_folder_with_unlabeled_folder(tmp_path, monkeypatch, default_params):
    root = fx.image_folder(tmp_path / "folders")
    data = {"source": "image_folder", "root": str(root), "targets": ["label"]}
    data["group_regex"] = r"^([PU]\d+)_"
    params = _params(default_params, "classification", data)
    params["classification"]["split"].update(labeled_percent=50, test_percent=25, val_percent=25)
    metrics = pipeline(tmp_path, monkeypatch, params, "classification", ["supervised", "fixmatch"])
    manifest = json.loads((tmp_path / "data/classification/ingested/manifest.json").read_text())
    assert manifest["classes"] == {"label": ["benign", "malignant"]}
    split = _split(tmp_path)
    # patients P000.. own two images each: both always land in the same split
    by_group = {}
    for part in ("train_labeled", "train_unlabeled", "val", "test"):
        for i in split[part]:
            by_group.setdefault(Path(i).name.split("_")[0], set()).add(
                part if part in ("val", "test") else "train"
            )
    assert all(len(parts) == 1 for parts in by_group.values())
    assert len(split["unlabeled_only"]) == 5
    assert metrics["supervised"]["per_class"].keys() >= {"benign", "malignant"}


def test_csv_multitask_with_unlabeled_rows(tmp_path, monkeypatch, default_params):
    root = fx.csv_manifest(tmp_path / "table")
    csv_params = {"labels": {"dx": "dx", "site": "site"}, "group_column": "patient"}
    csv_params["split_column"] = "split"
    data = {"source": "csv", "root": str(root), "targets": ["dx", "site"], "csv": csv_params}
    params = _params(default_params, "classification", data, split={"official": True})
    pipeline(tmp_path, monkeypatch, params, "classification", ["supervised"])
    split = _split(tmp_path)
    assert len(split["unlabeled_only"]) == 2  # the two train rows with an empty dx
    assert (
        split["counts"]["test"] == 8 and split["counts"]["val"] == 8
    )  # 3 patients x 3, one unlabeled
    metrics = json.loads((tmp_path / "metrics/classification/supervised/seed0.json").read_text())
    assert "site" in metrics["tasks"]


@pytest.mark.parametrize("volume", [False, True], ids=["2d", "3d"])
def test_medmnist_2d_and_3d(tmp_path, monkeypatch, default_params, volume):
    root = fx.medmnist(tmp_path / "mnist", volume=volume)
    data = {"source": "medmnist", "root": str(root), "targets": ["label"]}
    data["medmnist"] = {"file": "toymnist.npz"}
    params = _params(default_params, "classification", data, split={"official": True})
    params["classification"]["preprocess"]["image_size"] = 8
    pipeline(tmp_path, monkeypatch, params, "classification", ["supervised", "fixmatch"])
    images = np.load(tmp_path / "data/classification/processed/images.npy")
    assert images.shape == ((40, 1, 8, 8, 8) if volume else (40, 1, 8, 8))
    assert _split(tmp_path)["counts"]["test"] == 8


def test_nifti_nnunet_names_unlabeled_and_lists(tmp_path, monkeypatch, default_params):
    root = fx.nifti(tmp_path / "ct", lists=True)
    lists = {
        "train_labeled": "splits/labeled.txt",
        "train_unlabeled": "splits/unlabeled.txt",
        "val": "splits/eval.txt",
        "test": "splits/test.txt",
    }
    data = {"source": "nifti", "root": str(root), "split_lists": lists}
    params = _params(default_params, "segmentation", data, split={"official": True})
    metrics = pipeline(
        tmp_path, monkeypatch, params, "segmentation", ["supervised", "mean_teacher"]
    )
    split = _split(tmp_path)
    assert split["train_labeled"] == ["ct_000", "ct_001"]
    assert split["train_unlabeled"] == ["ct_002", "ct_003", "ct_004", "un_000", "un_001", "un_002"]
    assert split["unlabeled_only"] == ["un_000", "un_001", "un_002"]
    assert split["test"] == ["ct_007", "ct_008", "ct_009"]
    assert set(metrics["mean_teacher"]["per_class"]) >= {"liver", "kidney"}
    processed = tmp_path / "data/segmentation/processed"
    assert (processed / "un_000_image.npy").is_file() and not (
        processed / "un_000_label.npy"
    ).exists()


# ------------------------------------------------------------------ bad input: exact errors
def _ingest_fails(cfg, out: Path, match: str):
    with pytest.raises(IngestError, match=match):
        ingest(cfg, out)
    assert not out.exists()
    assert not any(p.name.startswith(f".{out.name}.") for p in out.parent.iterdir())


def test_missing_root(tmp_path, default_params):
    cfg = _cfg(
        default_params,
        "classification",
        {"source": "image_folder", "root": str(tmp_path / "nope"), "targets": ["label"]},
    )
    _ingest_fails(cfg, tmp_path / "out", r"classification\.data\.root: folder '.*nope' not found")


def test_file_listed_in_csv_missing(tmp_path, default_params):
    root = fx.csv_manifest(tmp_path / "t")
    (root / "images/pat3_1.png").unlink()
    cfg = _cfg(
        default_params,
        "classification",
        {"source": "csv", "root": str(root), "targets": ["dx"], "csv": {"labels": {"dx": "dx"}}},
    )
    _ingest_fails(cfg, tmp_path / "out", r"pat3_1\.png: file not found \(listed image\)")


def test_csv_missing_named_column(tmp_path, default_params):
    root = fx.csv_manifest(tmp_path / "t")
    cfg = _cfg(
        default_params,
        "classification",
        {
            "source": "csv",
            "root": str(root),
            "targets": ["dx"],
            "csv": {"labels": {"dx": "diagnosis"}},
        },
    )
    _ingest_fails(
        cfg,
        tmp_path / "out",
        r"labels\.csv: missing column 'diagnosis' \(classification\.data\.csv\); columns are: path, dx",
    )


def test_truncated_png(tmp_path, default_params):
    root = fx.image_folder(tmp_path / "f")
    png = root / "benign" / "P000_1.png"
    png.write_bytes(png.read_bytes()[:60])
    cfg = _cfg(
        default_params,
        "classification",
        {"source": "image_folder", "root": str(root), "targets": ["label"]},
    )
    _ingest_fails(cfg, tmp_path / "out", r"P000_1\.png: unreadable or truncated image")


def test_image_folder_same_file_name_in_two_classes(tmp_path, default_params):
    """torchvision's ImageFolder numbering (`a/0.png`, `b/0.png`): ids are relative paths."""
    root = tmp_path / "f"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for k in range(3):
            fx.save_image(root / name / f"{k}.png", fx._image(rng, k))
    fx.save_image(root / "a" / "scan1" / "0.png", fx._image(rng, 0))  # a nested folder
    data = {"source": "image_folder", "root": str(root), "targets": ["label"]}
    manifest = ingest(_cfg(default_params, "classification", data), tmp_path / "out")
    ids = [r["id"] for r in manifest["records"]]
    assert ids == ["a/0", "a/1", "a/2", "a/scan1/0", "b/0", "b/1", "b/2"]
    assert [r["group"] for r in manifest["records"]] == ids  # no regex: one group per image
    # a grouping regex runs on the path inside the class folder: `0` in a/ and b/ is one group
    grouped = ingest(
        _cfg(default_params, "classification", data | {"group_regex": r"^(?:scan\d+/)?(\d+)$"}),
        tmp_path / "out2",
    )
    assert [r["group"] for r in grouped["records"]] == ["0", "1", "2", "0", "0", "1", "2"]
    assert [r["labels"]["label"] for r in grouped["records"]] == ["a"] * 4 + ["b"] * 3


def test_unknown_label_value_in_csv(tmp_path, default_params):
    root = fx.tmed2(tmp_path / "t", patients=4)
    text = (root / "labels_per_image.csv").read_text().replace("PSAX", "PSAXX", 1)
    (root / "labels_per_image.csv").write_text(text)
    cfg = _cfg(default_params, "classification", {"source": "tmed2", "root": str(root)})
    _ingest_fails(
        cfg,
        tmp_path / "out",
        r"labels_per_image\.csv: line 3 \(0s1_1\.png\) has view_label 'PSAXX'; expected one of PLAX",
    )


def test_target_not_offered_by_source(tmp_path, default_params):
    root = fx.image_folder(tmp_path / "f")
    cfg = _cfg(
        default_params,
        "classification",
        {"source": "image_folder", "root": str(root), "targets": ["view"]},
    )
    _ingest_fails(
        cfg,
        tmp_path / "out",
        r"classification\.data\.targets: 'view' is not a label of source image_folder \(it has: label\)",
    )


def test_group_in_two_official_splits(tmp_path, default_params):
    root = fx.csv_manifest(tmp_path / "t")
    text = (
        (root / "labels.csv")
        .read_text()
        .replace(
            "images/pat0_1.png,melanoma,face,pat0,train",
            "images/pat0_1.png,melanoma,face,pat0,test",
        )
    )
    (root / "labels.csv").write_text(text)
    csv_params = {"labels": {"dx": "dx"}, "group_column": "patient", "split_column": "split"}
    cfg = _cfg(
        default_params,
        "classification",
        {"source": "csv", "root": str(root), "targets": ["dx"], "csv": csv_params},
        split={"official": True},
    )
    _ingest_fails(
        cfg,
        tmp_path / "out",
        r"patient 'pat0' falls in two splits: 'images/pat0_0\.png' in train and 'images/pat0_1\.png' in test",
    )


def test_corrupt_nifti(tmp_path, default_params):
    root = fx.nifti(tmp_path / "ct", cases=3, unlabeled=0)
    path = root / "labelsTr" / "ct_001.nii.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:400]))  # truncated data
    cfg = _cfg(default_params, "segmentation", {"source": "nifti", "root": str(root)})
    _ingest_fails(cfg, tmp_path / "out", r"labelsTr/ct_001\.nii\.gz: unreadable or corrupt NIfTI")


def test_image_label_shape_and_affine_mismatch(tmp_path, default_params):
    root = fx.nifti(tmp_path / "ct", cases=3, unlabeled=0)
    fx.save_nifti(root / "labelsTr" / "ct_001.nii.gz", np.zeros((20, 20, 19), np.uint8))
    cfg = _cfg(default_params, "segmentation", {"source": "nifti", "root": str(root)})
    _ingest_fails(
        cfg,
        tmp_path / "out",
        r"ct_001\.nii\.gz: shape \(20, 20, 19\) differs from its image .*ct_001_0000\.nii\.gz \(20, 20, 20\)",
    )
    fx.save_nifti(
        root / "labelsTr" / "ct_001.nii.gz",
        np.zeros((20, 20, 20), np.uint8),
        spacing=(4.0, 4.0, 5.0),
    )
    _ingest_fails(cfg, tmp_path / "out", r"ct_001\.nii\.gz: affine differs from its image")


def test_label_value_outside_classes(tmp_path, default_params):
    root = fx.nifti(tmp_path / "ct", cases=3, unlabeled=0)
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5, 5, 5] = 7
    fx.save_nifti(root / "labelsTr" / "ct_002.nii.gz", lab)
    cfg = _cfg(default_params, "segmentation", {"source": "nifti", "root": str(root)})
    _ingest_fails(
        cfg,
        tmp_path / "out",
        r"ct_002\.nii\.gz: label value 7 outside the declared classes 0\.\.2 \(background, liver, kidney\)",
    )


def test_corrupt_medmnist_npz(tmp_path, default_params):
    root = fx.medmnist(tmp_path / "m")
    (root / "toymnist.npz").write_bytes((root / "toymnist.npz").read_bytes()[:100])
    data = {
        "source": "medmnist",
        "root": str(root),
        "targets": ["label"],
        "medmnist": {"file": "toymnist.npz"},
    }
    _ingest_fails(
        _cfg(default_params, "classification", data),
        tmp_path / "out",
        r"toymnist\.npz: unreadable \.npz",
    )


def test_class_without_labeled_example_after_split(tmp_path, default_params):
    root = fx.image_folder(tmp_path / "f", per_class=8)
    for p in sorted((root / "malignant").iterdir())[1:]:
        p.unlink()  # one malignant image left: it cannot be both labeled-train and elsewhere
    cfg = _cfg(
        default_params,
        "classification",
        {"source": "image_folder", "root": str(root), "targets": ["label"]},
    )
    ingest(cfg, tmp_path / "in")
    manifest = preprocess(cfg, tmp_path / "in", tmp_path / "proc")
    with pytest.raises(
        ConfigError, match=r"split: no labeled training example of class\(es\) malignant"
    ):
        for seed in range(4):  # whichever fold holds the single image, train lacks it
            make_splits(
                manifest, type(cfg.split)(**{**cfg.split.__dict__, "seed": seed}), cfg.data.targets
            )


def test_empty_unlabeled_pool_for_ssl_method(default_params):
    cfg = _cfg(default_params, "classification", {})
    split = {"train_unlabeled": []}
    with pytest.raises(
        ConfigError,
        match=r"classification\.split: the unlabeled pool is empty, but fixmatch need unlabeled data",
    ):
        check_unlabeled_pool(cfg, split)


def test_warnings_for_spacing_and_non_ct_intensities(tmp_path, default_params, capsys):
    root = tmp_path / "mr"
    rng = np.random.default_rng(0)
    for k in range(2):
        img = rng.integers(0, 400, size=(20, 20, 20)).astype(np.int16)  # MR-like, no air in HU
        fx.save_nifti(root / "imagesTr" / f"mr_{k}.nii.gz", img, spacing=(1.0, 1.0, 20.0))
        fx.save_nifti(
            root / "labelsTr" / f"mr_{k}.nii.gz",
            (img > 200).astype(np.uint8),
            spacing=(1.0, 1.0, 20.0),
        )
    data = {"source": "nifti", "root": str(root), "classes": ["background", "lesion"]}
    manifest = ingest(_cfg(default_params, "segmentation", data), tmp_path / "out")
    text = " ".join(manifest["warnings"])
    assert "mr_0.nii.gz: spacing (1.0, 1.0, 20.0) mm is far from preprocess.spacing" in text
    assert "intensities span [0, 399], unlike CT in HU" in text
    assert "warning:" in capsys.readouterr().err


def test_ingest_stage_exits_nonzero_with_one_line(tmp_path, monkeypatch, default_params, capsys):
    params = _params(
        default_params,
        "classification",
        {"source": "image_folder", "root": "absent", "targets": ["label"]},
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setattr(sys, "argv", ["ingest", "--task", "classification"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "stages/ingest.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: classification.data.root: folder 'absent' not found"]
    assert not (tmp_path / "data/classification/ingested").exists()
