"""Pure evaluation metrics for classification and 3D segmentation.

Nothing here loads models or files: stage scripts call these functions on arrays and write
what they return. Every returned dict is JSON-serialisable (plain ``float``/``int``/``None``,
never NaN or inf), so it can go straight to ``json.dump`` or DVCLive.

Classification metrics are scikit-learn's (Pedregosa et al., JMLR 2011). Segmentation: Dice
(Dice, Ecology 1945) is MONAI's (Cardoso et al., arXiv:2211.02701); the 95th percentile
Hausdorff distance (HD95) and the average surface distance (ASD) are medpy's
``medpy.metric.binary.hd95`` and ``asd`` -- the functions the DHC (Wang & Li, MICCAI 2023) and
SSL4MIS evaluations call -- measured in millimetres from the voxel spacing. The evaluation
pitfalls recorded for DHC -- an undefined rule for empty masks, ASD in voxels instead of mm,
label and prediction shapes that do not match -- are each handled explicitly below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from medpy.metric.binary import asd as medpy_asd
from medpy.metric.binary import hd95 as medpy_hd95
from monai.metrics import compute_dice

_DECIMALS = 6  # rounding of every reported float: far below any meaningful difference


def _round(value: float | None) -> float | None:
    """Round to a plain JSON-safe float; NaN/inf/None become None."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), _DECIMALS)


def _mean(values: Sequence[float]) -> float | None:
    return _round(float(np.mean(values))) if len(values) else None


# --------------------------------------------------------------------------- classification


def _check_classification_inputs(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> None:
    if y_true.ndim != 1 or probs.ndim != 2 or probs.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"y_true must be (N,) and probs (N, C); got {tuple(y_true.shape)} and "
            f"{tuple(probs.shape)}"
        )
    if y_true.shape[0] == 0:
        raise ValueError("classification_metrics needs at least one sample, got N=0")
    if probs.shape[1] != n_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but class_names has {n_classes}")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true values must lie in [0, {n_classes}), got {np.unique(y_true)}")
    if not np.isfinite(probs).all():
        raise ValueError("probs contains NaN or inf")


def _ovr_auc(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> float | None:
    """One-vs-rest macro ROC AUC over the classes PRESENT in ``y_true``.

    A class with no positive sample has no ROC curve, and scikit-learn's ``multi_class="ovr"``
    refuses such input. We therefore score each present class c as the binary problem
    ``y_true == c`` ranked by ``probs[:, c]`` and average those AUCs (with every class present
    this is exactly scikit-learn's OvR macro AUC). Fewer than two present classes: None.
    """
    present = np.unique(y_true)
    if present.size < 2:
        return None
    from sklearn.metrics import roc_auc_score  # here: a segmentation evaluate never needs it

    indicator = np.eye(n_classes, dtype=int)[y_true][:, present]
    return _round(roc_auc_score(indicator, probs[:, present], average="macro"))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1, OvR AUC, per-class scores and confusion matrix.

    Args:
        y_true: (N,) int true class indices in [0, C).
        probs: (N, C) float class probabilities (or any scores ranked per class); the
            prediction is ``probs.argmax(1)``.
        class_names: C names, index-aligned with the columns of ``probs``.

    Returns:
        ``{"accuracy", "balanced_accuracy", "macro_f1", "auc", "per_class": {name:
        {"precision", "recall", "f1", "specificity", "support"}}, "confusion_matrix"}``.

    Conventions (zero_division=0 throughout, so an undefined ratio is 0, never NaN):
        - balanced_accuracy: mean recall over the classes present in ``y_true`` (as
          scikit-learn's ``balanced_accuracy_score``, Brodersen et al., ICPR 2010).
        - macro_f1: mean F1 over classes present in ``y_true`` or in the predictions
          (scikit-learn's default label set); a class seen in neither carries no information.
        - auc: see ``_ovr_auc``; None when fewer than two classes are present in ``y_true``.
        - specificity: TN / (TN + FP) from the one-vs-rest confusion matrix of each class.
        - confusion_matrix: C x C list of ints, rows = true class, columns = predicted class.
    """
    from sklearn.metrics import (  # here: a segmentation evaluate never needs scikit-learn
        accuracy_score,
        confusion_matrix,
        f1_score,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
        recall_score,
    )

    y_true = np.asarray(y_true).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(class_names)
    _check_classification_inputs(y_true, probs, n_classes)
    y_pred = probs.argmax(axis=1)
    labels = list(range(n_classes))

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    # multilabel_confusion_matrix gives [[TN, FP], [FN, TP]] for each class vs the rest.
    one_vs_rest = multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    tn, fp = one_vs_rest[:, 0, 0], one_vs_rest[:, 0, 1]
    specificity = np.divide(tn, tn + fp, out=np.zeros(n_classes), where=(tn + fp) > 0)

    per_class = {
        name: {
            "precision": _round(precision[c]),
            "recall": _round(recall[c]),
            "f1": _round(f1[c]),
            "specificity": _round(specificity[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }
    return {
        "accuracy": _round(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": _round(
            recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
        ),
        "macro_f1": _round(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "auc": _ovr_auc(y_true, probs, n_classes),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def confusion_records(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]
) -> list[dict[str, str]]:
    """One ``{"actual": name, "predicted": name}`` row per sample, for DVC's ``confusion`` plot.

    Args:
        y_true: (N,) int true class indices.
        y_pred: (N,) int predicted class indices (e.g. ``probs.argmax(1)``).
        class_names: names indexed by class.
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    n = len(class_names)
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"{name} values must lie in [0, {n}), got {np.unique(arr)}")
    return [
        {"actual": class_names[t], "predicted": class_names[p]}
        for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True)
    ]


# ------------------------------------------------------------------------------ segmentation


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
                    "dice": _round(d),
                    "hd95_mm": _round(hd95),
                    "asd_mm": _round(asd),
                    "empty_rule": p_empty or g_empty,  # the values are the rule's
                }
            )
        self.n_volumes += 1

    def aggregate(self) -> dict:
        """``{"dice", "hd95_mm", "asd_mm", "per_class": {name: {..., "n"}}, "n_volumes"}``."""
        per_class = {
            name: {key: _mean(vals) for key, vals in scores.items()} | {"n": len(scores["dice"])}
            for name, scores in self._scores.items()
        }
        scored = [v for v in per_class.values() if v["n"] > 0]
        summary = {
            key: _mean([v[key] for v in scored if v[key] is not None])
            for key in ("dice", "hd95_mm", "asd_mm")
        }
        return summary | {"per_class": per_class, "n_volumes": self.n_volumes}
