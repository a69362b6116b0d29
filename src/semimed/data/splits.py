"""Grouped, stratified train/val/test splits and the labeled/unlabeled partition (split stage).

Output (JSON)::

    {"train_labeled": [ids], "train_unlabeled": [ids], "val": [ids], "test": [ids],
     "counts": {...}}

* No patient (group) ever appears in two of train/val/test: asserted before writing.
* Test and val folds come from scikit-learn's `StratifiedGroupKFold` (stratified by the
  target label for classification, by nothing for segmentation).
* The labeled subset is `labeled_percent` % of the training items, stratified, with at least
  one item of every class; the rest of train is the unlabeled pool (its labels are used only
  by the `supervised_full` upper bound).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from semimed.config import ConfigError, Split


def _take_fold(ids, y, groups, percent: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (rest, fold) where `fold` holds ~percent % of the groups."""
    n_splits = max(2, int(round(100 / percent)))
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise ConfigError(
            f"split: {n_groups} patients cannot give a {percent}% fold; need >= {n_splits}"
        )
    kfold = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    rest, fold = next(kfold.split(np.zeros(len(ids)), y, groups))
    return rest, fold


def _labeled_subset(y: np.ndarray, percent: float, num_classes: int, seed: int) -> np.ndarray:
    """Positions of the labeled subset: stratified, at least one per class present."""
    n = len(y)
    n_lab = max(num_classes, int(round(n * percent / 100)))
    if n_lab >= n:
        return np.arange(n)
    pos, _ = train_test_split(np.arange(n), train_size=n_lab, stratify=y, random_state=seed)
    return np.sort(pos)


def make_splits(manifest: dict, cfg: Split, target: str | None = None) -> dict:
    """Split the preprocessed `manifest` records; `target` names the classification label."""
    records = manifest["records"]
    ids = np.array([r["id"] for r in records])
    if len(set(ids)) != len(ids):
        raise ConfigError("split: duplicated ids in the preprocessed manifest")
    groups = np.array([str(r["group"]) for r in records])
    if manifest["task"] == "classification":
        y = np.array([r["labels"][target] for r in records])
        num_classes = len(manifest["classes"][target])
    else:
        y = np.zeros(len(records), dtype=int)
        num_classes = 1
    rest, test = _take_fold(ids, y, groups, cfg.test_percent, cfg.seed)
    val_share = cfg.val_percent * 100 / (100 - cfg.test_percent)
    train_pos, val_pos = _take_fold(ids[rest], y[rest], groups[rest], val_share, cfg.seed + 1)
    train, val = rest[train_pos], rest[val_pos]

    lab = _labeled_subset(y[train], cfg.labeled_percent, num_classes, cfg.seed)
    if manifest["task"] == "segmentation":
        lab = _cover_classes(records, train, lab, len(manifest["classes"]))
    labeled = train[lab]
    unlabeled = np.setdiff1d(train, labeled)

    out = {
        "train_labeled": sorted(ids[labeled].tolist()),
        "train_unlabeled": sorted(ids[unlabeled].tolist()),
        "val": sorted(ids[val].tolist()),
        "test": sorted(ids[test].tolist()),
    }
    _assert_grouped(out, dict(zip(ids, groups, strict=False)))
    _assert_all_classes(records, out["train_labeled"], manifest, target)
    out["counts"] = {k: len(v) for k, v in out.items()}
    return out


def _cover_classes(records, train, lab, num_classes) -> np.ndarray:
    """Add training volumes to the labeled set until every class appears in it."""
    lab = list(lab)
    seen = set().union(*(records[train[i]]["present"] for i in lab))
    for i in range(len(train)):
        missing = set(range(num_classes)) - seen
        if not missing:
            break
        if i not in lab and missing & set(records[train[i]]["present"]):
            lab.append(i)
            seen |= set(records[train[i]]["present"])
    return np.array(sorted(lab))


def _assert_grouped(split: dict, group_of: dict) -> None:
    owner = {}
    for name in ("train_labeled", "train_unlabeled", "val", "test"):
        part = "train" if name.startswith("train") else name
        for i in split[name]:
            g = group_of[i]
            if owner.setdefault(g, part) != part:
                raise AssertionError(f"split: patient {g!r} falls in both {owner[g]} and {part}")


def _assert_all_classes(records, labeled_ids, manifest, target) -> None:
    by_id = {r["id"]: r for r in records}
    if manifest["task"] == "classification":
        names = manifest["classes"][target]
        seen = {by_id[i]["labels"][target] for i in labeled_ids}
    else:
        names = manifest["classes"]
        seen = set().union(*(by_id[i]["present"] for i in labeled_ids))
    missing = [names[c] for c in range(len(names)) if c not in seen]
    if missing:
        raise ConfigError(
            f"split: no labeled training example of class(es) {', '.join(missing)}; "
            "raise split.labeled_percent or bring more data"
        )
