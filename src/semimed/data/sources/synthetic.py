"""The embedded default (`source: synthetic`): generate, then read like real data.

The echo generator writes the TMED-2 layout (4 views, 3 AS levels) and the CT generator the
MSD layout, so the same readers and checks as for users' data index them.
"""

from __future__ import annotations

from pathlib import Path

from semimed.data import synthetic
from semimed.data.sources import nifti
from semimed.data.sources.tmed2 import COLUMNS, SEVERITY_CLASSES, read_tmed_csv
from semimed.data.sources.validate import Index, check_targets


def read_echo(cfg, root: Path) -> Index:
    syn = cfg.data.synthetic
    check_targets(COLUMNS, cfg.data.targets, "synthetic")
    synthetic.generate_echo(
        root,
        num_patients=syn.num_patients,
        studies_per_patient=syn.studies_per_patient,
        frames_per_study=syn.frames_per_study,
        image_size=syn.image_size,
        seed=syn.seed,
    )
    views = list(synthetic.VIEWS)
    records = read_tmed_csv(root / "labels.csv", root, views, cfg.data.target)
    return Index({"view": views, "severity": SEVERITY_CLASSES}, records)


def read_ct(cfg, root: Path) -> Index:
    synthetic.generate_ct(
        root, num_cases=cfg.data.synthetic.num_cases, seed=cfg.data.synthetic.seed
    )
    return nifti.read(cfg, root)
