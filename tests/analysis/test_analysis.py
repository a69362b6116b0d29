"""Grad-CAM, robustness sweep, embeddings, the analyze stage and the label-efficiency parser."""

from __future__ import annotations

import copy
import json
import runpy
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY, merge
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from benchmarks import label_efficiency
from semimed.analysis import embeddings, gradcam, robustness
from semimed.config import ConfigError, parse_task_section
from semimed.inference import predict_proba
from semimed.networks import DataShape, build_network
from semimed.transforms import PERTURBATIONS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["PLAX", "PSAX", "A4C"]
ANALYSIS = {
    "gradcam_images": 3,
    "kinds": list(PERTURBATIONS),
    "strengths": [0.0, 0.5, 1.0],
    "perturb_seed": 0,
    "projection_seed": 0,
    "umap_neighbors": 15,
}


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = build_network("cnn", DataShape.single(2, 1, 3), channels=(4, 8), dropout=0.0)
    return net.eval()


def _data(n: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 16, 16, generator=gen), torch.arange(n) % 3


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_last_conv_name_finds_the_last_backbone_conv():
    net = _net(0)
    name = gradcam.last_conv_name(net)
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert name == "backbone.10" and dict(net.named_modules())[name] is convs[-1]
    no_conv = nn.Module()
    no_conv.backbone = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        gradcam.last_conv_name(no_conv)


def test_gradcam_maps_shape_range_and_isolation():
    x, _ = _data(4)
    frozen = _net(0).requires_grad_(False)  # like an EMA teacher loaded for inference
    maps, preds = gradcam.gradcam_maps(frozen, x)
    assert maps.shape == (4, 16, 16) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.reshape(4, -1).max(1).max() == pytest.approx(1.0)  # highest = most relevant
    assert torch.equal(torch.as_tensor(preds), frozen(x).argmax(1))
    # the caller's network is untouched: still frozen, no hooks left on it
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in frozen.modules())
    other, _ = gradcam.gradcam_maps(_net(1), x)
    assert not np.allclose(maps, other)
    # multi-task logits: only the first num_classes columns (the primary target) decide
    _, primary = gradcam.gradcam_maps(frozen, x, num_classes=2)
    assert torch.equal(torch.as_tensor(primary), frozen(x)[:, :2].argmax(1))


def test_select_images_round_robin_over_classes():
    labels = torch.tensor([2, 0, 0, 1, 2, 1])
    assert gradcam.select_images(labels, 4) == [1, 3, 0, 2]
    assert gradcam.select_images(labels, 10) == [1, 3, 0, 2, 5, 4]  # all, no repeats


def test_gradcam_grid_png(tmp_path):
    x, y = _data(3)
    rows = {m: gradcam.gradcam_maps(_net(s), x) for s, m in enumerate(["sup", "fixmatch"])}
    out = tmp_path / "gradcam.png"
    gradcam.plot_gradcam_grid(x, y.tolist(), rows, CLASSES, out)
    _assert_png(out)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x) if x.shape[-1] % 2 == 0 else -self.net(x)


def test_inference_copy_folds_batchnorm_or_falls_back():
    x, _ = _data(4)
    net = _net(0)
    fast = robustness._inference_copy(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # original untouched
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-5)
        branchy = _Branchy(net)
        assert torch.allclose(robustness._inference_copy(branchy)(x), branchy(x))


def test_robustness_records_and_plot(tmp_path):
    x, y = _data()
    models = {"a": {3: _net(0), 5: _net(1)}, "b": {0: _net(2)}}
    strengths = [0.0, 0.5, 1.0]
    records = robustness.robustness_records(models, x, y, PERTURBATIONS, strengths, 0, 8, "cpu")
    keys = [(r["method"], r["seed"], r["kind"], r["strength"]) for r in records]
    assert len(keys) == len(set(keys)) == 3 * len(PERTURBATIONS) * len(strengths)
    # one flat list of per-run rows: a DVC template colours by method and facets by kind
    assert all(
        set(r) == {"method", "seed", "kind", "strength", "balanced_accuracy"} for r in records
    )
    assert {(r["method"], r["seed"]) for r in records} == {("a", 3), ("a", 5), ("b", 0)}
    for seed, net in models["a"].items():
        clean = balanced_accuracy_score(y, predict_proba(net, x, 8, "cpu").argmax(1))
        for r in records:
            if (r["method"], r["seed"], r["strength"]) == ("a", seed, 0.0):
                assert r["balanced_accuracy"] == pytest.approx(clean, abs=1e-6)
    out = tmp_path / "robustness.png"
    robustness.plot_robustness(records, out)
    _assert_png(out)


