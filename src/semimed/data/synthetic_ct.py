"""Synthetic abdominal CT volumes with multi-organ labels, in the MSD / nnU-Net layout.

A small, CPU-friendly stand-in for Synapse / AMOS (as used by DHC, Wang & Li, MICCAI 2023):
organs of very different sizes (liver >> spleen, kidneys > aorta >> adrenal gland), so the
class imbalance that DHC's re-weighting targets is present.

Generative model, in patient millimetres centred on the body (x to the patient's right,
y anterior, z superior: RAS, so the arrays on disk are already in MONAI's "RAS" order):

1. **Patient** -> body size, fat thickness, a global scale, a smooth random displacement field
   (a few long-wavelength sinusoids, a few mm) and, per organ, centre, semi-axes, rotation and a
   lobulation pattern. Anatomy is left/right consistent: liver and right kidney on the right,
   spleen and left kidney (a little higher) on the left, aorta left-anterior of the spine,
   inferior vena cava (unlabelled) on the right, the right adrenal gland supero-medial to the
   right kidney. Follow-up scans of a patient reuse all of this.
2. **Case** (one scan) -> voxel spacing (in-plane 1.6-2.4 mm, slices 2.5-4.0 mm), field of
   view (~160 x 160 x 150 mm), a random world origin, table position, breathing shift of the
   upper organs, contrast timing (organ HU offsets), noise level and a smooth intensity bias.

Rendering paints masks in order (later wins): air (-1000 HU), body with subcutaneous fat and
muscle wall, bowel-like soft tissue with fat and gas pockets, spine and paraspinal muscles,
ribs, then the organs: liver, spleen, kidneys (cortex brighter than medulla, sinus fat at the
hilum), IVC, aorta, adrenal. The label map takes the organ masks; the image gets partial-
volume blur, the bias field and Gaussian noise (sigma 10-20 HU) and is stored as int16 HU.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

LABELS = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "aorta": 5,
    "adrenal_right": 6,
}
FOV_MM = (160.0, 160.0, 150.0)  # field of view (x, y, z) in mm
FOLLOW_UP_PROB = 0.25  # fraction of patients scanned twice (grouped splitting matters)
# Mean HU of each tissue (contrast-enhanced, arterial to early portal phase).
HU = {
    "fat": -100,
    "muscle": 45,
    "bowel": 25,
    "bone": 550,
    "cancellous": 250,
    "disc": 90,
    "liver": 60,
    "spleen": 50,
    "cortex": 160,
    "medulla": 110,
    "aorta": 200,
    "ivc": 100,
    "adrenal": 25,
}


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


def _radius(p, organ, shift=(0.0, 0.0, 0.0), grow=1.0):
    """Normalised radius of a lobulated ellipsoid (< 1 inside) at points p (..., 3) in mm."""
    u = ((p - organ["centre"] - np.asarray(shift)) @ organ["rot"]) / (organ["axes"] * grow)
    freqs, phases = organ["lobes"]
    lobulation = 0.06 * np.sin(u @ freqs.T + phases).sum(-1)
    return np.linalg.norm(u, axis=-1) / (1 + lobulation), u


def _draw_patient(rng):
    """Anatomy of one patient in body-centred mm (see module docstring for the layout)."""
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


def _warp(p, warp):
    """Smooth random displacement: a sum of long-wavelength (80-200 mm) sinusoids (mm)."""
    amps, dirs, phases = warp
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    wavelengths = np.linspace(80, 200, len(amps))
    arg = (p @ dirs.T) * (2 * np.pi / wavelengths) + phases
    return p + np.sin(arg) @ amps


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise, rescaled to unit standard deviation."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-8)


class _Canvas:
    """HU image and label map being painted on one scan's voxel grid (X, Y, Z).

    q: (X, Y, Z, 3) warped body-centred coordinates (mm); axes: the unwarped coordinate of
    each voxel along x, y, z; margin: bound on the warp (mm) per axis; tex: (X, Y, Z) smooth
    unit-variance texture; inside: (X, Y, Z) bool abdomen mask that organs are clipped to.
    """

    def __init__(self, q, axes, margin, tex, inside):
        self.q, self.axes, self.margin, self.tex, self.inside = q, axes, margin, tex, inside
        self.hu = np.full(q.shape[:3], -1000.0)
        self.lab = np.zeros(q.shape[:3], np.uint8)

    def organ(self, organ, shift, grow=1.0):
        """(slices, r, u) of an organ's radius field inside its bounding box (for speed)."""
        centre = organ["centre"] + shift
        reach = 1.25 * grow * organ["axes"].max()  # 1.25 covers the lobulation
        sl = tuple(
            slice(np.searchsorted(a, c - reach - m), np.searchsorted(a, c + reach + m))
            for a, c, m in zip(self.axes, centre, self.margin, strict=True)
        )
        r, u = _radius(self.q[sl], organ, shift, grow)
        return sl, r, u

    def paint(self, sl, mask, value, label=0):
        """Set HU (scalar, or an array over the box) and label where mask (over the box)."""
        hu, lab = self.hu[sl], self.lab[sl]  # views: writing them writes the volume
        hu[mask] = value[mask] if isinstance(value, np.ndarray) else value
        lab[mask] = label


