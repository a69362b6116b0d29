"""The anatomy of one synthetic CT patient, in body-centred mm (RAS: x to the patient's
right, y anterior, z superior): body size, spine, organ shapes and a smooth displacement.

`draw_patient` draws it (the layout: see `semimed.data.synthetic_ct`); `radius` is an organ's
normalised lobulated-ellipsoid radius at given points and `warp_points` applies the patient's
displacement field: `semimed.data.synthetic_ct_render` evaluates both on a scan's voxels.
"""

from __future__ import annotations

import numpy as np


def _rotation(rng, max_deg):
    """Random 3x3 rotation from three Euler angles, each uniform in +-max_deg (x, y, z)."""
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _rotation_z(deg):
    """3x3 rotation about the z (craniocaudal) axis by ``deg`` degrees."""
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def _organ(rng, centre, axes, max_rot, jitter=3.0, size_sd=0.08):
    """Patient-level organ shape: centre (mm), semi-axes (mm), rotation and lobulation."""
    return {
        "centre": np.asarray(centre, float) + rng.normal(0, jitter, 3),
        "axes": np.asarray(axes, float) * np.exp(rng.normal(0, size_sd, 3)),
        "rot": _rotation(rng, max_rot),
        "lobes": (rng.normal(0, 2.2, (3, 3)), rng.uniform(0, 2 * np.pi, 3)),
    }


def radius(p, organ, shift=(0.0, 0.0, 0.0), grow=1.0):
    """Normalised radius of a lobulated ellipsoid (< 1 inside) at points p (..., 3) in mm."""
    u = ((p - organ["centre"] - np.asarray(shift)) @ organ["rot"]) / (organ["axes"] * grow)
    freqs, phases = organ["lobes"]
    lobulation = 0.06 * np.sin(u @ freqs.T + phases).sum(-1)
    return np.linalg.norm(u, axis=-1) / (1 + lobulation), u


def draw_patient(rng):
    """Anatomy of one patient in body-centred mm (the layout: see `semimed.data.synthetic_ct`)."""
    g = rng.uniform(0.9, 1.08)  # overall body scale
    bx, by = rng.uniform(66, 74) * g, rng.uniform(50, 58) * g
    spine_y = -by + 26 * g
    kid_r = _organ(rng, (30 * g, -26 * g, -16 * g), (15 * g, 13 * g, 27 * g), (10, 15, 30))
    kid_l = _organ(rng, (-30 * g, -26 * g, -8 * g), (15 * g, 13 * g, 27 * g), (10, 15, 30))
    kid_l["rot"] = np.diag([-1.0, 1, 1]) @ kid_l["rot"] @ np.diag([-1.0, 1, 1])  # mirror
    top = kid_r["centre"] + kid_r["rot"] @ np.array([0, 0, kid_r["axes"][2]])
    adrenal_c = top + np.array([-9.0, 5.0, 6.0]) * g
    spread = rng.uniform(20, 35)  # the adrenal is an inverted V: two thin limbs splaying apart
    limbs = []
    for sign in (-1, 1):
        limb = _organ(rng, adrenal_c + (2.0 * sign, 0, 0), (2.2, 6, 5.5), 10, 0.5, 0.05)
        limb["rot"] = _rotation_z(sign * spread) @ limb["rot"]
        limbs.append(limb)
    return {
        "body": (bx, by, rng.uniform(4, 11)),
        "spine": (spine_y, rng.uniform(24, 30) * g, rng.uniform(0, 2 * np.pi)),
        "liver": _organ(rng, (28 * g, 10 * g, 24 * g), (34 * g, 32 * g, 40 * g), (8, 8, 15)),
        "liver_lobe": _organ(rng, (-4 * g, 22 * g, 32 * g), (26 * g, 13 * g, 18 * g), (5, 5, 15)),
        "spleen": _organ(rng, (-44 * g, -12 * g, 26 * g), (13 * g, 26 * g, 22 * g), (10, 10, 40)),
        "kidney_right": kid_r,
        "kidney_left": kid_l,
        "adrenal_limbs": limbs,
        "adrenal_pad": _organ(rng, adrenal_c, (10, 12, 11), 0, 0, 0),
        "aorta": (-7 * g, spine_y + 15 * g, rng.uniform(5.5, 7) * g, rng.uniform(0, 2 * np.pi)),
        "ivc": (14 * g, spine_y + 16 * g, rng.uniform(6, 8) * g),
        "warp": (rng.normal(0, 1.8, (4, 3)), rng.normal(0, 1, (4, 3)), rng.uniform(0, 6.3, 4)),
        "bowel_seed": int(rng.integers(2**31)),
    }


def warp_points(p, warp):
    """Smooth random displacement: a sum of long-wavelength (80-200 mm) sinusoids (mm)."""
    amps, dirs, phases = warp
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    wavelengths = np.linspace(80, 200, len(amps))
    arg = (p @ dirs.T) * (2 * np.pi / wavelengths) + phases
    return p + np.sin(arg) @ amps