def test_embeddings_tsne_and_umap(tmp_path):
    x, y = _data()
    features = embeddings.backbone_features(_net(0), x, 8, "cpu")
    assert features.shape == (30, 8)
    points = {}
    for how in embeddings.PROJECTIONS:
        xy = embeddings.project(features, how, seed=0)
        assert xy.shape == (30, 2) and np.isfinite(xy).all()
        points[how] = xy
    with pytest.raises(ValueError, match="how"):
        embeddings.project(features, "pca", seed=0)
    out = tmp_path / "emb.png"
    embeddings.plot_embeddings(points, y.tolist(), CLASSES, "test", out)
    _assert_png(out)


@pytest.mark.parametrize(
    "key,value",
    [
        ("strengths", [0.0, 1.5]),
        ("strengths", [0.5, 0.0]),
        ("kinds", ["noise", "snow"]),
        ("gradcam_images", 0),
        ("umap_neighbors", 1),
        ("perturb_seed", "zero"),
    ],
)
def test_bad_analysis_params_name_the_key(key, value, default_params):
    def parse(analysis: dict):
        section = {**default_params["classification"], "analysis": analysis}
        return parse_task_section("classification", section).analysis

    assert parse(ANALYSIS).strengths == (0.0, 0.5, 1.0)
    with pytest.raises(ConfigError, match=f"classification.analysis.{key}") as err:
        parse({**ANALYSIS, key: value})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown key"):
        parse({**ANALYSIS, "perplexity": 30})


# ------------------------------------------------------------------ the stage, in-process


def test_analyze_stage_in_process(tmp_path, monkeypatch, default_params):
    """The stage script end to end on tiny data; checkpoints are freshly initialised networks
    saved as `train_run` saves `best.pt`, with the model card the train stage writes beside it
    (training them would only add time)."""
    from semimed.build import data_shape, make_method, parse_task
    from semimed.data.preprocess import preprocess
    from semimed.data.sources import ingest
    from semimed.data.splits import make_splits
    from semimed.data.taskdata import load_task_data
    from semimed.io import write_json_atomic
    from semimed.serving.model_folder import ModelFolderError, write_model_card

    monkeypatch.chdir(tmp_path)
    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    cls = params["classification"]
    cls.pop("analysis", None)
    cfg = parse_task("classification", cls)
    root = tmp_path / "data" / "classification"
    ingest(cfg, root / "ingested")
    manifest = preprocess(cfg, root / "ingested", root / "processed")
    write_json_atomic(root / "splits.json", make_splits(manifest, cfg.split, cfg.data.target))
    data = load_task_data(cfg, root / "processed", root / "splits.json")

    stage = runpy.run_path(str(ROOT / "stages" / "analyze.py"), run_name="analyze")
    monkeypatch.setattr(sys, "argv", ["analyze.py", "--params", "params.yaml"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="classification.analysis: missing key"):
        stage["run"]()
    cls["analysis"] = ANALYSIS
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ModelFolderError, match="no such model folder"):
        stage["run"]()
    for method in cfg.methods:
        for seed in cfg.seeds:
            torch.manual_seed(seed)
            net = make_method(cfg, method, data_shape(data))
            model_dir = tmp_path / "models" / "classification" / method / f"seed{seed}"
            model_dir.mkdir(parents=True)
            torch.save(net.inference_model().state_dict(), model_dir / "best.pt")
            write_json_atomic(model_dir / "train.json", {"seed": seed})
            write_model_card(model_dir, cfg, data, method)

    stage["run"]()
    out = tmp_path / "plots" / "analysis" / "classification"
    for name in ("gradcam.png", "robustness.png", "embeddings_tsne.png", "embeddings_umap.png"):
        _assert_png(out / name)
    records = json.loads((out / "robustness.json").read_text())
    runs = len(cfg.methods) * len(cfg.seeds)
    assert len(records) == runs * len(PERTURBATIONS) * len(ANALYSIS["strengths"])
    assert {r["seed"] for r in records} == set(cfg.seeds)


# ------------------------------------------------------------------ label efficiency


