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
sector and saved as an 8-bit grayscale PNG.

Difficulty was calibrated (module constants below) so that a 4-layer CNN trained on 10 % of
the default training frames is clearly worse at views than one trained on all of them,
leaving room for semi-supervised learning.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

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

# Difficulty knobs, calibrated so a small CNN needs many labels to reach its ceiling on views.
OFF_AXIS_PROB = 0.05  # fraction of frames with a badly placed probe (pose jitter x OFF_AXIS_SCALE)
OFF_AXIS_SCALE = 3.0
POSE_JITTER = (6.0, 0.03, 0.05)  # per-frame std of rotation (deg), shift (width), log-zoom
SHADOW_PROB = 0.15  # fraction of frames with a rib shadow across part of the sector
SPECKLE_MIX = 0.85  # 1 = fully developed speckle, 0 = none
VALVE_THICKENING = 0.05  # aortic-valve echo half-width added at valve score z = 1 (width)
VALVE_BRIGHTENING = 2.5  # aortic-valve echogenicity added at z = 1
HYPERTROPHY = 1.0  # relative LV wall thickening at z = 1
FLIP_PROB = 0.25  # fraction of studies displayed mirrored left-right


class Plane(NamedTuple):
    """One imaging plane in heart coordinates (x right, y deeper; unit = image width).

    chambers: (cx, cy, semi-axis a, semi-axis b, angle in degrees, kind) blood pools, each
        wrapped in myocardium; kind V = ventricle (shrinks in systole), A = atrium (grows),
        O = aortic root (rigid).
    leaflets: mitral / tricuspid leaflets or papillary muscles as segments (x0, y0, x1, y1).
    valve: aortic-valve (or annular calcification) segments carrying the AS cue.
    visibility: how much of the AS cue this plane shows (1 = valve seen in full).
    """

    chambers: list
    leaflets: list
    valve: list
    visibility: float


_PLAX = Plane(
    [
        (-0.02, -0.24, 0.28, 0.055, 8, "V"),
        (-0.10, -0.03, 0.27, 0.11, 8, "V"),
        (0.25, -0.12, 0.14, 0.055, 0, "O"),
        (0.24, 0.13, 0.11, 0.09, 0, "A"),
    ],
    [(0.13, -0.06, 0.05, 0.04), (0.15, 0.06, 0.09, 0.05)],
    [(0.12, -0.17, 0.16, -0.125), (0.12, -0.07, 0.16, -0.115)],
    1.0,
)
_PSAX_MID = Plane(  # papillary-muscle level: round LV ring, crescent RV
    [(-0.04, -0.19, 0.23, 0.065, -12, "V"), (0.0, 0.03, 0.14, 0.14, 0, "V")],
    [(-0.06, 0.07, -0.05, 0.09), (0.06, 0.07, 0.05, 0.09)],
    [(0.10, -0.10, 0.14, -0.07)],
    0.4,
)
_PSAX_BASE = Plane(  # aortic-valve level: aortic ring with the three-cusp "Mercedes" valve
    [
        (0.0, -0.19, 0.25, 0.06, 0, "V"),
        (0.0, 0.0, 0.085, 0.085, 0, "O"),
        (0.03, 0.2, 0.16, 0.07, 0, "A"),
        (-0.2, 0.09, 0.07, 0.08, 0, "A"),
    ],
    [],
    [(0.0, 0.0, 0.0, -0.08), (0.0, 0.0, -0.07, 0.04), (0.0, 0.0, 0.07, 0.04)],
    1.0,
)
_A4C = Plane(
    [
        (0.11, -0.10, 0.10, 0.22, -4, "V"),
        (-0.12, -0.07, 0.09, 0.19, 6, "V"),
        (0.11, 0.24, 0.10, 0.085, 0, "A"),
        (-0.11, 0.23, 0.09, 0.08, 0, "A"),
    ],
    [(0.03, 0.14, 0.09, 0.10), (0.19, 0.14, 0.13, 0.10), (-0.03, 0.14, -0.09, 0.10)],
    [(-0.02, 0.14, 0.02, 0.14)],
    0.45,
)
_A4C_SHORT = Plane(  # foreshortened: the probe sits off the true apex, ventricles look stubby
    [
        (0.12, -0.03, 0.11, 0.15, -4, "V"),
        (-0.12, -0.02, 0.10, 0.13, 6, "V"),
        (0.12, 0.23, 0.11, 0.09, 0, "A"),
        (-0.11, 0.22, 0.10, 0.085, 0, "A"),
    ],
    [(0.03, 0.14, 0.09, 0.10), (0.19, 0.14, 0.13, 0.10), (-0.03, 0.14, -0.09, 0.10)],
    [(-0.02, 0.14, 0.02, 0.14)],
    0.45,
)
_A2C = Plane(
    [(0.0, -0.10, 0.12, 0.23, 0, "V"), (0.0, 0.24, 0.11, 0.09, 0, "A")],
    [(-0.09, 0.14, -0.03, 0.10), (0.09, 0.14, 0.03, 0.10)],
    [(0.07, 0.15, 0.11, 0.13)],
    0.35,
)
# Planes a view label covers, with their frequencies: sub-types a few labels rarely show.
PLANES = {
    "PLAX": ([_PLAX], [1.0]),
    "PSAX": ([_PSAX_MID, _PSAX_BASE], [0.6, 0.4]),
    "A4C": ([_A4C, _A4C_SHORT], [0.7, 0.3]),
    "A2C": ([_A2C], [1.0]),
}