def _paint_body(cv, pat, bowel):
    """Body wall, bowel / mesentery, spine, paraspinal muscles and ribs (all unlabelled)."""
    x, y, z = cv.q[..., 0], cv.q[..., 1], cv.q[..., 2]
    hu, everywhere = cv.hu, (slice(None),) * 3
    bx, by, fat = pat["body"]
    wall = (x / (bx - fat)) ** 2 + (y / (by - fat)) ** 2 < 1
    hu[(x / bx) ** 2 + (y / by) ** 2 < 1] = HU["fat"]
    hu[wall] = HU["muscle"]
    # Bowel and mesentery: soft tissue with smooth fat regions and gas pockets in front.
    cv.paint(everywhere, cv.inside, np.where(bowel < -0.8, HU["fat"], HU["bowel"]))
    hu[cv.inside & (bowel > 2.2) & (y > 0)] = -950
    sy, period, phase = pat["spine"]
    disc = np.cos(2 * np.pi * z / period + phase) > 0.75
    vert = (x / 10) ** 2 + ((y - sy) / 8.5) ** 2
    hu[vert < 1] = np.where(disc[vert < 1], HU["disc"], HU["cancellous"])
    hu[(vert < 1) & (vert > 0.7) & ~disc] = HU["bone"]  # cortical shell
    canal = np.hypot(x, y - sy + 13.5)
    hu[(canal < 7) & (canal > 4) & ~disc] = HU["bone"]  # neural arch
    hu[canal <= 4] = 10
    for side in (-1, 1):
        hu[((x - side * 20) / 12) ** 2 + ((y - sy + 14) / 9) ** 2 < 1] = HU["muscle"]
    # Ribs: oblique bars crossing the lateral and posterior wall in the upper abdomen.
    bars = np.cos(9 * np.arctan2(y, x) + 2 * np.pi * z / 30) > 0.6
    hu[wall & ~cv.inside & bars & (z > -15) & (y < 0.5 * by)] = HU["bone"]


def _paint_organs(cv, pat, rng):
    """Perirenal fat, then liver, spleen, kidneys, IVC, aorta and adrenal (later wins)."""
    shift = np.array([0.0, 0.0, rng.normal(0, 4)])  # breathing moves the upper organs
    grow = np.exp(rng.normal(0, 0.03))  # small volume change between scans
    off = {k: rng.normal(0, 8) for k in ("liver", "spleen", "kidney", "aorta")}  # contrast timing
    for name in ("kidney_right", "kidney_left", "adrenal_pad"):
        sl, r, _ = cv.organ(pat[name], shift, (1.45 if name != "adrenal_pad" else 1.0) * grow)
        cv.paint(sl, cv.inside[sl] & (r < 1), HU["fat"])
    sl, r, _ = cv.organ(pat["liver"], shift, grow)
    cv.paint(sl, cv.inside[sl] & (r < 1), HU["liver"] + off["liver"] + 5 * cv.tex[sl], 1)
    sl, r, _ = cv.organ(pat["liver_lobe"], shift, grow)
    cv.paint(sl, cv.inside[sl] & (r < 1), HU["liver"] + off["liver"] + 5 * cv.tex[sl], 1)
    sl, r, _ = cv.organ(pat["spleen"], shift, grow)
    cv.paint(sl, cv.inside[sl] & (r < 1), HU["spleen"] + off["spleen"] + 5 * cv.tex[sl], 2)
    for name, label in (("kidney_right", 3), ("kidney_left", 4)):
        sl, r, u = cv.organ(pat[name], shift, grow)
        kidney = np.where(r < 0.72, HU["medulla"], HU["cortex"]) + off["kidney"] + 6 * cv.tex[sl]
        cv.paint(sl, cv.inside[sl] & (r < 1), kidney, label)
        # Renal sinus: fat entering from the medial (hilar) side; not labelled as kidney.
        medial = -np.sign(pat[name]["centre"][0]) * u[..., 0]
        cv.paint(sl, cv.inside[sl] & (r < 0.75) & (medial > 0.35) & (abs(u[..., 2]) < 0.45), -80)
    x, y, z, everywhere = cv.q[..., 0], cv.q[..., 1], cv.q[..., 2], (slice(None),) * 3
    ix, iy, ir = pat["ivc"]
    cv.paint(everywhere, np.hypot((x - ix) / 1.2, y - iy) < ir, HU["ivc"] + 4 * cv.tex)
    ax, ay, ar, aphase = pat["aorta"]
    centre_x = ax + 3 * np.sin(z / 40 + aphase)  # gentle tortuosity along the body axis
    lumen = np.hypot(x - centre_x, y - ay) < ar * (1 + z / 600)  # tapers towards the feet
    cv.paint(everywhere, lumen, HU["aorta"] + off["aorta"], 5)
    for limb in pat["adrenal_limbs"]:
        sl, r, _ = cv.organ(limb, shift)
        cv.paint(sl, r < 1, HU["adrenal"] + 3 * cv.tex[sl], 6)