def _entry(rev, name, percent, sup, fix):
    """A `dvc exp show --json` revision entry, trimmed from DVC 3.67 output."""

    def stat(mean, std):
        return {"balanced_accuracy": {"mean": mean, "std": std, "n": 3}}

    metrics = (
        {
            "metrics/summary.json": {
                "data": {
                    "classification": {"supervised": stat(*sup), "fixmatch": stat(*fix)},
                    "segmentation": {"supervised": {"dice": {"mean": 0.4, "std": 0.1, "n": 3}}},
                }
            }
        }
        if sup
        else {}
    )
    params = {"classification": {"split": {"labeled_percent": percent}, "seeds": [0, 1, 2]}}
    return {
        "rev": rev,
        "name": name,
        "data": {
            "rev": rev,
            "timestamp": "2026-11-23T03:24:52",
            "params": {"params.yaml": {"data": params}},
            "metrics": metrics,
            "deps": {},
            "outs": {},
            "meta": {},
        },
        "error": None,
        "experiments": None,
    }


def _exp(entry, executor=None):
    return {"revs": [entry], "executor": executor, "name": entry["name"]}


# Workspace (= the applied 20 % experiment), the baseline commit at 10 %, two finished
# experiments and one still queued (no metrics yet).
EXP_SHOW = [
    _entry("workspace", None, 20, (0.84, 0.02), (0.88, 0.01)),
    {
        **_entry("8e91d565896d7f0f755485da073fefa4a2bbba4c", "main", 10, (0.8, 0.02), (0.85, 0.03)),
        "experiments": [
            _exp(
                _entry(
                    "d3e38bf738888b2685fc3fff2ffa6dd6e60ac88a",
                    "cured-hajj",
                    20,
                    (0.84, 0.02),
                    (0.88, 0.01),
                )
            ),
            _exp(
                _entry(
                    "deff4eb7dd41170429fb7447b579e6a1619c0e86",
                    "hexed-snip",
                    5,
                    (0.7, 0.05),
                    (0.78, 0.04),
                )
            ),
            _exp(
                _entry("889cba315b68a37eec36609c913455987acfc360", "upper-trey", 50, None, None),
                executor={"state": "queued", "name": "dvc-task", "local": {"pid": None}},
            ),
        ],
    },
]


def test_label_efficiency_parses_exp_show(capsys):
    records = label_efficiency.parse_exp_show(EXP_SHOW)
    got = [(r["method"], r["labeled_percent"], r["balanced_accuracy"], r["std"]) for r in records]
    assert got == [  # methods in summary order, then by labeled percentage
        ("supervised", 5.0, 0.7, 0.05),
        ("supervised", 10.0, 0.8, 0.02),
        ("supervised", 20.0, 0.84, 0.02),
        ("fixmatch", 5.0, 0.78, 0.04),
        ("fixmatch", 10.0, 0.85, 0.03),
        ("fixmatch", 20.0, 0.88, 0.01),
    ]
    assert records[2]["experiment"] == "workspace"  # the applied copy counts once
    assert capsys.readouterr().err == ""
    only = label_efficiency.parse_exp_show(EXP_SHOW, only=["hexed-snip"])
    assert {r["labeled_percent"] for r in only} == {5.0}
    # a different result at the same percentage: the first is kept, with a warning
    clash = copy.deepcopy(EXP_SHOW)
    clash[0]["data"]["metrics"]["metrics/summary.json"]["data"]["classification"]["fixmatch"][
        "balanced_accuracy"
    ]["mean"] = 0.5
    label_efficiency.parse_exp_show(clash)
    assert "ignoring cured-hajj" in capsys.readouterr().err


def test_label_efficiency_cli_writes_png_and_json(tmp_path):
    src = tmp_path / "exp.json"
    src.write_text(json.dumps(EXP_SHOW))
    out, records = tmp_path / "le.png", tmp_path / "le.json"
    label_efficiency.main(["--from-json", str(src), "--out", str(out), "--json", str(records)])
    _assert_png(out)
    assert len(json.loads(records.read_text())) == 6
    only = ["--from-json", str(src), "--out", str(out), "--json", str(records), "--method"]
    label_efficiency.main([*only, json.loads(records.read_text())[0]["method"]])
    assert len({r["method"] for r in json.loads(records.read_text())}) == 1
    with pytest.raises(SystemExit, match="no experiment"):
        label_efficiency.main(["--from-json", str(src), "--out", str(out), "--metric", "auc"])
