"""Metric checks against hand-computed values (medpy itself: test_evaluate_medpy.py)."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from semimed.evaluate import (
    SegmentationScorer,
    classification_metrics,
    confusion_records,
)
from semimed.report.tables import flat_metrics

NAMES3 = ["A", "B", "C"]


def _probs_for(pred: list[int], n_classes: int) -> np.ndarray:
    """(N, C) probabilities whose argmax is ``pred``."""
    probs = np.full((len(pred), n_classes), 0.1)
    probs[np.arange(len(pred)), pred] = 0.8
    return probs / probs.sum(1, keepdims=True)


# ---------------------------------------------------------------------------- classification


def test_classification_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, _probs_for(y_pred, 3), NAMES3)

    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows = true
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3, abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred), abs=1e-6
    )
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3, abs=1e-6)
    # specificity = TN / (TN + FP) per class, one vs rest.
    assert m["per_class"]["A"] == pytest.approx(
        {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "specificity": 1.0, "support": 3},
        abs=1e-6,
    )
    assert m["per_class"]["B"]["specificity"] == pytest.approx(3 / 4)
    assert m["per_class"]["C"]["specificity"] == pytest.approx(4 / 5)
    assert m["per_class"]["C"]["precision"] == pytest.approx(0.5)
    json.dumps(m, allow_nan=False)  # JSON-safe


def test_auc_equals_sklearn_ovr_when_all_classes_present():
    rng = np.random.default_rng(0)
    y_true = np.array([0, 1, 2] * 10)
    probs = rng.dirichlet(np.ones(3), size=30)
    m = classification_metrics(y_true, probs, NAMES3)
    expected = roc_auc_score(y_true, probs, multi_class="ovr", average="macro")
    assert m["auc"] == pytest.approx(expected, abs=1e-6)


def test_auc_with_absent_class_uses_present_classes_only():
    # Class C never occurs: AUC is the mean of the one-vs-rest AUCs of A and B, each 3/4.
    y_true = np.array([0, 0, 1, 1])
    col_a = np.array([0.9, 0.4, 0.6, 0.2])
    col_b = np.array([0.05, 0.5, 0.3, 0.7])
    probs = np.stack([col_a, col_b, 1 - col_a - col_b], axis=1)
    m = classification_metrics(y_true, probs, NAMES3)
    assert m["auc"] == pytest.approx(0.75)
    assert m["per_class"]["C"]["support"] == 0
    assert m["per_class"]["C"]["recall"] == 0.0  # zero_division=0, not NaN


def test_auc_is_none_with_a_single_present_class():
    m = classification_metrics(np.array([1, 1, 1]), _probs_for([1, 0, 1], 3), NAMES3)
    assert m["auc"] is None
    json.dumps(m, allow_nan=False)


def test_classification_input_errors():
    with pytest.raises(ValueError, match="columns"):
        classification_metrics(np.array([0, 1]), np.ones((2, 2)) / 2, NAMES3)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        classification_metrics(np.array([0, 1, 2]), np.ones((2, 3)) / 3, NAMES3)


def test_confusion_records():
    rows = confusion_records(np.array([0, 2]), np.array([1, 2]), NAMES3)
    assert rows == [{"actual": "A", "predicted": "B"}, {"actual": "C", "predicted": "C"}]
    with pytest.raises(ValueError):
        confusion_records(np.array([0, 3]), np.array([0, 1]), NAMES3)


# ------------------------------------------------------------------------------ segmentation

SEG_NAMES = ["background", "liver", "spleen"]


def _cube(shape=(24, 24, 24), lo=6, hi=14, value=1) -> np.ndarray:
    vol = np.zeros(shape, dtype=np.int64)
    vol[lo:hi, lo:hi, lo:hi] = value
    return vol


def test_perfect_prediction():
    label = _cube()
    label[16:20, 16:20, 16:20] = 2
    scorer = SegmentationScorer(SEG_NAMES)
    scorer.add(label.copy(), label, spacing=(1.5, 1.0, 2.0))
    agg = scorer.aggregate()
    assert agg["dice"] == pytest.approx(1.0)
    assert agg["hd95_mm"] == pytest.approx(0.0)
    assert agg["asd_mm"] == pytest.approx(0.0)
    assert agg["per_class"]["spleen"]["n"] == 1
    assert agg["n_volumes"] == 1


@pytest.mark.parametrize("axis", [0, 2])
def test_shifted_cube_distances_are_in_mm(axis):
    # An 8^3 cube shifted 2 voxels (3 mm each) along `axis`. By the mirror symmetry of the
    # pair both directed distance sets are equal; from the prediction's 296 surface voxels:
    # 168 lie on the label's surface (0 mm); the shifted face's 36 interior voxels lie inside
    # the label, 1, 2 or 3 mm from its side faces (20, 12 and 4 voxels); the ring one slice
    # past the label (28 voxels) is 3 mm from it and the far face (64 voxels) 6 mm.
    # HD95: the 95th percentile of both sets pooled (592 values, 128 of them 6 mm, the top
    # 21.6 %) is 6 mm. ASD: the mean from the prediction's surface, 524 mm / 296.
    label = _cube()
    pred = np.roll(label, 2, axis=axis)  # shift 2 voxels
    spacing = [1.0, 1.0, 1.0]
    spacing[axis] = 3.0  # 3 mm along the shift axis -> 6 mm
    scorer = SegmentationScorer(["background", "organ"])
    scorer.add(pred, label, spacing=tuple(spacing))
    agg = scorer.aggregate()
    assert agg["hd95_mm"] == pytest.approx(6.0, abs=1e-6)
    assert agg["asd_mm"] == pytest.approx(524 / 296, abs=1e-6)
    assert agg["dice"] == pytest.approx(2 * 6 * 64 / (2 * 8 * 64), abs=1e-6)


def _plate_and_island():
    """A 12 x 12 plate (label) and the same plate plus a 3 x 4 island 4 voxels above it."""
    label = np.zeros((16, 18, 18), dtype=np.int64)
    label[5, 3:15, 3:15] = 1
    pred = label.copy()
    pred[9, 5:8, 5:9] = 1
    return pred, label


def test_hd95_pools_both_directions_and_asd_is_directed():
    # One-voxel-thick masks are all surface. Label -> prediction: 144 distances of 0 (the
    # plate is in both). Prediction -> label: 144 of 0 and the island's 12 of 4 x 2.5 = 10 mm.
    # HD95 pools the 300 distances: 12 of 10 mm are the top 4 %, so the 95th percentile is 0
    # (the larger of the two directed 95th percentiles would be 10 mm). ASD is the mean from
    # the prediction's surface: 120 mm / 156 (both directions pooled: 120 mm / 300).
    pred, label = _plate_and_island()
    spacing = (2.5, 1.0, 1.0)
    scorer = SegmentationScorer(["background", "organ"])
    scorer.add(pred, label, spacing)
    agg = scorer.aggregate()
    assert agg["hd95_mm"] == pytest.approx(0.0, abs=1e-6)
    assert agg["asd_mm"] == pytest.approx(120 / 156, abs=1e-6)
    assert agg["dice"] == pytest.approx(2 * 144 / (156 + 144), abs=1e-6)
    # the island in the label instead: every prediction voxel lies on the label's surface
    swapped = SegmentationScorer(["background", "organ"])
    swapped.add(label, pred, spacing)
    assert (swapped.aggregate()["hd95_mm"], swapped.aggregate()["asd_mm"]) == (0.0, 0.0)


def test_distances_scale_with_spacing():
    label = _cube()
    pred = np.roll(label, 2, axis=1)
    results = []
    for s in (1.0, 2.5):
        scorer = SegmentationScorer(["background", "organ"])
        scorer.add(pred, label, spacing=(s, s, s))
        results.append(scorer.aggregate())
    assert results[1]["hd95_mm"] == pytest.approx(2.5 * results[0]["hd95_mm"], rel=1e-4)
    assert results[1]["asd_mm"] == pytest.approx(2.5 * results[0]["asd_mm"], rel=1e-4)


def test_shifted_plate_asd_equals_shift():
    # A one-voxel-thick plate shifted along its normal: every surface point is exactly the
    # shift away from the other surface, so HD95 = ASD = 2 voxels * 3 mm.
    label = np.zeros((20, 20, 20), dtype=np.int64)
    label[5, 3:15, 3:15] = 1
    pred = np.roll(label, 2, axis=0)
    scorer = SegmentationScorer(["background", "organ"])
    scorer.add(torch.as_tensor(pred), torch.as_tensor(label), spacing=(3.0, 1.0, 1.0))
    agg = scorer.aggregate()
    assert agg["hd95_mm"] == pytest.approx(6.0, abs=1e-6)
    assert agg["asd_mm"] == pytest.approx(6.0, abs=1e-6)


def test_empty_rules():
    shape, spacing = (10, 12, 14), (1.0, 2.0, 0.5)
    diagonal = math.sqrt(10**2 + 24**2 + 7**2)
    label = np.zeros(shape, dtype=np.int64)
    label[2:5, 2:5, 2:5] = 1  # liver present, spleen absent
    scorer = SegmentationScorer(SEG_NAMES)

    # Both empty for spleen -> skipped; liver missed -> Dice 0, distances = diagonal.
    scorer.add(np.zeros(shape, dtype=np.int64), label, spacing)
    agg = scorer.aggregate()
    assert agg["per_class"]["spleen"] == {"dice": None, "hd95_mm": None, "asd_mm": None, "n": 0}
    assert agg["per_class"]["liver"]["dice"] == 0.0
    assert agg["per_class"]["liver"]["hd95_mm"] == pytest.approx(diagonal, abs=1e-5)
    assert agg["per_class"]["liver"]["asd_mm"] == pytest.approx(diagonal, abs=1e-5)
    assert agg["dice"] == 0.0  # mean over scored classes only (spleen never scored)

    # Spleen predicted but absent from ground truth -> Dice 0, distances = diagonal.
    pred = label.copy()
    pred[7:9, 7:9, 7:9] = 2
    scorer.add(pred, label, spacing)
    agg = scorer.aggregate()
    assert agg["per_class"]["spleen"]["n"] == 1
    assert agg["per_class"]["spleen"]["dice"] == 0.0
    assert agg["per_class"]["spleen"]["hd95_mm"] == pytest.approx(diagonal, abs=1e-5)
    assert agg["per_class"]["liver"] == pytest.approx(
        {"dice": 0.5, "hd95_mm": diagonal / 2, "asd_mm": diagonal / 2, "n": 2}, abs=1e-5
    )
    assert agg["dice"] == pytest.approx((0.5 + 0.0) / 2)
    assert agg["n_volumes"] == 2
    json.dumps(agg, allow_nan=False)


def test_shape_mismatch_names_both_shapes():
    scorer = SegmentationScorer(SEG_NAMES)
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        scorer.add(np.zeros((8, 8, 8), int), np.zeros((8, 8, 9), int), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="values must lie"):
        scorer.add(np.full((4, 4, 4), 3), np.zeros((4, 4, 4), int), (1.0, 1.0, 1.0))


def test_flat_metrics_names():
    seg = {
        "dice": 0.5,
        "n_volumes": 2,
        "per_class": {
            "liver": {"dice": 0.7, "hd95_mm": 3.0, "n": 2},
            "left kidney": {"dice": None},
        },
    }
    assert flat_metrics(seg) == {
        "dice": 0.5,
        "n_volumes": 2.0,
        "dice_liver": 0.7,
        "hd95_mm_liver": 3.0,
        "n_liver": 2.0,
    }
    cls = classification_metrics(np.array([0, 1]), _probs_for([0, 1], 2), ["PLAX", "A4C"])
    flat = flat_metrics(cls)
    assert flat["recall_PLAX"] == 1.0 and flat["specificity_A4C"] == 1.0
    assert not any(k.startswith("confusion") for k in flat)
    assert all(isinstance(v, float) for v in flat.values())


# ------------------------------------------------------------------ original-space evaluation


class _Threshold(torch.nn.Module):
    """Logits (B, 2, X, Y, Z): class 1 where the [0, 1] intensity exceeds 0.75 (the organ)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.75)], dim=1)


