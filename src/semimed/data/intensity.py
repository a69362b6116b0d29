"""Intensity normalisation of segmentation volumes: which rule, its dataset statistics and
its MONAI steps (`segmentation.preprocess.normalize`).

Three rules, nnU-Net's plus the HU window:

* ``ct_window``: the HU window ``preprocess.window`` mapped to [0, 1] and clipped
  (`ScaleIntensityRanged`), then a crop to the voxels above the window's low end (the body).
* ``zscore``: per image and channel, z-scored over its non-zero voxels (`NormalizeIntensityd`
  with ``nonzero=True``; zeros stay 0), after a crop to the non-zero region. nnU-Net's rule
  for MR and every modality but CT.
* ``percentile``: per channel, clipped to the 0.5th..99.5th percentiles of the dataset's
  foreground voxels (label > 0 in the labeled cases, on the files' own grid) and z-scored
  with their mean and standard deviation, after a crop to the non-zero region. nnU-Net's rule
  for CT. The statistics are computed once by the preprocess stage and stored in its manifest
  and in every model card, so prediction applies the same numbers to new volumes.

``auto`` picks ``ct_window`` when every channel of dataset.json's ``channel_names`` (nnU-Net
v2) or ``modality`` (MSD) is CT or when it names none, and ``zscore`` when none is CT; a mix
must be set by hand. The resolved rule is an `Intensity`, recorded as a dict; its MONAI
steps are in `semimed.data.intensity_steps` (this module imports neither torch nor MONAI, so
ingest can use it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from semimed.config import ConfigError

MODES = ("ct_window", "zscore", "percentile")
PERCENTILES = (0.5, 99.5)  # nnU-Net's CT clip, of the dataset's foreground voxels
MAX_SAMPLES = 10_000_000  # foreground voxels kept for the statistics, over all cases
SAMPLE_SEED = 1234  # the subsample of foreground voxels when a dataset has more


@dataclass(frozen=True)
class Intensity:
    """A resolved normalisation: `mode` (one of `MODES`), the input channel count and the
    numbers it needs (`window` for ct_window; per-channel `clip` (low, high), `mean`, `std`
    for percentile)."""

    mode: str
    channels: int = 1
    window: tuple[float, float] | None = None
    clip: tuple[tuple[float, float], ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["window"] = list(self.window) if self.window else None
        d["clip"] = [list(c) for c in self.clip]
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "intensity") -> Intensity:
        try:
            out = cls(
                mode=str(d["mode"]),
                channels=int(d.get("channels", 1)),
                window=tuple(float(w) for w in d["window"]) if d.get("window") else None,
                clip=tuple(tuple(float(v) for v in c) for c in d.get("clip", ())),
                mean=tuple(float(v) for v in d.get("mean", ())),
                std=tuple(float(v) for v in d.get("std", ())),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{where}: unreadable normalisation ({err})") from None
        if out.mode not in MODES:
            raise ConfigError(f"{where}: mode {out.mode!r}; expected one of {', '.join(MODES)}")
        return out

    @property
    def unit_range(self) -> bool:
        """Intensities in [0, 1] (the HU window); z-scored ones are not bounded."""
        return self.mode == "ct_window"


def from_window(window, channels: int = 1) -> Intensity:
    """The HU window rule (what a model card or manifest without a rule means)."""
    return Intensity("ct_window", channels, tuple(float(w) for w in window))


def is_ct(name: str) -> bool:
    return str(name).strip().upper() == "CT"


def resolve_mode(setting: str, channel_names: list[str] | None) -> tuple[str, str | None]:
    """(rule, warning or None) for `normalize: setting` on a dataset whose channels are named
    `channel_names` (None: unknown). The warning says where the rule and modality disagree."""
    names = list(channel_names or [])
    ct = [is_ct(n) for n in names]
    if setting == "auto":
        if names and any(ct) and not all(ct):
            raise ConfigError(
                f"segmentation.preprocess.normalize: auto cannot choose for channels "
                f"{', '.join(names)} (CT and other modalities); set ct_window, zscore or percentile"
            )
        return ("zscore" if names and not any(ct) else "ct_window"), None
    what = f"dataset.json names the channels {', '.join(names)}"
    if setting == "ct_window" and names and not all(ct):
        return setting, (
            f"{what}, not CT, but segmentation.preprocess.normalize is ct_window (the HU window "
            "preprocess.window); zscore (or auto) is the rule for this modality"
        )
    if setting == "zscore" and names and all(ct):
        return setting, (
            f"{what}: CT, but segmentation.preprocess.normalize is zscore (per image, so HU "
            "calibration is lost); ct_window or percentile are the rules for CT"
        )
    return setting, None


# --------------------------------------------------------------------------- statistics
def foreground_stats(pairs, channels: int, fill_nonfinite: bool) -> Intensity:
    """The percentile rule's numbers from `pairs` of (image (C, X, Y, Z), label (1, X, Y, Z))
    arrays: per channel, the 0.5th / 99.5th percentiles, mean and std of the voxels with
    label > 0 (non-finite ones skipped under `fill_nonfinite`), at most `MAX_SAMPLES` of them
    in all (an equal share per case, drawn with a fixed seed)."""
    pairs = list(pairs)
    share = MAX_SAMPLES // max(len(pairs), 1)
    rng = np.random.default_rng(SAMPLE_SEED)
    values = [[] for _ in range(channels)]
    for image, label in pairs:
        mask = np.asarray(label)[0] > 0
        for c in range(channels):
            v = np.asarray(image[c], dtype=np.float64)[mask]
            v = v[np.isfinite(v)] if fill_nonfinite else v
            values[c].append(rng.choice(v, share, replace=False) if v.size > share else v)
    clip, mean, std = [], [], []
    for c in range(channels):
        v = np.concatenate(values[c]) if values[c] else np.empty(0)
        if not v.size:
            raise ConfigError(
                "segmentation.preprocess.normalize: percentile needs foreground voxels "
                "(label > 0) in the labeled cases; none has any"
            )
        lo, hi = np.percentile(v, PERCENTILES)
        clip.append((float(lo), float(hi)))
        mean.append(float(v.mean()))
        std.append(float(max(v.std(), 1e-8)))
    return Intensity("percentile", channels, clip=tuple(clip), mean=tuple(mean), std=tuple(std))


def empty_crop_reason(spec: Intensity) -> str:
    """Why a volume's crop came out empty, for the error line."""
    if spec.mode == "ct_window":
        return (
            f"no voxel above preprocess.window's low end ({spec.window[0]:g}), so the body crop "
            "is empty; check the window against this image's intensities"
        )
    return "no non-zero voxel, so the crop to the non-zero region is empty (a blank volume?)"
