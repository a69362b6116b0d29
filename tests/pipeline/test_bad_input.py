"""Bad input (issue 15): NaN voxels, 16-bit and float images, constant images, label maps
without foreground, images smaller than the network or the patch. Each is refused with one
line naming the file, or handled by the rule docs/data.md ("Intensities") states."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import source_fixtures as fx
from conftest import TINY, merge
from PIL import Image

from semimed.build import parse_task
from semimed.config import ConfigError
from semimed.data.loaders import _padded_item
from semimed.data.preprocess import classification_chain, preprocess, segmentation_chain
from semimed.data.sources import ingest
from semimed.data.sources.validate import IngestError

SPACING, WINDOW = (4.0, 4.0, 4.0), (-175.0, 250.0)


def _cfg(default_params, task, data, **sections):
    over = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    merge(over[task]["data"], copy.deepcopy(data))
    for name, value in sections.items():
        merge(over[task][name], copy.deepcopy(value))
    return parse_task(task, over[task])


def _nan_case(tmp_path, default_params, **preprocess):
    root = fx.nifti(tmp_path / "ct", cases=3, unlabeled=0)
    hu, _ = fx.ct_case(np.random.default_rng(0))
    hu = hu.astype(np.float32)
    hu[6:9, 6:9, 6:9] = np.nan
    path = fx.save_nifti(root / "imagesTr" / "ct_001_0000.nii.gz", hu)
    data = {"source": "nifti", "root": str(root)}
    return _cfg(default_params, "segmentation", data, preprocess=preprocess), path


def test_nifti_with_nan_voxels_is_refused_at_ingest(tmp_path, default_params):
    cfg, path = _nan_case(tmp_path, default_params)
    with pytest.raises(IngestError) as err:
        ingest(cfg, tmp_path / "in")
    assert str(err.value).startswith(f"{path}: 27 NaN or infinite voxels;")
    assert "nan_policy: zero" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "in").exists()


def test_nan_policy_zero_warns_and_fills_with_zero(tmp_path, default_params):
    cfg, path = _nan_case(tmp_path, default_params, nan_policy="zero")
    manifest = ingest(cfg, tmp_path / "in")
    assert any(w.startswith(f"{path}: 27 NaN") for w in manifest["warnings"])
    preprocess(cfg, tmp_path / "in", tmp_path / "out")
    image = np.load(tmp_path / "out" / "ct_001_image.npy")
    assert np.isfinite(image).all() and image.min() == 0.0
    with pytest.raises(ValueError, match="nan_policy: must be one of error, zero"):
        _cfg(default_params, "segmentation", {}, preprocess={"nan_policy": "mean"})


def test_nonfinite_classification_image_stops_preprocess(tmp_path, default_params):
    root = fx.image_folder(tmp_path / "imgs")
    bad = root / "benign" / "P000_0.tif"
    x = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    x[3, 4] = np.nan
    Image.fromarray(x).save(bad)
    (root / "benign" / "P000_0.png").unlink()
    data = {"source": "image_folder", "root": str(root), "targets": ["label"]}
    cfg = _cfg(default_params, "classification", data | {"group_regex": r"^([PU]\d+)_"})
    ingest(cfg, tmp_path / "in")
    with pytest.raises(ConfigError, match=rf"^{bad}: NaN or infinite values after preprocessing"):
        preprocess(cfg, tmp_path / "in", tmp_path / "out")


def _preprocessed(path, size=16, channels=1):
    return classification_chain(size, channels)({"image": str(path)})["image"]


def test_16bit_png_is_scaled_by_its_own_range(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "xray.png"
    Image.fromarray(rng.integers(0, 65536, (16, 16)).astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    x = _preprocessed(path)  # was clipped to white: mean 0.998
    assert x.shape == (1, 16, 16) and x.min() == 0.0 and x.max() == 1.0
    assert 0.4 < x.mean() < 0.6
    # 12-bit data in a 16-bit file uses its own range, not 1/16 of the 16-bit one.
    Image.fromarray((rng.random((16, 16)) * 4095).astype(np.uint16)).save(path)
    x = _preprocessed(path)
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0) and x.mean() > 0.3
    assert _preprocessed(path, channels=3).shape == (3, 16, 16)  # one band, repeated


def test_float_tiff_is_scaled_by_its_own_range(tmp_path):
    path = tmp_path / "map.tif"
    x = np.linspace(-3, 7, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(x).save(path)
    np.testing.assert_allclose(_preprocessed(path)[0], (x + 3) / 10, atol=1e-6)


def test_constant_images_follow_the_documented_rule(tmp_path):
    flat8 = fx.save_image(tmp_path / "flat8.png", np.full((16, 16), 100, np.uint8))
    np.testing.assert_allclose(_preprocessed(flat8), 100 / 255, rtol=1e-6)  # 8-bit: kept
    flat16 = tmp_path / "flat16.png"
    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(flat16)
    assert (_preprocessed(flat16) == 0).all()  # wider: own range is empty -> 0


def test_blank_volume_is_refused_with_one_line(tmp_path, default_params):
    root = fx.nifti(tmp_path / "ct", cases=3, unlabeled=0)
    path = fx.save_nifti(root / "imagesTr" / "ct_002_0000.nii.gz", np.full((20,) * 3, -1000.0))
    cfg = _cfg(default_params, "segmentation", {"source": "nifti", "root": str(root)})
    ingest(cfg, tmp_path / "in")
    with pytest.raises(ConfigError, match=rf"^{path}: no voxel above preprocess.window's low"):
        preprocess(cfg, tmp_path / "in", tmp_path / "out")


def test_label_map_without_foreground_is_a_labeled_case(tmp_path, default_params):
    root = fx.nifti(tmp_path / "ct", cases=3, unlabeled=0)
    fx.save_nifti(root / "labelsTr" / "ct_001.nii.gz", np.zeros((20,) * 3, np.uint8))
    cfg = _cfg(default_params, "segmentation", {"source": "nifti", "root": str(root)})
    ingest(cfg, tmp_path / "in")
    out = preprocess(cfg, tmp_path / "in", tmp_path / "out")
    case = next(r for r in out["records"] if r["id"] == "ct_001")
    assert case["labeled"] and case["present"] == [0]


def test_images_smaller_than_the_network_or_patch(tmp_path):
    tiny = fx.save_image(tmp_path / "tiny.png", np.array([[0, 255, 0], [255, 0, 255]], np.uint8))
    assert _preprocessed(tiny, size=32).shape == (1, 32, 32)  # resized up like any image
    hu = np.full((3, 3, 3), 50, np.int16)
    files = {
        "image": str(fx.save_nifti(tmp_path / "v.nii.gz", hu)),
        "label": str(fx.save_nifti(tmp_path / "l.nii.gz", np.ones((3, 3, 3), np.uint8))),
    }
    out = segmentation_chain(SPACING, WINDOW)(files)
    item = _padded_item((out["image"], out["label"]), (16, 16, 16), num_classes=2)
    assert out["image"].shape == (1, 3, 3, 3) and item["image"].shape == (1, 16, 16, 16)
