"""Multi-channel volumes (nnU-Net's `<case>_0000`, `<case>_0001`, ...) end to end: ingest
checks every channel's grid, preprocess normalises per channel, every segmentation method
trains on C channels, the model card and `semimed predict` / `semimed export` take C files or
channels per case. The dataset is a tiny 2-channel MR-like one (T2 + ADC, 16^3) built here."""

from __future__ import annotations

import copy
import json
import runpy
import sys

import nibabel as nib
import numpy as np
import pytest
import source_fixtures as fx
import torch
import yaml
from conftest import ROOT, TINY, merge

from semimed.build import method_for_data, parse_task, stream_spec
from semimed.data.loaders import TrainStream
from semimed.data.original_space import preprocess_volume
from semimed.data.preprocess import preprocess
from semimed.data.sources import ingest
from semimed.data.sources.validate import IngestError
from semimed.data.splits import make_splits
from semimed.data.taskdata import load_task_data
from semimed.methods import METHODS
from semimed.serving.export import export_model
from semimed.serving.model_folder import load_model
from semimed.serving.predict import predict
from semimed.serving.predict_io import PredictError

MR = {
    "data": {"source": "nifti"},
    "preprocess": {"spacing": [4.0, 4.0, 4.0]},
    "split": {"labeled_percent": 50, "val_percent": 20, "test_percent": 20},
    "network": {"channels": [4, 8, 16]},
}


def _params(default_params, root, **preprocess) -> dict:
    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    merge(params["segmentation"], copy.deepcopy(MR))
    params["segmentation"]["data"]["root"] = str(root)
    params["segmentation"]["preprocess"].update(preprocess)
    return params


def _cfg(default_params, root, **preprocess):
    return parse_task("segmentation", _params(default_params, root, **preprocess)["segmentation"])


def _stage(stage: str, monkeypatch, *args: str) -> None:
    fn = runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="stage")["run"]
    monkeypatch.setattr(sys, "argv", [stage, "--task", "segmentation", *args])
    fn()


@pytest.fixture(scope="module")
def mr_root(tmp_path_factory):
    return fx.mr_nifti(tmp_path_factory.mktemp("mr") / "mr")


@pytest.fixture(scope="module")
def mr_data(mr_root, tmp_path_factory, default_params):
    """The 2-channel set ingested, preprocessed and split with the default settings."""
    cfg = _cfg(default_params, mr_root)
    out = tmp_path_factory.mktemp("mr_data")
    manifest = ingest(cfg, out / "ingested")
    preprocess(cfg, out / "ingested", out / "processed")
    split = make_splits(json.loads((out / "processed/manifest.json").read_text()), cfg.split)
    (out / "splits.json").write_text(json.dumps(split))
    return cfg, manifest, out


def test_ingest_groups_channels_and_preprocess_zscores_each(mr_data):
    cfg, manifest, out = mr_data
    assert manifest["channels"] == 2 and manifest["channel_names"] == ["T2", "ADC"]
    assert manifest["warnings"] == []  # MR with the default settings: no CT warning
    rec = manifest["records"][0]
    assert rec["id"] == "mr_000" and [p[-12:] for p in rec["image"]] == [
        "_0000.nii.gz",
        "_0001.nii.gz",
    ]
    unlabeled = [r for r in manifest["records"] if r["label"] is None]
    assert [r["id"] for r in unlabeled] == ["mr_006", "mr_007"]
    processed = json.loads((out / "processed/manifest.json").read_text())
    assert processed["intensity"]["mode"] == "zscore" and processed["intensity"]["channels"] == 2
    image = np.load(out / "processed/mr_000_image.npy")
    assert image.shape == (2, 16, 16, 16) and image.dtype == np.float32
    for c in range(2):  # z-scored over the non-zero (body) voxels, background kept at 0
        body = image[c][image[c] != 0]
        assert abs(body.mean()) < 1e-4 and abs(body.std() - 1) < 1e-3
        assert image[c][0, 0, 0] == 0
    # prediction's chain on the two files gives exactly what training saw
    again = preprocess_volume(rec["image"], cfg.preprocess.spacing, processed["intensity"])
    np.testing.assert_array_equal(again.numpy(), image)


@pytest.mark.parametrize("name", sorted(METHODS["segmentation"]))
def test_every_method_trains_and_infers_on_two_channels(mr_data, name):
    cfg, _, out = mr_data
    data = load_task_data(cfg, out / "processed", out / "splits.json")
    assert data.in_channels == 2
    cls = METHODS["segmentation"][name]
    torch.manual_seed(0)
    method = method_for_data(cfg, data, name)
    batch = next(TrainStream(data, cfg, stream_spec(cls), 0, torch.device("cpu")))
    assert batch["x_lb"].shape[1] == 2
    loss = method.training_step(batch, 0)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    model = method.inference_model().eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, 2, 16, 16, 16))
    assert logits.shape == (1, 2, 16, 16, 16)