def test_evaluate_run_scores_in_the_original_label_space(tmp_path):
    from types import SimpleNamespace

    import nibabel as nib

    from semimed.data.original_space import labels_in_original_space
    from semimed.data.preprocess import segmentation_chain
    from semimed.data.taskdata import TaskData
    from semimed.evaluate.original import read_label_file
    from semimed.evaluate.run import evaluate_run, write_cases

    # original files: 1 x 1 x 2 mm voxels; preprocessing resamples to 2 mm isotropic
    image = np.full((24, 24, 12), -1000.0, dtype=np.float32)  # air: below the window
    image[2:22, 2:22, 1:11] = 50.0  # body -> 0.5
    label = np.zeros(image.shape, dtype=np.uint8)
    label[7:17, 8:15, 3:8] = 1
    image[label == 1] = 100.0  # organ -> 1.0
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    files = {}
    for name, arr in (("image", image), ("label", label)):
        files[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), files[name])
    spacing, window = (2.0, 2.0, 2.0), (0.0, 100.0)
    out = segmentation_chain(spacing, window)({k: str(v) for k, v in files.items()})
    pre_image, pre_label = out["image"], np.rint(out["label"]).astype(np.uint8)
    ingested = tmp_path / "ingested"
    ingested.mkdir()
    records = [
        {"id": "a", "image": str(files["image"]), "label": str(files["label"])},
        {"id": "b", "image": str(files["image"]), "label": None},  # image only: skipped
    ]
    (ingested / "manifest.json").write_text(json.dumps({"records": records}))
    data = TaskData(
        task="segmentation",
        class_names=["background", "organ"],
        split={"test": ["a", "b"]},
        index={},
        volumes={"a": (pre_image, pre_label), "b": (pre_image, pre_label)},
        spacing=spacing,
    )
    cfg = SimpleNamespace(
        task="segmentation",
        train=SimpleNamespace(patch_size=(8, 8, 8)),
        eval=SimpleNamespace(overlap=0.25, sw_batch_size=2),
        preprocess=SimpleNamespace(spacing=spacing, window=window),
    )
    metrics, cases = evaluate_run(cfg, data, _Threshold(), "cpu", tmp_path / "plots", "t", ingested)

    # the headline is the original grid's score with the label file's own spacing
    pred = (pre_image[0] > 0.75).astype(np.uint8)
    mapped = labels_in_original_space(pred, files["image"], spacing, window)
    truth, file_spacing = read_label_file(files["label"])
    assert mapped.shape == label.shape and file_spacing == (1.0, 1.0, 2.0)
    expected = SegmentationScorer(["background", "organ"])
    expected.add(mapped, truth, file_spacing, case="a")
    for key in ("dice", "hd95_mm", "asd_mm", "per_class"):
        assert metrics[key] == expected.aggregate()[key]
    assert metrics["dice"] > 0.5 and metrics["n_volumes"] == 1
    assert metrics["n_skipped_original"] == 1
    # the preprocessed grid's scores kept beside them
    on_grid = metrics["resampled_space"]
    assert set(on_grid) == {"dice", "hd95_mm", "asd_mm", "per_class"}
    assert on_grid["per_class"]["organ"]["n"] == 2  # both processed cases have labels
    assert on_grid["dice"] != metrics["dice"]  # resampling the labels changed the organ
    json.dumps(metrics, allow_nan=False)

    assert [(r["case"], r["class"], r["empty_rule"]) for r in cases] == [("a", "organ", False)]
    assert cases[0]["dice"] == metrics["dice"]
    write_cases(tmp_path / "cases.csv", cases)
    header = (tmp_path / "cases.csv").read_text().splitlines()[0]
    assert header == "case,class,dice,hd95_mm,asd_mm,empty_rule"


