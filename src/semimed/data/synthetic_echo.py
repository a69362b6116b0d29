"""Synthetic echocardiography frames in the layout of TMED-2 (Huang et al., MLHC 2021).

Generative model (lengths are fractions of the image width; depth ``y`` grows downwards):

1. **Patient** -> AS severity (no / mild-moderate / severe, mildly imbalanced) and a
   continuous valve score ``z`` inside that class's band (0-0.3, 0.35-0.65, 0.7-1.0), shared by
   every study of the patient; ``z`` also thickens the LV walls (concentric hypertrophy).
2. **Study** -> acquisition settings: probe tilt and sector opening, heart placement and
   depth zoom, gain, dynamic range, depth attenuation, speckle grain, near-field clutter, and
   a left-right mirrored display in some studies (lab convention).
3. **Frame** -> a view (PLAX, PSAX, A4C, A2C; drawn per frame) and a plane within it (PSAX at
   papillary or aortic-valve level; A4C true or foreshortened), a cardiac phase that shrinks
   the ventricles and swells the atria, and a small shift / rotation / zoom of the heart.
   A few frames are off-axis (far larger pose error) or lose a wedge to a rib shadow.

Rendering: a plane is a set of blood-pool ellipses (chambers), each wrapped in myocardium,
plus leaflets drawn as bright line segments. The aortic-valve echo gets thicker and brighter
with ``z`` (calcification); it is fully visible in PLAX and basal PSAX and dimmer elsewhere,
so severity is learnable but harder than the view. The echogenicity map is blurred more with
depth (lateral resolution), multiplied by spatially correlated Rayleigh speckle (magnitude of
a smoothed complex Gaussian field), attenuated with depth, log-compressed, masked to the fan
sector and saved as an 8-bit grayscale PNG. The planes and the heart's echogenicity are in
`synthetic_echo_heart`; this module draws patients, studies and frames, renders the frames
and writes them (`generate_echo`).

The difficulty knobs (module constants below: pose error, rib shadows, speckle; the strength
of the AS cue in `synthetic_echo_heart`) set how far a small CNN trained on a fraction of the
labels stays behind one trained on all of them: the room left for semi-supervised learning.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from semimed.data.synthetic_echo_heart import PLANES, heart_echogenicity, soft_inside

VIEWS = ("PLAX", "PSAX", "A4C", "A2C")
SEVERITIES = ("no_AS", "mild_AS", "severe_AS")
VIEW_PROBS = (0.30, 0.22, 0.28, 0.20)
SEVERITY_PROBS = (0.40, 0.35, 0.25)
SEVERITY_BANDS = ((0.0, 0.3), (0.35, 0.65), (0.7, 1.0))
CSV_COLUMNS = (
    "query_key",
    "SourceFolder",
    "view_label",
    "diagnosis_label",
    "patient_id",
    "study_id",
)

# Difficulty knobs: the more pose error, shadowing and speckle, the more labels a CNN needs
# (the AS cue's knobs, VALVE_THICKENING and VALVE_BRIGHTENING, are in synthetic_echo_heart).
OFF_AXIS_PROB = 0.05  # fraction of frames with a badly placed probe (pose jitter x OFF_AXIS_SCALE)
OFF_AXIS_SCALE = 3.0
POSE_JITTER = (6.0, 0.03, 0.05)  # per-frame std of rotation (deg), shift (width), log-zoom
SHADOW_PROB = 0.15  # fraction of frames with a rib shadow across part of the sector
SPECKLE_MIX = 0.85  # 1 = fully developed speckle, 0 = none
HYPERTROPHY = 1.0  # relative LV wall thickening at z = 1
FLIP_PROB = 0.25  # fraction of studies displayed mirrored left-right


def _speckle(rng, shape, grain):
    """Rayleigh speckle with unit mean: |smoothed complex Gaussian|, grain in pixels (sy, sx)."""
    re = gaussian_filter(rng.standard_normal(shape), grain)
    im = gaussian_filter(rng.standard_normal(shape), grain)
    mag = np.hypot(re, im)
    return mag / mag.mean()


def _render_frame(rng, size, view, study, patient, z):
    """One uint8 frame (size, size) of ``view`` under the study's acquisition settings."""
    px, scale = 1.0 / size, size / 64  # filters are tuned in pixels of a 64 x 64 frame
    coords = (np.arange(size) + 0.5) / size
    gx, gy = np.meshgrid(coords - 0.5, coords)
    # Fan sector geometry (apex at top centre).
    r = np.hypot(gx - study["apex_x"], gy + 0.02)
    theta = np.arctan2(gx - study["apex_x"], gy + 0.02) - study["tilt"]
    fan = soft_inside(np.maximum(r / study["depth"], np.abs(theta) / study["half_open"]), 0.01)
    # Heart pose: study placement plus per-frame jitter; off-axis frames move much more.
    jit = OFF_AXIS_SCALE if rng.random() < OFF_AXIS_PROB else 1.0
    rot_sd, shift_sd, zoom_sd = (jit * v for v in POSE_JITTER)
    rot = np.deg2rad(study["rot"] + rng.normal(0, rot_sd))
    zoom = patient["heart"] * study["zoom"] * np.exp(rng.normal(0, zoom_sd))
    hx = study["hx"] + rng.normal(0, shift_sd)
    hy = study["hy"] + rng.normal(0, shift_sd)
    dx, dy = gx - hx, gy - hy
    x = (dx * np.cos(rot) + dy * np.sin(rot)) / zoom
    y = (-dx * np.sin(rot) + dy * np.cos(rot)) / zoom
    planes, probs = PLANES[view]
    plane = planes[int(rng.choice(len(planes), p=probs))]
    x = x * study["flip"]  # display convention: some labs mirror left-right
    heart, myo = heart_echogenicity(
        x, y, plane, rng.random(), patient["wall"], z, study["valve_gain"], px / zoom, scale
    )
    tissue = 0.22 + 0.08 * gaussian_filter(rng.standard_normal((size, size)), 3 * scale)
    tissue *= 1 + 0.5 * (gaussian_filter(rng.standard_normal((size, size)), 4 * scale) > 0.03)
    outside = np.clip(1 - gaussian_filter(myo, 1.5 * scale) * 1.3, 0, 1)
    echo = heart + tissue * outside
    # Lateral resolution worsens with depth: blend towards a blurred copy.
    blurred = gaussian_filter(echo, (0.6 * scale, 1.6 * scale))
    echo = echo * (1 - np.clip(r, 0, 1)) + blurred * np.clip(r, 0, 1)
    speckle = _speckle(rng, (size, size), np.array(study["grain"]) * scale)
    echo = echo * (1 + SPECKLE_MIX * (speckle - 1))
    echo += study["clutter"] * np.exp(-r / 0.12) * _speckle(rng, (size, size), scale)
    if rng.random() < SHADOW_PROB:  # rib shadow: a dark wedge of the sector
        centre = rng.uniform(-1, 1) * study["half_open"]
        echo *= 1 - 0.75 * soft_inside(np.abs(theta - centre) / rng.uniform(0.1, 0.25), 0.1)
    echo *= study["gain"] * np.exp(-study["atten"] * r)
    echo += 0.04 * rng.random((size, size))  # electronic noise floor
    k = study["dyn_range"]
    img = np.log1p(k * np.clip(echo, 0, None)) / np.log1p(k)
    return (np.clip(img * fan, 0, 1) * 255).astype(np.uint8)


