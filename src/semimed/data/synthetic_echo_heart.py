"""The heart of the synthetic echo frames: imaging planes and their echogenicity.

A plane (`Plane`, one per view sub-type in `PLANES`) is a set of blood-pool ellipses
(chambers), each wrapped in myocardium, plus leaflets drawn as bright line segments; the
aortic-valve echo carries the AS cue, thicker and brighter with the valve score ``z``.
`heart_echogenicity` paints one plane at one cardiac phase; `semimed.data.synthetic_echo`
places it in the fan, adds tissue, speckle and acquisition effects, and writes the frames.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter

# The AS cue: difficulty knobs, as those of `synthetic_echo`.
VALVE_THICKENING = 0.05  # aortic-valve echo half-width added at valve score z = 1 (width)
VALVE_BRIGHTENING = 2.5  # aortic-valve echogenicity added at z = 1


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


def soft_inside(r, edge):
    """Smooth 0/1 indicator of r < 1 with a transition of width ``edge`` (anti-aliasing)."""
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / edge, -30, 30)))


def heart_echogenicity(x, y, plane, phase, wall, z, valve_gain, px, scale):
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
        blood = np.maximum(blood, soft_inside(r_in, px / min(a, b)))
        myo = np.maximum(myo, soft_inside(r_out, px / min(a + w, b + w)))
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