def test_scorer_rows_mark_the_empty_rule():
    scorer = SegmentationScorer(["bg", "a", "b"])
    label = _cube()
    scorer.add(label, label, (1.0, 1.0, 1.0), case="x")  # class b: both empty, no row
    scorer.add(np.zeros_like(label), label, (1.0, 1.0, 1.0), case="y")  # a missed
    rows = [(r["case"], r["class"], r["dice"], r["empty_rule"]) for r in scorer.cases]
    assert rows == [("x", "a", 1.0, False), ("y", "a", 0.0, True)]


def test_geometry_cache_follows_the_file_and_refuses_a_missing_one(tmp_path):
    """`original_space.volume_geometry` is cached per file version: a volume rewritten at the same path
    (another shape) gets its own geometry; a missing file is one line naming it."""
    import os

    import nibabel as nib

    from semimed.config import ConfigError
    from semimed.data.original_space import volume_geometry as geometry

    path = tmp_path / "ct.nii.gz"
    shapes = []
    for k, shape in enumerate([(12, 10, 8), (16, 10, 8)]):
        arr = np.full(shape, 100, np.int16)
        nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])), path)
        os.utime(path, ns=(k * 10**9, k * 10**9))  # a new version even within one tick
        g = geometry(str(path), (1.0, 1.0, 2.0), (-200.0, 300.0))
        assert g.applied_operations and g.untyped_storage().nbytes() <= 4  # no voxels kept
        shapes.append(tuple(g.shape[1:]))
    assert shapes[0] != shapes[1]
    with pytest.raises(ConfigError, match="missing.nii.gz"):
        geometry(str(tmp_path / "missing.nii.gz"), (1.0, 1.0, 2.0), (-200.0, 300.0))
