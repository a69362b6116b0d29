"""`semimed predict` on the synthetic test volumes gives the evaluate stage's label maps.

The data stages run in a scratch folder on the tiny params (synthetic CT, 6 mm); one model
folder is written as training leaves it (`make_model_folder`). Both load the model from that
folder (`load_model`); the evaluate stage's path (`evaluate_run`: sliding window with the
params' settings on the preprocess stage's arrays, then the chain inverted from the case's
image file) and predict's (the NIfTI file preprocessed again, sliding window with the card's
settings, inverted) must give the same labels in each test case's original grid: Dice >= 0.99
per class present."""

from __future__ import annotations

import copy
import json
import runpy
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import TINY, merge
from test_model_folder import make_model_folder

from semimed import paths
from semimed.build import load_task
from semimed.data.taskdata import load_task_data
from semimed.evaluate import original, run
from semimed.serving.model_folder import load_model
from semimed.serving.predict import predict

ROOT = Path(__file__).resolve().parents[2]
TASK = "segmentation"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, default_params):
    """Tiny params and the segmentation data stages' outputs (run in this process)."""
    work = tmp_path_factory.mktemp("parity")
    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for stage in ("ingest", "preprocess", "split"):
            mp.setattr(sys, "argv", [stage, "--task", TASK])
            runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")
    return work


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 1.0 if not (a.any() or b.any()) else 2 * (a & b).sum() / (a.sum() + b.sum())


def test_predict_matches_the_evaluate_stage(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    cfg = load_task(TASK, "params.yaml")
    data = load_task_data(cfg, paths.processed(TASK), paths.splits(TASK))
    folder, _ = make_model_folder(workdir / "models" / "run", cfg, "supervised", data)
    # the evaluate stage: every original-space label map it scores, by case
    evaluated = {}
    mapped = original.labels_in_original_space

    def record(pred, image, spacing, window):
        labels = mapped(pred, image, spacing, window)
        evaluated[Path(image).name.split(".")[0]] = labels
        return labels

    monkeypatch.setattr(original, "labels_in_original_space", record)
    model = load_model(folder, "cpu").network  # as the evaluate stage loads it
    run.evaluate_run(cfg, data, model, "cpu", workdir / "plots", "parity", paths.ingested(TASK))
    test = list(data.split["test"])
    assert len(evaluated) == len(test) >= 1
    # predict on the same cases' image files
    records = json.loads((paths.ingested(TASK) / "manifest.json").read_text())["records"]
    images = [Path(r["image"]) for r in records if r["id"] in test]
    info = predict(folder, images, workdir / "pred", task=TASK)
    assert info["count"] == len(test)
    classes = set()
    for entry in info["files"]:
        got = np.asanyarray(nib.load(workdir / "pred" / entry["labels"]).dataobj)
        ref = nib.load(entry["input"])
        want = evaluated[Path(entry["input"]).name.split(".")[0]]
        assert got.shape == ref.shape == want.shape
        assert np.allclose(nib.load(workdir / "pred" / entry["labels"]).affine, ref.affine)
        present = set(np.unique(want)) | set(np.unique(got))
        classes |= present
        for c in sorted(present - {0}):
            assert dice(got == c, want == c) >= 0.99, (entry["id"], c)
    assert len(classes) >= 2  # the untrained network segments something: not a trivial pass
