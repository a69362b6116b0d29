"""One synthetic CT scan of a patient (`render_case`): the voxel grid, then the HU image and
label map painted in order (later wins), then the acquisition effects (see
`semimed.data.synthetic_ct` for the generative model).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from semimed.data.synthetic_ct_anatomy import radius, warp_points

FOV_MM = (160.0, 160.0, 150.0)  # field of view (x, y, z) in mm
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
        r, u = radius(self.q[sl], organ, shift, grow)
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


def render_case(pat, rng):
    """One scan of a patient: (hu int16 (X, Y, Z), label uint8 (X, Y, Z), spacing, origin)."""
    spacing = np.array([*[rng.uniform(1.6, 2.4)] * 2, rng.uniform(2.5, 4.0)])
    fov = np.asarray(FOV_MM) * rng.uniform(0.95, 1.05, 3)
    shape = tuple(int(n) for n in np.round(fov / spacing))
    origin = rng.uniform(-250, 250, 3)
    centre = origin + fov / 2 + rng.normal(0, [5, 5, 10])  # table position in the scanner
    axes = [origin[i] + spacing[i] * np.arange(shape[i]) - centre[i] for i in range(3)]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (X, Y, Z, 3) in mm
    q = warp_points(p, pat["warp"])
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
