"""Grouped, stratified train/val/test splits and the labeled/unlabeled partition (split stage).

Output (JSON)::

    {"train_labeled": [ids], "train_unlabeled": [ids], "val": [ids], "test": [ids],
     "unlabeled_only": [ids], "counts": {...}}

* No patient (group) ever appears in two of train/val/test: asserted before writing.
* Test and val folds come from scikit-learn's `StratifiedGroupKFold` over the labeled items
  (stratified by the primary target for classification, by nothing for segmentation), or
  from the source's own split with `split.official`.
* The labeled subset is `labeled_percent` % of the training items, stratified, with at least
  one item of every class; the rest of train is the unlabeled pool (its labels are used only
  by the `supervised_full` upper bound).
* Items without labels (an `unlabeled/` folder, TMED-2's unlabeled frames, `imagesUnl/`)
  always join the unlabeled pool (`unlabeled_only` lists them) -- except those of patients
  held out in val or test, which are left out (`counts.dropped_unlabeled`).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from semimed.config import ConfigError, Split
from semimed.tasks import spec


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
    try:
        pos, _ = train_test_split(np.arange(n), train_size=n_lab, stratify=y, random_state=seed)
    except ValueError:  # a class with a single training item cannot be stratified
        rng = np.random.default_rng(seed)
        first = [rng.choice(np.flatnonzero(y == c)) for c in np.unique(y)]
        rest = rng.permutation(np.setdiff1d(np.arange(n), first))
        pos = np.concatenate([first, rest[: max(0, n_lab - len(first))]]).astype(int)
    return np.sort(pos)


def _has_labels(rec: dict, targets) -> bool:
    """A record whose labels are known for every learned target (segmentation: a label map)."""
    if targets is None:
        return rec.get("labeled", True)
    return rec["labels"] is not None and all(rec["labels"].get(t) is not None for t in targets)


def make_splits(manifest: dict, cfg: Split, targets=None) -> dict:
    """Split the preprocessed `manifest` records; `targets` names the classification labels
    (the first stratifies). Records without labels always go to the unlabeled pool."""
    records = manifest["records"]
    ids = np.array([r["id"] for r in records])
    if len(set(ids)) != len(ids):
        raise ConfigError("split: duplicated ids in the preprocessed manifest")
    groups = np.array([str(r["group"]) for r in records])
    if isinstance(targets, str):
        targets = (targets,)
    labeled_mask = np.array([_has_labels(r, targets) for r in records])
    dense = spec(manifest["task"]).dense
    if not dense:
        target = targets[0]
        y = np.array(
            [r["labels"][target] if m else -1 for r, m in zip(records, labeled_mask, strict=True)]
        )
        num_classes = len(manifest["classes"][target])
    else:
        target, y, num_classes = None, np.zeros(len(records), dtype=int), 1
    if cfg.official:
        parts = _official(records, labeled_mask)
    else:
        parts = _ours(ids, y, groups, labeled_mask, cfg)
    train, val, test = parts["train"], parts["val"], parts["test"]
    if "train_labeled" in parts:  # the source fixed the labeled subset too
        labeled = parts["train_labeled"]
    else:
        lab = _labeled_subset(y[train], cfg.labeled_percent, num_classes, cfg.seed)
        if dense:  # every organ in at least one labeled volume
            lab = _cover_classes(records, train, lab, len(manifest["classes"]))
        labeled = train[lab]
    pool = np.setdiff1d(np.concatenate([train, parts["unlabeled_only"]]), labeled)
    out = {
        "train_labeled": sorted(ids[labeled].tolist()),
        "train_unlabeled": sorted(ids[pool].tolist()),
        "val": sorted(ids[val].tolist()),
        "test": sorted(ids[test].tolist()),
        # unlabeled-pool items without any label (never used by supervised_full)
        "unlabeled_only": sorted(ids[pool][~labeled_mask[pool]].tolist()),
    }
    _assert_grouped(out, dict(zip(ids, groups, strict=False)))
    _assert_all_classes(records, out["train_labeled"], manifest, target)
    out["counts"] = {k: len(v) for k, v in out.items()}
    if parts.get("dropped"):
        out["counts"]["dropped_unlabeled"] = parts["dropped"]
    return out


def _ours(ids, y, groups, labeled_mask, cfg: Split) -> dict:
    """Grouped, stratified test / val folds over the labeled records; label-free records
    join the pool unless their patient landed in val or test (then they are left out)."""
    pos = np.flatnonzero(labeled_mask)
    rest, test = _take_fold(ids[pos], y[pos], groups[pos], cfg.test_percent, cfg.seed)
    val_share = cfg.val_percent * 100 / (100 - cfg.test_percent)
    rest = pos[rest]
    train_pos, val_pos = _take_fold(ids[rest], y[rest], groups[rest], val_share, cfg.seed + 1)
    held = set(groups[pos[test]]) | set(groups[rest[val_pos]])
    free = np.flatnonzero(~labeled_mask)
    keep = np.array([groups[i] not in held for i in free], dtype=bool)
    return {
        "train": rest[train_pos],
        "val": rest[val_pos],
        "test": pos[test],
        "unlabeled_only": free[keep] if len(free) else free,
        "dropped": int((~keep).sum()) if len(free) else 0,
    }


def _official(records, labeled_mask) -> dict:
    """The source's own split (ingest checked that no patient straddles it)."""
    where = np.array([r.get("split", "") for r in records])
    if not np.isin(where, ["val"]).any() or not np.isin(where, ["test"]).any():
        raise ConfigError(
            "split.official: the source gives no val and test split (tmed2 / csv split column, "
            "isic2018 Validation/Test archives, medmnist arrays, nifti split_lists); "
            "set split.official: false"
        )
    train = np.flatnonzero(np.isin(where, ["train", "train_labeled"]) & labeled_mask)
    parts = {
        "train": train,
        "val": np.flatnonzero((where == "val") & labeled_mask),
        "test": np.flatnonzero((where == "test") & labeled_mask),
        "unlabeled_only": np.flatnonzero(
            (where == "train_unlabeled") | (~labeled_mask & np.isin(where, ["train", ""]))
        ),
    }
    if (where == "train_labeled").any():
        parts["train_labeled"] = np.flatnonzero(where == "train_labeled")
        parts["train"] = train
    return parts


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
                raise ConfigError(f"split: patient {g!r} falls in both {owner[g]} and {part}")


def _assert_all_classes(records, labeled_ids, manifest, target) -> None:
    by_id = {r["id"]: r for r in records}
    if spec(manifest["task"]).has_targets:
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
