"""`semimed predict` and the predict_<task> stage: outputs in the input's own grid, the CSV,
and one-line refusals of bad input that leave nothing written."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_model_folder import cls_data, make_model_folder, seg_data, with_network

from semimed.data.original_space import labels_in_original_space, preprocess_volume
from semimed.data.preprocess import segmentation_chain
from semimed.inference import predict_volume, volume_logits
from semimed.serving.console import main
from semimed.serving.model_folder import LoadedModel, read_card
from semimed.serving.predict import load_predict_params, predict, stage_output

ROOT = Path(__file__).resolve().parents[2]
WINDOW = (-175.0, 250.0)


def oblique_affine(spacing=(1.2, 1.0, 2.5), degrees=25.0) -> np.ndarray:
    """Axes permuted and flipped (not RAS), rotated about x, anisotropic voxels (mm)."""
    t = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ swap @ np.diag(spacing)
    affine[:3, 3] = [10.0, -20.0, 5.0]
    return affine


def box_volume(path, affine, shape=(40, 36, 20)):
    """A CT-like volume: air, a body at 0 HU and a 200 HU box (the mask it returns)."""
    image = np.full(shape, -1000.0, np.float32)
    image[3:-3, 3:-3, 2:-2] = 0.0
    mask = np.zeros(shape, np.uint8)
    mask[8:30, 9:28, 5:15] = 1
    image[mask == 1] = 200.0
    nib.save(nib.Nifti1Image(image, affine), path)
    return mask


def dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory, default_params):
    from conftest import TINY, merge

    from semimed.build import parse_task

    cfg = parse_task("segmentation", merge(copy.deepcopy(default_params), TINY)["segmentation"])
    folder, _ = make_model_folder(tmp_path_factory.mktemp("seg") / "run", cfg, "cps", seg_data())
    return folder


@pytest.fixture(scope="module")
def cls_model(tmp_path_factory, default_params):
    from conftest import TINY, merge

    from semimed.build import parse_task

    over = merge(copy.deepcopy(default_params), TINY)["classification"]
    cfg = with_network(parse_task("classification", over), "cnn", (4, 8))
    folder, _ = make_model_folder(
        tmp_path_factory.mktemp("cls") / "run", cfg, "supervised", cls_data(("view", "quality"))
    )
    return folder


@pytest.fixture
def volumes(tmp_path):
    """Two volumes in different grids: RAS-aligned 2 mm, and oblique anisotropic."""
    folder = tmp_path / "volumes"
    folder.mkdir()
    box_volume(folder / "ras.nii.gz", np.diag([2.0, 2.0, 2.0, 1.0]), (24, 20, 14))
    box_volume(folder / "sub_obl.nii", oblique_affine(), (40, 36, 20))
    return folder


def test_segmentation_outputs_have_the_inputs_grid(seg_model, volumes, tmp_path):
    out = tmp_path / "pred"
    info = predict(seg_model, [volumes], out, task="segmentation", probabilities=True)
    assert {f["id"] for f in info["files"]} == {"ras", "sub_obl"}
    for src in sorted(volumes.iterdir()):
        name = src.name.split(".")[0]
        ref, labels = nib.load(src), nib.load(out / f"{name}.nii.gz")
        assert labels.shape == ref.shape and np.allclose(labels.affine, ref.affine, atol=1e-6)
        data = np.asanyarray(labels.dataobj)
        assert data.dtype == np.uint8 and data.max() < 3
        probs = nib.load(out / f"{name}_probs.nii.gz")
        assert probs.shape == (*ref.shape, 3) and np.allclose(probs.affine, ref.affine, atol=1e-6)
        assert np.allclose(probs.get_fdata().sum(-1), 1.0, atol=1e-4)
    manifest = json.loads((out / "predictions.json").read_text())
    assert manifest["weights_sha256"] == read_card(seg_model)["weights"]["sha256"]


class Threshold(torch.nn.Module):
    """A stand-in for a trained network: class 1 where the windowed intensity > 0.65 (the
    200 HU box maps to 0.88, the 0 HU body to 0.41). (B, 1, X, Y, Z) -> (B, 2, X, Y, Z)."""

    def forward(self, x):
        return torch.cat([0.65 - x, x - 0.65], 1) * 20


def test_oblique_anisotropic_round_trip(seg_model, tmp_path):
    """preprocess (RAS, 1.5 mm, window, crop) -> sliding window -> inverse lands the box
    where it is in the file's own oblique grid."""
    mask = box_volume(tmp_path / "obl.nii.gz", oblique_affine())
    card = read_card(seg_model)
    card = card | {
        "class_names": {"label": ["background", "box"]},
        "task_sizes": [2],
        "preprocess": card["preprocess"] | {"spacing": [1.5, 1.5, 1.5], "window": list(WINDOW)},
    }
    model = LoadedModel(Threshold(), card, seg_model, torch.device("cpu"))
    predict(model, [tmp_path / "obl.nii.gz"], tmp_path / "out")
    out = nib.load(tmp_path / "out" / "obl.nii.gz")
    assert out.shape == mask.shape
    assert np.allclose(out.affine, nib.load(tmp_path / "obl.nii.gz").affine, atol=1e-6)
    assert dice(np.asanyarray(out.dataobj), mask) >= 0.95


