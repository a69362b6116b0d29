"""Segmentation test metrics per case and class: Dice, HD95 and ASD in mm, with the
documented empty-mask rule (`SegmentationScorer`; docs/metrics.md).

Dice (Dice, Ecology 1945) is MONAI's (Cardoso et al., arXiv:2211.02701); the 95th percentile
Hausdorff distance (HD95) and the average surface distance (ASD) are medpy's
``medpy.metric.binary.hd95`` and ``asd`` -- the functions the DHC (Wang & Li, MICCAI 2023) and
SSL4MIS evaluations call -- measured in millimetres from the voxel spacing. Empty masks, ASD
in mm rather than voxels, and label and prediction shapes that do not match are each handled
explicitly below. Every value reported is rounded by `semimed.evaluate.metrics.rounded`.
"""

from __future__ import annotations

import numpy as np
import torch
from medpy.metric.binary import asd as medpy_asd
from medpy.metric.binary import hd95 as medpy_hd95
from monai.metrics import compute_dice

from semimed.evaluate.metrics import mean_rounded, rounded


def _as_label_map(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().long()
    return torch.as_tensor(np.asarray(x)).long()


def _crop_to_union(pred: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Crop two (X, Y, Z) bool masks to their union's bounding box plus a 1-voxel margin.

    Dice and surface distances only depend on voxels inside the union: the margin (or the
    array's own edge, where the union touches it) keeps every surface voxel a surface voxel,
    and the exact Euclidean distance between two voxels does not depend on the box, so the
    scores are unchanged. The distance transforms then run on the box, not the whole volume.
    """
    union = pred | label
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = torch.nonzero(union.any(dim=other)).flatten()
        box.append(slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2))
    return pred[tuple(box)], label[tuple(box)]


def _binary_scores(
    pred: torch.Tensor, label: torch.Tensor, spacing: tuple[float, float, float]
) -> tuple[float, float, float]:
    """Dice, HD95 (mm) and ASD (mm) of two NON-EMPTY (X, Y, Z) bool masks.

    Dice: MONAI's ``compute_dice``. HD95 and ASD: medpy's ``hd95(pred, label)`` and
    ``asd(pred, label)`` with ``voxelspacing=spacing`` and medpy's default connectivity 1 (a
    surface voxel is a mask voxel with a face neighbour outside the mask or the array). HD95
    is the 95th percentile of the distances of both surfaces to each other, pooled; ASD is the
    mean distance from the prediction's surface to the label's surface (directed)."""
    pred, label = _crop_to_union(pred, label)
    p, g = pred.float()[None, None], label.float()[None, None]
    dice = compute_dice(p, g, include_background=True)
    hd95 = medpy_hd95(pred.numpy(), label.numpy(), voxelspacing=spacing)
    asd = medpy_asd(pred.numpy(), label.numpy(), voxelspacing=spacing)
    return float(dice.item()), float(hd95), float(asd)


class SegmentationScorer:
    """Accumulate per-volume Dice, HD95 (mm) and ASD (mm), then ``aggregate()``.

    Each call to ``add`` scores one whole volume for every foreground class
    (``class_names[1:]``; ``class_names[0]`` is background and never scored).

    EMPTY RULE (per volume, per foreground class c; "empty" = no voxel labelled c):
        - ground truth empty AND prediction empty: the class is SKIPPED for this volume --
          a true negative; it adds nothing to any mean and does not increase ``n``.
        - ground truth non-empty, prediction empty (missed organ): Dice = 0 and
          HD95 = ASD = the volume's diagonal in mm, ``sqrt(sum((shape_i * spacing_i)^2))``.
        - prediction non-empty, ground truth empty (hallucinated organ): Dice = 0 and
          HD95 = ASD = the same diagonal.
        - both non-empty: MONAI's Dice, medpy's HD95 and (directed) ASD, in mm; see
          ``_binary_scores``.
    The diagonal is an upper bound on any distance inside the volume, so it is the worst
    possible score, yet finite: means over volumes stay finite and comparable, instead of
    the inf/NaN that MONAI and medpy return (or the crash medpy raises) on empty masks.

    Aggregation: per class, the mean over the volumes where it was scored (``n`` of them);
    the top-level ``dice``/``hd95_mm``/``asd_mm`` are the means of those per-class means over
    the foreground classes scored at least once. A class never scored reports None.
    """

    def __init__(self, class_names: list[str]) -> None:
        if len(class_names) < 2:
            raise ValueError(
                f"class_names: need background plus at least one class, got {class_names}"
            )
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        self._scores: dict[str, dict[str, list[float]]] = {
            name: {"dice": [], "hd95_mm": [], "asd_mm": []} for name in self.class_names[1:]
        }
        self.n_volumes = 0
        # one row per scored (volume, class): the per-case table of the evaluate stage
        self.cases: list[dict] = []

    def add(
        self,
        pred: np.ndarray | torch.Tensor,
        label: np.ndarray | torch.Tensor,
        spacing: tuple[float, float, float],
        case: str | None = None,
    ) -> None:
        """Score one volume; each scored class adds a row to ``cases``.

        Args:
            pred: (X, Y, Z) int predicted label map (class indices, not one-hot, not logits).
            label: (X, Y, Z) int ground-truth label map, same shape as ``pred``.
            spacing: voxel size in mm along (X, Y, Z), the same axis order as the arrays.
            case: the volume's id in ``cases`` rows (default: its index, ``n_volumes``).
        """
        pred_t, label_t = _as_label_map(pred), _as_label_map(label)
        if pred_t.shape != label_t.shape:
            raise ValueError(
                f"prediction shape {tuple(pred_t.shape)} does not match label shape "
                f"{tuple(label_t.shape)}; resample the prediction to the label grid first"
            )
        if pred_t.ndim != 3:
            raise ValueError(f"expected (X, Y, Z) label maps, got shape {tuple(pred_t.shape)}")
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing: must be 3 positive mm values, got {spacing}")
        n = len(self.class_names)
        for name, t in (("prediction", pred_t), ("label", label_t)):
            if t.min() < 0 or t.max() >= n:
                raise ValueError(f"{name} values must lie in [0, {n}), got {t.unique().tolist()}")

        diagonal_mm = float(np.linalg.norm(np.asarray(pred_t.shape) * np.asarray(spacing)))
        for c, name in enumerate(self.class_names[1:], start=1):
            p, g = pred_t == c, label_t == c
            p_empty, g_empty = not bool(p.any()), not bool(g.any())
            if p_empty and g_empty:
                continue  # true negative: skipped by the empty rule
            if p_empty or g_empty:
                d, hd95, asd = 0.0, diagonal_mm, diagonal_mm
            else:
                d, hd95, asd = _binary_scores(p, g, spacing)
            scores = self._scores[name]
            scores["dice"].append(d)
            scores["hd95_mm"].append(hd95)
            scores["asd_mm"].append(asd)
            self.cases.append(
                {
                    "case": str(self.n_volumes if case is None else case),
                    "class": name,
                    "dice": rounded(d),
                    "hd95_mm": rounded(hd95),
                    "asd_mm": rounded(asd),
                    "empty_rule": p_empty or g_empty,  # the values are the rule's
                }
            )
        self.n_volumes += 1

    def aggregate(self) -> dict:
        """``{"dice", "hd95_mm", "asd_mm", "per_class": {name: {..., "n"}}, "n_volumes"}``."""
        per_class = {
            name: {key: mean_rounded(vals) for key, vals in scores.items()}
            | {"n": len(scores["dice"])}
            for name, scores in self._scores.items()
        }
        scored = [v for v in per_class.values() if v["n"] > 0]
        summary = {
            key: mean_rounded([v[key] for v in scored if v[key] is not None])
            for key in ("dice", "hd95_mm", "asd_mm")
        }
        return summary | {"per_class": per_class, "n_volumes": self.n_volumes}
