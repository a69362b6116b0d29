"""`segmentation.preprocess.normalize`: the rule chosen from dataset.json's modality, one
warning per dataset where the modality and the settings disagree, the percentile rule's
dataset statistics reused at prediction, and the HU window's output unchanged."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import source_fixtures as fx
import torch
from conftest import TINY, merge
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from semimed.build import parse_task
from semimed.data.intensity import Intensity, resolve_mode
from semimed.data.original_space import preprocess_volume
from semimed.data.preprocess import preprocess
from semimed.data.sources import ingest
from semimed.transforms.dictionary import BatchRandIntensityd


def _cfg(default_params, root, **preprocess):
    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))["segmentation"]
    params["data"].update(source="nifti", root=str(root))
    params["preprocess"].update({"spacing": [4.0, 4.0, 4.0], **preprocess})
    return parse_task("segmentation", params)


def mr_single(root, cases: int = 3, modality: dict | None = None):
    """One-sequence MR (T2-like, scanner units 0..~800) in the MSD layout."""
    rng = np.random.default_rng(1)
    for k in range(cases):
        images, lab = fx.mr_case(rng)
        fx.save_nifti(root / "imagesTr" / f"mr_{k}.nii.gz", images[0])
        fx.save_nifti(root / "labelsTr" / f"mr_{k}.nii.gz", lab)
    meta = {"labels": {"0": "background", "1": "lesion"}}
    if modality is not None:
        meta["modality"] = modality
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_mr_with_default_settings_is_zscored_without_a_ct_warning(tmp_path, default_params, capsys):
    root = mr_single(tmp_path / "mr", modality={"0": "MRI"})
    cfg = _cfg(default_params, root)
    manifest = ingest(cfg, tmp_path / "in")
    assert manifest["warnings"] == [] and "CT" not in capsys.readouterr().err
    out = preprocess(cfg, tmp_path / "in", tmp_path / "out")
    assert out["intensity"]["mode"] == "zscore" and out["channel_names"] == ["MRI"]


def test_mismatch_warns_once_per_dataset(tmp_path, default_params):
    root = mr_single(tmp_path / "mr", cases=4, modality={"0": "MRI"})
    cfg = _cfg(default_params, root, normalize="ct_window", window=[0, 800])
    warnings = ingest(cfg, tmp_path / "in")["warnings"]
    assert len(warnings) == 1
    assert (
        "names the channels MRI, not CT, but segmentation.preprocess.normalize is ct_window"
        in (warnings[0])
    )
    out = preprocess(cfg, tmp_path / "in", tmp_path / "out")  # the user's choice is applied
    assert out["intensity"] == Intensity("ct_window", 1, (0.0, 800.0)).to_dict()
    # no modality named: the HU heuristic, also once for the whole dataset
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "lesion"}}))
    warnings = ingest(_cfg(default_params, root), tmp_path / "in2")["warnings"]
    assert len(warnings) == 1 and "unlike CT in HU (and 3 more of 4 volumes)" in warnings[0]


def test_resolve_mode_rules():
    assert resolve_mode("auto", ["CT"]) == ("ct_window", None)
    assert resolve_mode("auto", None) == ("ct_window", None)
    assert resolve_mode("auto", ["T2", "ADC"]) == ("zscore", None)
    assert resolve_mode("percentile", ["CT"]) == ("percentile", None)
    assert "HU calibration is lost" in resolve_mode("zscore", ["ct"])[1]


def test_percentile_statistics_are_the_datasets_and_reused_by_predict(tmp_path, default_params):
    root = mr_single(tmp_path / "mr", cases=3)
    cfg = _cfg(default_params, root, normalize="percentile")
    ingest(cfg, tmp_path / "in")
    out = preprocess(cfg, tmp_path / "in", tmp_path / "out")
    fg = np.concatenate(
        [
            fx.nib.load(root / "imagesTr" / f"mr_{k}.nii.gz").get_fdata()[
                fx.nib.load(root / "labelsTr" / f"mr_{k}.nii.gz").get_fdata() > 0
            ]
            for k in range(3)
        ]
    )
    spec = out["intensity"]
    assert spec["mode"] == "percentile"
    assert spec["clip"][0] == pytest.approx(list(np.percentile(fg, [0.5, 99.5])))
    assert spec["mean"][0] == pytest.approx(fg.mean()) and spec["std"][0] == pytest.approx(fg.std())
    image = np.load(tmp_path / "out" / "mr_0_image.npy")
    raw = fx.nib.load(root / "imagesTr/mr_0.nii.gz").get_fdata()
    lo, hi = spec["clip"][0]
    want = (np.clip(raw, lo, hi) - spec["mean"][0]) / spec["std"][0]  # body crop = whole volume
    assert image.shape == (1, 16, 16, 16)
    np.testing.assert_allclose(image[0], want, rtol=1e-5, atol=1e-5)
    # prediction's chain with the stored statistics gives exactly what training saw
    again = preprocess_volume(root / "imagesTr/mr_0.nii.gz", [4.0, 4.0, 4.0], spec)
    np.testing.assert_array_equal(again.numpy(), image)


def test_ct_window_output_is_the_hu_window_chain_byte_for_byte(tmp_path, default_params):
    """The default (`auto` on CT) is the HU-window chain the project always ran."""
    root = fx.nifti(tmp_path / "ct", cases=3, unlabeled=1)
    meta = json.loads((root / "dataset.json").read_text()) | {"channel_names": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    cfg = _cfg(default_params, root)
    ingest(cfg, tmp_path / "in")
    out = preprocess(cfg, tmp_path / "in", tmp_path / "out")
    assert out["intensity"]["mode"] == "ct_window"
    lo, hi = cfg.preprocess.window
    keys = ["image", "label"]
    chain = Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=(4.0, 4.0, 4.0), mode=("bilinear", "nearest")),
            ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
            CropForegroundd(keys, source_key="image", margin=2, allow_smaller=True),
            EnsureTyped(keys, data_type="numpy", track_meta=False),
        ]
    )
    for k in range(3):
        want = chain(
            {
                "image": str(root / f"imagesTr/ct_{k:03d}_0000.nii.gz"),
                "label": str(root / f"labelsTr/ct_{k:03d}.nii.gz"),
            }
        )
        got = np.load(tmp_path / "out" / f"ct_{k:03d}_image.npy")
        assert got.tobytes() == want["image"].astype(np.float32).tobytes()


def test_zscore_fills_nonfinite_voxels_with_zero(tmp_path, default_params):
    root = mr_single(tmp_path / "mr", modality={"0": "T2"})
    img = fx.nib.load(root / "imagesTr/mr_1.nii.gz").get_fdata().astype(np.float32)
    img[5, 5, 5] = np.nan
    fx.save_nifti(root / "imagesTr/mr_1.nii.gz", img)
    cfg = _cfg(default_params, root, nan_policy="zero")
    ingest(cfg, tmp_path / "in")
    preprocess(cfg, tmp_path / "in", tmp_path / "out")
    image = np.load(tmp_path / "out" / "mr_1_image.npy")
    assert np.isfinite(image).all() and image[0, 5, 5, 5] == 0


def test_bad_normalize_value_is_one_line(default_params, tmp_path):
    with pytest.raises(
        ValueError, match=r"normalize: must be one of auto, ct_window, zscore, percentile"
    ):
        _cfg(default_params, tmp_path, normalize="minmax")


def test_gamma_on_zscored_volumes_keeps_negative_values():
    x = torch.linspace(-2, 3, 2 * 16**3).reshape(2, 1, 16, 16, 16)
    unit = BatchRandIntensityd(["image"], gamma=0.3, prob=1.0).set_random_state(0)
    wide = BatchRandIntensityd(["image"], gamma=0.3, prob=1.0, unit_range=False)
    out = wide.set_random_state(0)({"image": x.clone()})["image"]
    assert unit({"image": x.clone()})["image"].min() >= 0  # [0, 1] data: negatives clipped
    assert out.min() == pytest.approx(x.min()) and out.amax() == pytest.approx(x.max())
    assert not torch.equal(out, x)
