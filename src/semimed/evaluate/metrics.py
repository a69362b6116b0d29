"""Pure classification test metrics (`classification_metrics`, `confusion_records`) and the
rounding every reported metric goes through (`rounded`, `mean_rounded`); the segmentation
scores are in `semimed.evaluate.segmentation`.

Nothing here loads models or files: stage scripts call these functions on arrays and write
what they return. Every returned dict is JSON-serialisable (plain ``float``/``int``/``None``,
never NaN or inf), so it can go straight to ``json.dump`` or DVCLive. The metrics are
scikit-learn's (Pedregosa et al., JMLR 2011).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_DECIMALS = 6  # rounding of every reported float: far below any meaningful difference


def rounded(value: float | None) -> float | None:
    """Round to a plain JSON-safe float; NaN/inf/None become None."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), _DECIMALS)


def mean_rounded(values: Sequence[float]) -> float | None:
    """`rounded` mean of `values`; None when there are none."""
    return rounded(float(np.mean(values))) if len(values) else None


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
    return rounded(roc_auc_score(indicator, probs[:, present], average="macro"))


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
            "precision": rounded(precision[c]),
            "recall": rounded(recall[c]),
            "f1": rounded(f1[c]),
            "specificity": rounded(specificity[c]),
            "support": int(support[c]),
        }
        for c, name in enumerate(class_names)
    }
    return {
        "accuracy": rounded(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": rounded(
            recall_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)
        ),
        "macro_f1": rounded(f1_score(y_true, y_pred, average="macro", zero_division=0)),
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
