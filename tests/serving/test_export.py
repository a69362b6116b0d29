"""`semimed export`: TorchScript and ONNX agree with PyTorch (ONNX Runtime, atol 1e-4) for a
tiny fused LWN classifier, a tiny two-network 3D segmentation model and the default-sized
networks of both tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_model_folder import cls_data, make_model_folder, seg_data, with_network

from semimed.serving.console import main
from semimed.serving.export import ExportError, example_input, export_model
from semimed.serving.model_folder import load_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
ATOL = 1e-4  # float32 rounding of fused convs and a different kernel library


def _parity(folder, out):
    """Run the exported files on a batch of another size than the traced one (the batch axis
    is dynamic) and compare with the loaded PyTorch network."""
    import onnxruntime as ort

    loaded = load_model(folder)
    x = example_input(loaded.card, batch=5, seed=3)
    with torch.no_grad():
        want = loaded.network(x).numpy()
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), want, atol=ATOL, rtol=0)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    return want.shape


def test_classification_lwn_exports_agree(tiny, tmp_path):
    cfg = with_network(tiny("classification"), "lwn", (4, 4, 4, 4))
    folder, _ = make_model_folder(tmp_path / "run", cfg, "fixmatch", cls_data())
    info = export_model(folder, tmp_path / "export")
    assert _parity(folder, tmp_path / "export") == (5, 3)
    assert info["files"] == {"torchscript": ["model.torchscript.pt"], "onnx": ["model.onnx"]}
    assert all(d <= ATOL for d in info["max_abs_difference"].values())
    saved = json.loads((tmp_path / "export" / "export.json").read_text())
    assert saved["input"] == {"name": "image", "shape": ["batch", 1, 32, 32]}
    card = json.loads((tmp_path / "export" / "model.json").read_text())
    assert card["weights"]["sha256"] == saved["weights_sha256"]


def test_segmentation_pair_exports_agree(tiny, tmp_path, capsys):
    folder, _ = make_model_folder(tmp_path / "run", tiny("segmentation"), "cps", seg_data())
    out = tmp_path / "export"
    assert main(["export", str(folder), "--out", str(out)]) == 0
    assert "export:" in capsys.readouterr().out
    assert _parity(folder, out) == (5, 3, 16, 16, 16)
    # a second export replaces the first (it is ours: export.json)
    assert main(["export", str(folder), "--out", str(out), "--format", "onnx"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.json", "model.onnx"]


def test_bad_exports_are_one_line(tiny, tmp_path, capsys):
    cfg = with_network(tiny("classification"), "cnn", (4, 8))
    folder, _ = make_model_folder(tmp_path / "run", cfg, "supervised", cls_data())
    with pytest.raises(ExportError, match="choose from torchscript, onnx"):
        export_model(folder, tmp_path / "x", formats=("tflite",))
    assert main(["export", str(folder), "--out", str(folder / "exported")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lies inside" in err
    assert not (folder / "exported").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_default_sized_models_export_agree(task, default_params, tmp_path):
    """The networks params.yaml trains by default (classification: cnn [8, 16, 32, 64] at
    48 px; segmentation: unet [16, 32, 64, 128] on 32^3 patches), with the default method
    that has a teacher (its `inference_model()` is the EMA copy): TorchScript and ONNX
    Runtime reproduce PyTorch within `ATOL` on a batch of another size than the traced one."""
    from semimed.build import parse_task

    cfg = parse_task(task, default_params[task])
    methods = [m for m in cfg.methods if m not in ("supervised", "supervised_full")]
    data = cls_data(size=cfg.preprocess.image_size) if task == "classification" else seg_data()
    folder, _ = make_model_folder(tmp_path / "run", cfg, methods[0], data)
    card = load_model(folder).card
    assert card["network"]["channels"] == list(cfg.network.channels)
    info = export_model(folder, tmp_path / "export")
    assert all(d <= ATOL for d in info["max_abs_difference"].values()), info
    x = info["input"]["shape"][2:]  # the default input: 48 x 48 px, or the 32^3 patch
    assert x == (
        [cfg.preprocess.image_size] * 2
        if task == "classification"
        else card["inference"]["patch_size"]
    )
    assert _parity(folder, tmp_path / "export")[0] == 5
