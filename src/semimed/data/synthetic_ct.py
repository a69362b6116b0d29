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

`synthetic_ct_anatomy` draws the patient (1), `synthetic_ct_render` renders a scan (2 and the
painting); this module writes the cases (`generate_ct`).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from semimed.data.synthetic_ct_anatomy import draw_patient
from semimed.data.synthetic_ct_render import render_case

LABELS = {
    "background": 0,
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "aorta": 5,
    "adrenal_right": 6,
}
FOLLOW_UP_PROB = 0.25  # fraction of patients scanned twice (grouped splitting matters)


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
        pat = draw_patient(prng)
        scans = 2 if prng.random() < FOLLOW_UP_PROB else 1
        patient_id = f"case_{len(cases):04d}"
        for _ in range(min(scans, num_cases - len(cases))):
            case_id = f"case_{len(cases):04d}"
            hu, lab, spacing, origin = render_case(
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