def test_two_channel_mr_runs_ingest_to_predict(mr_root, tmp_path, monkeypatch, default_params):
    params = _params(default_params, mr_root)
    params["segmentation"]["methods"] = ["supervised"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("ingest", "preprocess", "split"):
        _stage(stage, monkeypatch)
    for stage in ("train", "evaluate"):
        _stage(stage, monkeypatch, "--method", "supervised", "--seed", "0")
    metrics = json.loads((tmp_path / "metrics/segmentation/supervised/seed0.json").read_text())
    assert "lesion" in metrics["per_class"]
    folder = tmp_path / "models/segmentation/supervised/seed0"
    card = json.loads((folder / "model.json").read_text())
    assert card["in_channels"] == 2 and card["preprocess"]["channel_names"] == ["T2", "ADC"]
    assert card["preprocess"]["intensity"]["mode"] == "zscore"

    new = tmp_path / "new"  # two new cases, in another grid (spacing 3 mm, shifted origin)
    rng = np.random.default_rng(5)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [10.0, -4.0, 2.0]
    for k in range(2):
        images, _ = fx.mr_case(rng, size=18)
        for c in range(2):
            path = new / f"pt{k}_{c:04d}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(images[c], affine), str(path))
    loaded = load_model(folder)
    result = predict(loaded, [new], tmp_path / "pred")
    assert [f["id"] for f in result["files"]] == ["pt0", "pt1"]
    assert result["files"][0]["input"] == [
        str(new / "pt0_0000.nii.gz"),
        str(new / "pt0_0001.nii.gz"),
    ]
    out = nib.load(tmp_path / "pred" / "pt0.nii.gz")
    assert out.shape == (18, 18, 18) and np.allclose(out.affine, affine)

    (new / "pt1_0001.nii.gz").unlink()  # a case missing a channel: refused, nothing written
    with pytest.raises(PredictError, match=r"pt1_0000\.nii\.gz: case 'pt1' has channels _0000"):
        predict(loaded, [new], tmp_path / "pred2")
    assert not (tmp_path / "pred2").exists()
    with pytest.raises(PredictError, match=r"takes 2 input channels, one file each"):
        predict(
            loaded, [new / "pt0_0000.nii.gz", mr_root / "labelsTr/mr_000.nii.gz"], tmp_path / "p3"
        )

    info = export_model(loaded, tmp_path / "export", formats=("torchscript",))
    assert info["input"]["shape"] == ["batch", 2, 16, 16, 16]
    assert info["max_abs_difference"]["torchscript"] <= 1e-4


# ------------------------------------------------------------------ bad multi-channel input
def test_case_missing_a_channel_is_refused(tmp_path, default_params):
    root = fx.mr_nifti(tmp_path / "mr", cases=3, unlabeled=0)
    (root / "imagesTr/mr_001_0001.nii.gz").unlink()
    with pytest.raises(
        IngestError,
        match=r"mr_001_0000\.nii\.gz: case 'mr_001' has input channels 0000; expected 2",
    ):
        ingest(_cfg(default_params, root), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_channel_on_another_grid_is_refused(tmp_path, default_params):
    root = fx.mr_nifti(tmp_path / "mr", cases=3, unlabeled=0)
    fx.save_nifti(root / "imagesTr/mr_002_0001.nii.gz", np.zeros((16, 16, 15), np.int16))
    with pytest.raises(
        IngestError, match=r"mr_002_0001\.nii\.gz: shape \(16, 16, 15\) differs from channel 0"
    ):
        ingest(_cfg(default_params, root), tmp_path / "out")
    fx.save_nifti(
        root / "imagesTr/mr_002_0001.nii.gz", np.zeros((16, 16, 16), np.int16), spacing=(4, 4, 5)
    )
    with pytest.raises(IngestError, match=r"mr_002_0001\.nii\.gz: affine differs from channel 0"):
        ingest(_cfg(default_params, root), tmp_path / "out")


def test_channel_names_must_match_the_files(tmp_path, default_params):
    root = fx.mr_nifti(tmp_path / "mr", cases=3, unlabeled=0)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(
        IngestError, match=r"dataset\.json: names 1 input channels \(T2\); the images have 2"
    ):
        ingest(_cfg(default_params, root), tmp_path / "out")


def test_auto_refuses_a_mix_of_ct_and_other_channels(tmp_path, default_params):
    root = fx.mr_nifti(tmp_path / "mr", cases=3, unlabeled=0, channels=("CT", "PET"))
    with pytest.raises(ValueError, match=r"normalize: auto cannot choose for channels CT, PET"):
        ingest(_cfg(default_params, root), tmp_path / "out")