def _render_case(pat, rng):
    """One scan of a patient: (hu int16 (X, Y, Z), label uint8 (X, Y, Z), spacing, origin)."""
    spacing = np.array([*[rng.uniform(1.6, 2.4)] * 2, rng.uniform(2.5, 4.0)])
    fov = np.asarray(FOV_MM) * rng.uniform(0.95, 1.05, 3)
    shape = tuple(int(n) for n in np.round(fov / spacing))
    origin = rng.uniform(-250, 250, 3)
    centre = origin + fov / 2 + rng.normal(0, [5, 5, 10])  # table position in the scanner
    axes = [origin[i] + spacing[i] * np.arange(shape[i]) - centre[i] for i in range(3)]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (X, Y, Z, 3) in mm
    q = _warp(p, pat["warp"])
    bx, by, fat = pat["body"]
    inside = (q[..., 0] / (bx - fat - 5)) ** 2 + (q[..., 1] / (by - fat - 5)) ** 2 < 1
    margin = np.abs(pat["warp"][0]).sum(0)
    cv = _Canvas(q, axes, margin, _smooth_noise(rng, shape, 1.5), inside)
    # Bowel content moves between scans (peristalsis): a fresh draw around the patient's own.
    brng = np.random.default_rng([pat["bowel_seed"], int(rng.integers(2**31))])
    _paint_body(cv, pat, _smooth_noise(brng, shape, 3.0))
    _paint_organs(cv, pat, rng)
    # Acquisition: partial-volume blur, smooth bias (quadratic in position) and noise.
    hu = gaussian_filter(cv.hu, (0.6, 0.6, 0.4))
    c = rng.normal(0, 1, 4)
    xn, yn, zn = (p[..., i] / 80.0 for i in range(3))
    hu += 8 * (c[0] * xn + c[1] * yn + c[2] * zn + c[3] * (xn**2 + yn**2 - 0.5))
    hu += rng.normal(0, rng.uniform(10, 20), shape)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), cv.lab, spacing, origin


def generate_ct(out_dir: Path, *, num_cases: int, seed: int) -> dict:
    """Write ``imagesTr/case_XXXX.nii.gz`` (int16 HU, (X, Y, Z), RAS affine with the voxel
    spacing on its diagonal), ``labelsTr/case_XXXX.nii.gz`` (uint8, same grid) and
    ``dataset.json`` (labels, numTraining, and ``cases`` with each case's patient_id).

    Deterministic for a given ``seed``. Most cases are their own patient (patient_id = case
    id); about FOLLOW_UP_PROB of patients get a second scan, which shares the patient_id.
    Returns ``{"cases", "patients", "voxels": {label name: total voxel count}}``.
    """
    out_dir = Path(out_dir)
    for sub in ("imagesTr", "labelsTr"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    cases, counts = [], np.zeros(len(LABELS), np.int64)
    patient_index = 0
    while len(cases) < num_cases:
        prng = np.random.default_rng([seed, 0, patient_index])
        pat = _draw_patient(prng)
        scans = 2 if prng.random() < FOLLOW_UP_PROB else 1
        patient_id = f"case_{len(cases):04d}"
        for _ in range(min(scans, num_cases - len(cases))):
            case_id = f"case_{len(cases):04d}"
            hu, lab, spacing, origin = _render_case(
                pat, np.random.default_rng([seed, 1, len(cases)])
            )
            affine = np.diag([*spacing, 1.0])
            affine[:3, 3] = origin
            for arr, sub in ((hu, "imagesTr"), (lab, "labelsTr")):
                img = nib.Nifti1Image(arr, affine)
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                nib.save(img, out_dir / sub / f"{case_id}.nii.gz")
            counts += np.bincount(lab.ravel(), minlength=len(LABELS))
            cases.append(
                {
                    "image": f"imagesTr/{case_id}.nii.gz",
                    "label": f"labelsTr/{case_id}.nii.gz",
                    "patient_id": patient_id,
                }
            )
        patient_index += 1
    meta = {
        "name": "SynthAbdomenCT",
        "description": "Synthetic contrast-enhanced abdominal CT (semimed default data)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "cases": cases,
    }
    (out_dir / "dataset.json").write_text(json.dumps(meta, indent=2))
    return {
        "cases": len(cases),
        "patients": len({c["patient_id"] for c in cases}),
        "voxels": {name: int(counts[i]) for name, i in LABELS.items()},
    }