def _ellipse_field(x, y, cx, cy, a, b, angle_deg):
    """Normalised elliptic radius (1 on the boundary) on grids x, y of shape (H, W)."""
    t = np.deg2rad(angle_deg)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(t) + dy * np.sin(t)
    v = -dx * np.sin(t) + dy * np.cos(t)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2)


def _segment_distance(x, y, x0, y0, x1, y1):
    """Euclidean distance from every grid point to the segment (x0, y0)-(x1, y1)."""
    sx, sy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * sx + (y - y0) * sy) / (sx * sx + sy * sy), 0.0, 1.0)
    return np.hypot(x - x0 - t * sx, y - y0 - t * sy)


def _soft_inside(r, edge):
    """Smooth 0/1 indicator of r < 1 with a transition of width ``edge`` (anti-aliasing)."""
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -30, 30)))


def _heart_echogenicity(x, y, plane, phase, wall, z, valve_gain, px, scale):
    """Echogenicity map (H, W) in [0, ~2] of one plane in heart coordinates x, y, and the
    myocardium mask (H, W) in [0, 1]."""
    squeeze = 0.5 * (1 - np.cos(2 * np.pi * phase))  # 0 at end-diastole, 1 at end-systole
    myo = np.zeros_like(x)
    blood = np.zeros_like(x)
    for cx, cy, a, b, ang, kind in plane.chambers:
        s = {"V": 1 - 0.14 * squeeze, "A": 1 + 0.08 * squeeze, "O": 1.0}[kind]
        w = wall * (0.6 if kind != "V" else 1 + 0.3 * squeeze)
        a, b = a * s, b * s
        r_in = _ellipse_field(x, y, cx, cy, a, b, ang)
        r_out = _ellipse_field(x, y, cx, cy, a + w, b + w, ang)
        blood = np.maximum(blood, _soft_inside(r_in, px / min(a, b)))
        myo = np.maximum(myo, _soft_inside(r_out, px / min(a + w, b + w)))
    # Pericardium: a bright thin shell just outside the myocardium.
    shell = np.clip(gaussian_filter(myo, 1.2 * scale) - myo, 0, None) * 2.5
    echo = 0.45 * myo * (1 - blood) + 0.03 * blood + shell
    for seg in plane.leaflets:
        d = _segment_distance(x, y, *seg)
        echo = np.maximum(echo, 0.55 * np.exp(-((d / (0.6 * px + 0.004)) ** 2)))
    thick = 0.5 * px + 0.004 + VALVE_THICKENING * z
    bright = plane.visibility * valve_gain * (0.45 + VALVE_BRIGHTENING * z)
    for seg in plane.valve:
        d = _segment_distance(x, y, *seg)
        echo = np.maximum(echo, bright * np.exp(-((d / thick) ** 2)))
    return echo, myo


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
    fan = _soft_inside(np.maximum(r / study["depth"], np.abs(theta) / study["half_open"]), 0.01)
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
    heart, myo = _heart_echogenicity(
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
        echo *= 1 - 0.75 * _soft_inside(np.abs(theta - centre) / rng.uniform(0.1, 0.25), 0.1)
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
