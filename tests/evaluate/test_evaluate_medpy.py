"""HD95 and ASD are medpy's ``hd95`` and ``asd`` (what DHC's and SSL4MIS's evaluations call):
the project's values against medpy's on whole, uncropped volumes of random masks with
islands and holes, anisotropic spacing included."""

import numpy as np
import pytest
import torch
from medpy.metric.binary import asd, dc, hd95
from scipy.ndimage import binary_fill_holes, gaussian_filter
from scipy.ndimage import label as components

from semimed.evaluate import SegmentationScorer
from semimed.evaluate.segmentation import _binary_scores

SHAPE = (30, 26, 20)
SPACINGS = [(0.7, 1.3, 2.5), (1.0, 1.0, 1.0), (2.2, 0.6, 3.1)]
TOL_MM = 1e-6  # the bound; reported values are rounded to 6 decimals (<= 5e-7 off)


def _blobs(rng: np.random.Generator, threshold: float) -> np.ndarray:
    """(X, Y, Z) bool: thresholded smooth noise (several lumpy blobs, some cut by the array's
    edge), plus isolated single-voxel islands and single-voxel holes inside the blobs."""
    mask = gaussian_filter(rng.standard_normal(SHAPE), 2.0) > threshold
    inner = np.zeros(SHAPE, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    core = mask.copy()
    for axis in range(3):  # voxels whose 6 face neighbours are all in the mask
        for shift in (1, -1):
            core &= np.roll(mask, shift, axis)
    holes = core & inner & (rng.random(SHAPE) < 0.06)
    islands = ~mask & (rng.random(SHAPE) < 0.003)
    return (mask & ~holes) | islands


def _pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = _blobs(rng, 0.08)
    pred = _blobs(rng, 0.1)
    pred[(rng.random(SHAPE) < 0.5) & label] = True  # overlapping, as a prediction would be
    return pred, label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_have_islands_holes_and_touch_the_edge(seed):
    """The fixture is what it claims: otherwise the comparison below proves less."""
    for mask in _pair(seed):
        assert components(mask)[1] >= 5  # islands (connected components, 6-connectivity)
        assert (binary_fill_holes(mask) & ~mask).sum() >= 5  # enclosed holes
        faces = [mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]]
        assert any(face.any() for face in faces)  # the array's edge is part of a surface


@pytest.mark.parametrize("pad", [0, 3])  # 3: zeros around, so the scorer's crop is inside
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_scores_equal_medpy_on_the_whole_volume(seed, spacing, pad):
    pred, label = (np.pad(m, pad) for m in _pair(seed))
    dice, hd, sd = _binary_scores(torch.as_tensor(pred), torch.as_tensor(label), spacing)
    assert hd == pytest.approx(hd95(pred, label, voxelspacing=spacing), abs=TOL_MM, rel=0)
    assert sd == pytest.approx(asd(pred, label, voxelspacing=spacing), abs=TOL_MM, rel=0)
    assert dice == pytest.approx(dc(pred, label), abs=1e-6, rel=0)  # float32 in MONAI
    # ASD is directed (prediction -> label): on these masks the reverse direction differs
    assert abs(sd - asd(label, pred, voxelspacing=spacing)) > 10 * TOL_MM


def test_scorer_rows_equal_medpy_per_class_and_case():
    """Multi-class label maps through `SegmentationScorer.add`: every (case, class) row's
    HD95 and ASD is medpy's, with the case's own anisotropic spacing."""
    names = ["background", "a", "b"]
    scorer = SegmentationScorer(names)
    expected = []
    for case, spacing in enumerate(SPACINGS):
        pred_a, label_a = _pair(10 + case)
        pred_b, label_b = _pair(20 + case)
        pred = np.where(pred_b, 2, np.where(pred_a, 1, 0))
        label = np.where(label_b, 2, np.where(label_a, 1, 0))
        scorer.add(pred, label, spacing, case=str(case))
        for c, name in enumerate(names[1:], start=1):
            p, g = pred == c, label == c
            expected.append(
                (str(case), name, hd95(p, g, voxelspacing=spacing), asd(p, g, voxelspacing=spacing))
            )
    rows = scorer.cases
    assert [(r["case"], r["class"]) for r in rows] == [e[:2] for e in expected]
    assert not any(r["empty_rule"] for r in rows)
    for row, (_, _, ref_hd, ref_asd) in zip(rows, expected, strict=True):
        assert row["hd95_mm"] == pytest.approx(ref_hd, abs=TOL_MM, rel=0)
        assert row["asd_mm"] == pytest.approx(ref_asd, abs=TOL_MM, rel=0)