def test_labels_in_original_space_for_evaluation(tmp_path):
    """The labeled training chain puts a label on the image's preprocessed grid; inverting it
    from the image path alone returns the label file's own voxels."""
    affine = oblique_affine()
    mask = box_volume(tmp_path / "img.nii.gz", affine)
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "lab.nii.gz")
    spacing = (1.5, 1.5, 1.5)
    chain = segmentation_chain(spacing, WINDOW, labeled=True)
    out = chain({"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")})
    assert out["label"].shape == preprocess_volume(tmp_path / "img.nii.gz", spacing, WINDOW).shape
    back = labels_in_original_space(out["label"], tmp_path / "img.nii.gz", spacing, WINDOW)
    assert back.shape == mask.shape and back.dtype == np.uint8
    assert dice(back, mask) >= 0.95
    with pytest.raises(ValueError, match="not on the preprocessed grid"):
        labels_in_original_space(np.zeros((3, 3, 3)), tmp_path / "img.nii.gz", spacing, WINDOW)


def test_sliding_window_matches_evaluation(seg_model, volumes):
    """predict's logits give evaluation's label map (semimed.inference.predict_volume)."""
    from semimed.serving.model_folder import load_model

    model = load_model(seg_model)
    card = model.card
    image = preprocess_volume(volumes / "ras.nii.gz", card["preprocess"]["spacing"], WINDOW)
    inf = card["inference"]
    logits = volume_logits(
        model.network, image.as_tensor(), inf["patch_size"], inf["overlap"], 2, "cpu"
    )
    want = predict_volume(model.network, image.numpy(), inf["patch_size"], inf["overlap"], 2, "cpu")
    assert np.array_equal(logits.argmax(1)[0].numpy().astype(np.uint8), want)


