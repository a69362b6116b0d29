"""Tests of the embedded synthetic data (tiny sizes: the whole file runs in a few seconds)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from semimed.data import synthetic_ct, synthetic_echo
from semimed.data.synthetic import (
    CT_LABELS,
    ECHO_CSV_COLUMNS,
    SEVERITIES,
    VIEWS,
    generate_ct,
    generate_echo,
)

ECHO_KW = {"num_patients": 6, "studies_per_patient": 2, "frames_per_study": 4, "image_size": 32}


def _read_csv(root):
    with open(root / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def echo_dirs(tmp_path_factory):
    """Three echo sets: seed 0 twice (determinism) and seed 1."""
    dirs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path_factory.mktemp(f"echo_{name}")
        dirs[name] = (out, generate_echo(out, seed=seed, **ECHO_KW))
    return dirs


@pytest.fixture(scope="module")
def ct_dirs(tmp_path_factory):
    """Three CT sets of two cases: seed 0 twice (determinism) and seed 1."""
    dirs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path_factory.mktemp(f"ct_{name}")
        dirs[name] = (out, generate_ct(out, num_cases=2, seed=seed))
    return dirs


def test_echo_csv_columns_labels_and_files(echo_dirs):
    root, summary = echo_dirs["a"]
    fields, rows = _read_csv(root)
    assert tuple(fields) == ECHO_CSV_COLUMNS
    assert len(rows) == summary["frames"] == 6 * 2 * 4
    assert {r["view_label"] for r in rows} <= set(VIEWS)
    assert {r["diagnosis_label"] for r in rows} <= set(SEVERITIES)
    assert len({r["view_label"] for r in rows}) >= 3  # views vary per frame
    for r in rows:
        assert r["SourceFolder"] == "images"
        assert r["study_id"] == r["query_key"].split("_")[0]  # TMED-2 convention
        assert r["study_id"].startswith(r["patient_id"])
        with Image.open(root / r["SourceFolder"] / r["query_key"]) as img:
            assert img.mode == "L" and img.size == (32, 32)


def test_echo_severity_is_a_patient_property(echo_dirs):
    _, rows = _read_csv(echo_dirs["a"][0])
    per_patient = defaultdict(set)
    for r in rows:
        per_patient[r["patient_id"]].add(r["diagnosis_label"])
    assert len(per_patient) == 6
    assert all(len(s) == 1 for s in per_patient.values())


def test_echo_deterministic_by_seed(echo_dirs):
    same = _tree_bytes(echo_dirs["a"][0])
    assert same == _tree_bytes(echo_dirs["b"][0])
    other = _tree_bytes(echo_dirs["c"][0])
    assert same.keys() == other.keys()  # same layout ...
    assert any(same[k] != other[k] for k in same)  # ... different content


def test_echo_frames_encode_view_and_severity():
    """Same random stream, only the label changes -> the pixels change (the cue exists)."""
    study = synthetic_echo._draw_study(np.random.default_rng(0))
    patient = {"heart": 1.0, "wall": 0.035}

    def frame(view, z):
        return synthetic_echo._render_frame(np.random.default_rng(1), 64, view, study, patient, z)

    assert not np.array_equal(frame("PLAX", 0.1), frame("A4C", 0.1))
    mild, severe = frame("PLAX", 0.1), frame("PLAX", 0.9)
    assert severe.astype(float).mean() > mild.astype(float).mean()  # brighter, thicker valve


def _load(root, entry):
    img = nib.load(root / entry["image"])
    lab = nib.load(root / entry["label"])
    return img, np.asarray(img.dataobj), lab, np.asarray(lab.dataobj)


def test_ct_dataset_json(ct_dirs):
    root, summary = ct_dirs["a"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == CT_LABELS and meta["labels"]["background"] == 0
    assert len(CT_LABELS) >= 7  # background + at least six structures
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == meta["channel_names"] == {"0": "CT"}
    assert meta["numTraining"] == len(meta["cases"]) == summary["cases"] == 2
    for entry in meta["cases"]:
        assert (root / entry["image"]).is_file() and (root / entry["label"]).is_file()
        assert entry["image"].startswith("imagesTr/") and entry["label"].startswith("labelsTr/")
        assert entry["patient_id"]


def test_ct_volumes_affines_and_labels(ct_dirs):
    root, _ = ct_dirs["a"]
    for entry in json.loads((root / "dataset.json").read_text())["cases"]:
        img, hu, lab_img, lab = _load(root, entry)
        assert hu.shape == lab.shape and hu.ndim == 3
        assert hu.dtype == np.int16 and lab.dtype == np.uint8
        assert np.allclose(img.affine, lab_img.affine)
        spacing = np.diag(img.affine)[:3]
        assert np.allclose(img.header.get_zooms(), spacing)
        assert 1.6 <= spacing[0] == spacing[1] <= 2.4 and 2.5 <= spacing[2] <= 4.0
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert all(60 <= n <= 110 for n in hu.shape[:2]) and 33 <= hu.shape[2] <= 66
        counts = np.bincount(lab.ravel(), minlength=len(CT_LABELS))
        assert len(counts) == len(CT_LABELS) and (counts > 0).all()  # every class present
        assert counts[CT_LABELS["liver"]] > 20 * counts[CT_LABELS["adrenal_right"]]
        assert hu.min() <= -900 and hu.max() >= 300  # air outside, bone in the spine
        liver = hu[lab == CT_LABELS["liver"]].mean()
        aorta = hu[lab == CT_LABELS["aorta"]].mean()
        assert 20 < liver < 100 and aorta > liver + 60  # HU-like contrast


def test_ct_deterministic_by_seed(ct_dirs):
    a, b, c = (ct_dirs[k][0] for k in "abc")
    meta = json.loads((a / "dataset.json").read_text())
    for entry in meta["cases"]:
        _, hu_a, _, lab_a = _load(a, entry)
        _, hu_b, _, lab_b = _load(b, entry)
        _, hu_c, _, _ = _load(c, entry)
        assert np.array_equal(hu_a, hu_b) and np.array_equal(lab_a, lab_b)
        assert hu_a.shape != hu_c.shape or not np.array_equal(hu_a, hu_c)


def test_ct_follow_up_scans_share_patient(tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_ct, "FOLLOW_UP_PROB", 1.0)
    generate_ct(tmp_path, num_cases=2, seed=3)
    cases = json.loads((tmp_path / "dataset.json").read_text())["cases"]
    assert [c["patient_id"] for c in cases] == ["case_0000", "case_0000"]
    (_, hu0, _, _), (_, hu1, _, _) = (_load(tmp_path, c) for c in cases)
    assert hu0.shape != hu1.shape or not np.array_equal(hu0, hu1)  # a new acquisition