def _draw_study(rng):
    """Acquisition settings shared by the frames of one study."""
    return {
        "apex_x": rng.normal(0, 0.03),
        "tilt": rng.normal(0, 0.08),
        "half_open": np.deg2rad(rng.uniform(32, 45)),
        "depth": rng.uniform(0.92, 1.02),
        "rot": rng.normal(0, 8),
        "zoom": rng.uniform(0.8, 1.15),
        "hx": rng.normal(0, 0.04),
        "hy": rng.uniform(0.46, 0.56),
        "gain": rng.uniform(0.7, 1.5),
        "atten": rng.uniform(0.3, 1.5),
        "dyn_range": rng.uniform(4, 20),
        "grain": (rng.uniform(0.6, 1.0), rng.uniform(0.9, 1.6)),
        "clutter": rng.uniform(0.0, 0.25),
        "valve_gain": rng.uniform(0.85, 1.15),
        "flip": -1.0 if rng.random() < FLIP_PROB else 1.0,
    }


def generate_echo(
    out_dir: Path,
    *,
    num_patients: int,
    studies_per_patient: int,
    frames_per_study: int,
    image_size: int,
    seed: int,
) -> dict:
    """Write ``out_dir/images/<study>_<frame>.png`` (image_size, image_size) uint8 frames and
    ``out_dir/labels.csv`` with TMED-2 style columns; deterministic for a given ``seed``.

    Returns a summary ``{"frames", "patients", "studies", "views", "severities"}`` with
    per-class frame counts.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(num_patients):
        rng = np.random.default_rng([seed, p])  # per patient: independent of num_patients
        sev = int(rng.choice(3, p=SEVERITY_PROBS))
        z = rng.uniform(*SEVERITY_BANDS[sev])
        # Pressure overload thickens the LV walls (concentric hypertrophy) as AS progresses.
        wall = rng.uniform(0.028, 0.04) * (1 + HYPERTROPHY * z)
        patient = {"heart": rng.uniform(0.9, 1.1), "wall": wall}
        patient_id = f"p{p:04d}"
        for s in range(1, studies_per_patient + 1):
            study = _draw_study(rng)
            study_id = f"{patient_id}s{s}"
            for f in range(frames_per_study):
                view = VIEWS[int(rng.choice(4, p=VIEW_PROBS))]
                img = _render_frame(rng, image_size, view, study, patient, z)
                key = f"{study_id}_{f:02d}.png"
                Image.fromarray(img).save(out_dir / "images" / key)
                rows.append((key, "images", view, SEVERITIES[sev], patient_id, study_id))
    with open(out_dir / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    return {
        "frames": len(rows),
        "patients": num_patients,
        "studies": num_patients * studies_per_patient,
        "views": {v: sum(r[2] == v for r in rows) for v in VIEWS},
        "severities": {s: sum(r[3] == s for r in rows) for s in SEVERITIES},
    }