def _pngs(folder: Path, n=5):
    rng = np.random.default_rng(0)
    for k in range(n):
        sub = folder / ("b" if k % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        mode = "RGB" if k == 0 else "L"  # colour is converted as in training
        shape = (20, 24, 3) if mode == "RGB" else (20, 24)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(sub / f"i{k}.png")


def test_classification_csv(cls_model, tmp_path, capsys):
    _pngs(tmp_path / "images")
    assert (
        main(["predict", str(cls_model), str(tmp_path / "images"), "-o", str(tmp_path / "o")]) == 0
    )
    with open(tmp_path / "o" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    probs = [f"prob_view_{c}" for c in ("PLAX", "PSAX", "A4C")] + [
        "prob_quality_poor",
        "prob_quality_good",
    ]
    assert list(rows[0]) == ["id", "path", "view", "quality", *probs]
    assert [r["id"] for r in rows] == ["b/i1", "b/i3", "i0", "i2", "i4"]  # sorted by path
    for r in rows:
        view = [float(r[c]) for c in probs[:3]]
        assert (
            abs(sum(view) - 1) < 1e-4 and r["view"] == ["PLAX", "PSAX", "A4C"][int(np.argmax(view))]
        )
        assert abs(float(r["prob_quality_poor"]) + float(r["prob_quality_good"]) - 1) < 1e-4
    # a CSV with a path column (relative to the CSV) and ids
    (tmp_path / "list.csv").write_text("id,path\nfirst,images/i0.png\nsecond,images/b/i1.png\n")
    predict(cls_model, [tmp_path / "list.csv"], tmp_path / "o2", batch_size=1)
    with open(tmp_path / "o2" / "predictions.csv") as f:
        assert [r["id"] for r in csv.DictReader(f)] == ["first", "second"]


def _garbage(path: Path, data=b"not an image at all"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _nifti(path: Path, shape) -> list[Path]:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    return [path]


def _nan_volume(path: Path) -> list[Path]:
    data = np.full((16, 16, 16), 100.0, np.float32)  # soft tissue, inside the window
    data[8, 8, 8] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return [path]


# case -> (model, inputs made in tmp_path, what the one line says)
BAD = {
    "unreadable volume": (
        "seg",
        lambda t: [_garbage(t / "in" / "x.nii.gz")],
        "unreadable as NIfTI",
    ),
    "unreadable image": ("cls", lambda t: [_garbage(t / "in" / "x.png")], "unreadable as an image"),
    "2D volume": ("seg", lambda t: _nifti(t / "a.nii", (8, 8)), "is 2D"),
    "2 channels": ("seg", lambda t: _nifti(t / "a.nii", (8, 8, 8, 2)), "has 2 channels"),
    "not a volume": ("seg", lambda t: [_garbage(t / "in" / "x.png")], "not a NIfTI volume"),
    "missing input": ("seg", lambda t: [t / "nope.nii.gz"], "no such file"),
    "NaN voxels": ("seg", lambda t: _nan_volume(t / "nan.nii.gz"), "NaN or infinite voxels"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, seg_model, cls_model, tmp_path, capsys):
    kind, make, message = BAD[case]
    inputs = make(tmp_path)
    model = seg_model if kind == "seg" else cls_model
    out = tmp_path / "deep" / "out"
    assert main(["predict", str(model), *map(str, inputs), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "deep").exists()


def test_model_of_another_task_is_refused(cls_model, volumes, tmp_path, capsys):
    args = [
        "predict",
        str(cls_model),
        str(volumes),
        "-o",
        str(tmp_path / "o"),
        "--task",
        "segmentation",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a classification model; the segmentation task" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["same", "parent", "inside", "model", "foreign"])
def test_output_that_would_clobber_is_refused(where, seg_model, volumes, tmp_path, capsys):
    out = {
        "same": volumes,
        "parent": tmp_path,
        "inside": volumes / "pred",
        "model": seg_model,
        "foreign": tmp_path / "mine",
    }[where]
    if where == "foreign":
        _garbage(out / "notes.txt", b"keep me")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["predict", str(seg_model), str(volumes), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out}"), err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_failure_mid_run_leaves_nothing(seg_model, volumes, tmp_path, capsys):
    """The second volume is all air (nothing to segment): the first's output is discarded."""
    nib.save(
        nib.Nifti1Image(np.full((12, 12, 12), -1000, np.float32), np.eye(4)), volumes / "zz.nii"
    )
    assert main(["predict", str(seg_model), str(volumes), "-o", str(tmp_path / "o")]) == 2
    assert "zz.nii: no voxel above the intensity window" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_predict_params_and_stage(seg_model, volumes, tmp_path, monkeypatch, default_params):
    """The stage reads <task>.predict, writes <output>/<input>, and bad params name the key."""
    params = copy.deepcopy(default_params)
    params["segmentation"]["predict"] = {
        "model": str(seg_model),
        "inputs": ["volumes"],
        "output": "predictions/segmentation",
        "batch_size": 2,
        "probabilities": False,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert load_predict_params("segmentation").inputs == ("volumes",)
    assert stage_output("predictions/s", "a/b.csv") == Path("predictions/s/a/b.csv")
    spec = importlib.util.spec_from_file_location("predict_stage", ROOT / "stages" / "predict.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr(sys, "argv", ["predict.py", "--task", "segmentation", "--input", "volumes"])
    stage.run()
    assert (tmp_path / "predictions" / "segmentation" / "volumes" / "ras.nii.gz").is_file()
    params["segmentation"]["predict"]["batch_size"] = 0
    del params["classification"]["predict"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="segmentation.predict.batch_size"):
        load_predict_params("segmentation")
    with pytest.raises(ValueError, match="classification.predict: missing key"):
        load_predict_params("classification")


def test_dvc_plans_one_stage_per_input_and_none_by_default(tmp_path, default_params):
    """`matrix` over <task>.predict.inputs: [] plans no stage, two inputs plan two."""
    dvc = Path(sys.executable).parent / "dvc"
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = copy.deepcopy(default_params)
    block = {"model": "m", "output": "predictions/x", "batch_size": None, "probabilities": False}
    params["classification"]["predict"] = block | {"inputs": []}
    params["segmentation"]["predict"] = block | {"inputs": ["a", "b/c"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    out = subprocess.run([dvc, "stage", "list"], cwd=tmp_path, capture_output=True, text=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("predict_")]
    assert names == ["predict_segmentation@a", "predict_segmentation@b/c"], out.stdout + out.stderr
    artifacts = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    assert {a["path"] for a in artifacts.values()} == {
        "models/classification",
        "models/segmentation",
    }
    assert all(a["type"] == "model" for a in artifacts.values())
