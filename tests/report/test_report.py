"""Summaries over seeds, Markdown table, DVC records and figure files."""

import json

import numpy as np
import pytest

from semimed.evaluate.overlay import plot_overlay
from semimed.io import write_json_atomic
from semimed.report.figures import plot_comparison, plot_training_curves
from semimed.report.tables import (
    comparison_records,
    comparison_table,
    gap_closed,
    per_class_table,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RUNS = {
    "segmentation": {
        "supervised": {0: {"dice": 0.5, "hd95_mm": 20.0}, 1: {"dice": 0.7, "hd95_mm": 10.0}},
        "dhc": {0: {"dice": 0.8}, 1: {"dice": 0.9}, 2: {"dice": 1.0, "hd95_mm": 4.0}},
        "cps": {7: {"dice": 0.6, "asd_mm": None}},
    }
}


def _assert_only_png(directory, name):
    assert sorted(p.name for p in directory.iterdir()) == [name]  # no temp file left behind
    data = (directory / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_summarize_mean_std_n_and_order():
    s = summarize(RUNS)["segmentation"]
    assert list(s) == ["supervised", "dhc", "cps"]  # order as given
    assert s["dhc"]["dice"] == pytest.approx({"mean": 0.9, "std": 0.1, "n": 3})
    assert s["dhc"]["hd95_mm"] == {"mean": 4.0, "std": 0.0, "n": 1}
    assert s["supervised"]["hd95_mm"]["std"] == pytest.approx(np.std([20.0, 10.0], ddof=1))
    assert s["cps"]["dice"] == {"mean": 0.6, "std": 0.0, "n": 1}  # single seed: std 0
    assert "asd_mm" not in s["cps"]  # None values are left out


def test_comparison_table_and_records():
    summary = summarize(RUNS)
    table = comparison_table(summary, "segmentation", ["dice", "hd95_mm"])
    lines = table.strip().splitlines()
    assert lines[0] == "| method | dice | hd95_mm |"
    assert lines[1] == "| --- | --- | --- |"
    assert lines[3] == "| dhc | 0.900 +- 0.100 (n=3) | 4.000 +- 0.000 (n=1) |"
    assert lines[4].endswith("| - |")  # cps has no hd95
    records = comparison_records(summary, "segmentation", "hd95_mm")
    assert [r["method"] for r in records] == ["supervised", "dhc"]
    assert records[1] == {"method": "dhc", "mean": 4.0, "std": 0.0}
    with pytest.raises(ValueError, match="segmentation"):
        comparison_table(summary, "nope", ["dice"])


def test_gap_closed_and_per_class_table():
    runs = {
        "segmentation": {
            "supervised": {0: {"dice": 0.5, "dice_liver": 0.8, "dice_adrenal": 0.0}},
            "dhc": {0: {"dice": 0.6, "dice_liver": 0.7, "dice_adrenal": 0.3}},
            "supervised_full": {0: {"dice": 0.7, "dice_liver": 0.9}},
        }
    }
    summary = summarize(runs)
    assert gap_closed(summary, "segmentation", "dice") == pytest.approx({"dhc": 0.5})
    assert (
        gap_closed(summarize({"segmentation": {"dhc": {0: {"dice": 1.0}}}}), "segmentation", "dice")
        == {}
    )
    lines = per_class_table(summary, "segmentation", "dice_").strip().splitlines()
    assert lines[0] == "| method | liver | adrenal |"
    assert lines[3] == "| dhc | 0.700 +- 0.000 | 0.300 +- 0.000 |"
    assert lines[4] == "| supervised_full | 0.900 +- 0.000 | - |"


def test_plot_comparison_writes_png(tmp_path):
    out = tmp_path / "plots" / "dice.png"  # parent dir does not exist yet
    summary = summarize(RUNS)
    records = comparison_records(summary, "segmentation", "dice")
    plot_comparison(records, "segmentation", "dice", out)
    _assert_only_png(out.parent, "dice.png")
    missing = comparison_records(summary, "segmentation", "missing")
    with pytest.raises(ValueError, match="missing"):
        plot_comparison(missing, "segmentation", "missing", tmp_path / "x.png")


def test_plot_overlay_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 8)).astype(np.float32)
    label = np.zeros((32, 32, 8), dtype=np.int64)
    label[8:20, 8:20, 5] = 1
    label[22:28, 22:28, 5] = 2
    pred = np.roll(label, 2, axis=0)
    out = tmp_path / "overlay.png"
    plot_overlay(image, label, pred, ["background", "liver", "spleen"], out, "case 1")
    _assert_only_png(tmp_path, "overlay.png")
    # Empty ground truth and prediction fall back to the middle slice without error.
    empty = np.zeros_like(label)
    plot_overlay(image, empty, empty, ["background", "liver", "spleen"], out, "empty")
    with pytest.raises(ValueError, match="same"):
        plot_overlay(image, label[:, :, :4], pred, ["bg", "a", "b"], out, "bad")


def test_plot_training_curves_writes_png(tmp_path):
    curves = {"fixmatch": [(0, 1.0), (10, 0.5), (20, 0.3)], "supervised": [(0, 1.0), (20, 0.6)]}
    out = tmp_path / "curves.png"
    plot_training_curves(curves, out, "loss")
    _assert_only_png(tmp_path, "curves.png")


def test_write_json_atomic(tmp_path):
    out = tmp_path / "sub" / "records.json"
    write_json_atomic(out, [{"method": "dhc", "mean": 0.9, "std": 0.1}])
    assert json.loads(out.read_text()) == [{"method": "dhc", "mean": 0.9, "std": 0.1}]
    with pytest.raises(ValueError):
        write_json_atomic(out, {"x": float("nan")})  # NaN is not JSON
    assert json.loads(out.read_text())[0]["method"] == "dhc"  # old file untouched
