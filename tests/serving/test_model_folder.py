"""Model folders: the card written beside best.pt, and load_model's rebuild and refusals.

`make_model_folder` (also used by test_predict / test_export) writes a folder the way a
finished training run leaves it (best.pt = inference_model() weights, train.json) and then
its card, without the training loop; one test trains for real with `train_run`.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from semimed import build
from semimed.data.taskdata import TaskData
from semimed.io import write_json_atomic
from semimed.networks import reparameterize
from semimed.serving.model_folder import (
    CARD,
    FORMAT,
    ModelFolderError,
    load_model,
    read_card,
    sha256_file,
    write_model_card,
)
from semimed.training import checkpoint

CLASSES = {"view": ["PLAX", "PSAX", "A4C"], "quality": ["poor", "good"]}
ORGANS = ["background", "liver", "tumor"]


def cls_data(targets=("view",), channels=1, size=32) -> TaskData:
    """A TaskData with only what a card needs: targets, classes and the image shape."""
    return TaskData(
        "classification",
        CLASSES[targets[0]],
        {},
        {},
        images=torch.zeros(1, channels, size, size),
        targets=tuple(targets),
        task_classes=tuple(CLASSES[t] for t in targets),
    )


def seg_data(spacing=(6.0, 6.0, 6.0)) -> TaskData:
    return TaskData("segmentation", ORGANS, {}, {}, volumes={}, spacing=spacing)


def with_network(cfg, name=None, channels=None):
    net = cfg.network
    net = dataclasses.replace(net, name=name or net.name, channels=channels or net.channels)
    return dataclasses.replace(cfg, network=net)


def make_model_folder(folder, cfg, method: str, data: TaskData, seed: int = 0):
    """A run's folder as training leaves it, then `write_model_card`. BatchNorm statistics
    are randomised so LWN fusion and the EMA copy are not no-ops."""
    torch.manual_seed(seed)
    net = build.make_method(cfg, method, build.data_shape(data)).inference_model()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save(checkpoint.cpu_copy(net.state_dict()), folder / "best.pt")
    metric = "dice" if data.task == "segmentation" else "balanced_accuracy"
    info = {"task": cfg.task, "method": method, "seed": seed, "steps": 4}
    info |= {f"best_val_{metric}": 0.5, "best_step": 2, "fingerprint": "f" * 16}
    write_json_atomic(folder / "train.json", info)
    write_model_card(folder, cfg, data, method)
    return folder, net.eval()


def test_card_describes_the_run_and_load_model_reproduces_it(tiny, tmp_path):
    """A multi-task LWN run: the card holds every target's classes; the loaded network is
    fused, in eval mode, and computes what the trained inference model computes."""
    cfg = with_network(tiny("classification"), "lwn", (4, 4, 4, 4))
    data = cls_data(("view", "quality"))
    folder, net = make_model_folder(tmp_path / "run", cfg, "supervised", data)
    card = json.loads((folder / CARD).read_text())
    assert card["format"] == FORMAT and card["task"] == "classification"
    assert card["method"] == "supervised" and card["method_params"] == {"label_smoothing": 0.0}
    assert card["network"] == {
        "name": "lwn",
        "channels": [4, 4, 4, 4],
        "dropout": cfg.network.dropout,
        "deep_supervision": False,
    }
    assert card["targets"] == ["view", "quality"] and card["task_sizes"] == [3, 2]
    assert card["class_names"] == CLASSES
    assert card["in_channels"] == 1 and card["spatial_dims"] == 2
    assert card["preprocess"] == {"chain": "classification_chain", "image_size": 32, "channels": 1}
    assert card["training"]["fingerprint"] == "f" * 16 and card["training"]["best_step"] == 2
    assert card["training"]["val_score"] == 0.5
    assert card["weights"]["sha256"] == sha256_file(folder / "best.pt")

    loaded = load_model(folder)
    assert not loaded.network.training and loaded.class_names("quality") == ["poor", "good"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.network.modules())
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.network(x), net(x), atol=1e-5)


def test_two_network_segmentation_card(tiny, tmp_path):
    """CPS: the card rebuilds the averaged pair (weights a.*, b.*) and the sliding window."""
    cfg = tiny("segmentation")
    folder, net = make_model_folder(tmp_path / "cps", cfg, "cps", seg_data())
    card = read_card(folder)
    assert card["preprocess"] == {
        "chain": "segmentation_chain",
        "orientation": "RAS",
        "spacing": [6.0, 6.0, 6.0],
        "window": list(cfg.preprocess.window),
        "intensity": {
            "mode": "ct_window",
            "channels": 1,
            "window": [float(w) for w in cfg.preprocess.window],
            "clip": [],
            "mean": [],
            "std": [],
        },
        "channel_names": None,
        "nan_policy": "error",
        "crop": "foreground, margin 2",
    }
    assert card["inference"]["patch_size"] == [16, 16, 16]
    assert card["inference"]["overlap"] == cfg.eval.overlap
    assert card["class_names"] == {"label": ORGANS} and card["task_sizes"] == [3]
    loaded = load_model(folder)
    assert type(loaded.network).__name__ == "PairAverage"
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.network(x), net(x), atol=1e-5)


def _drop(folder, name):
    (folder / name).unlink()


def _bad_json(folder, name):
    (folder / CARD).write_text("{not json")


def _tamper(folder, name):
    state = torch.load(folder / "best.pt", weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, folder / "best.pt")


def _other_network(folder, name):
    """Weights of another width, the card's hash updated: keys fit, shapes do not."""
    card = json.loads((folder / CARD).read_text())
    card["network"]["channels"] = [8, 16]
    (folder / CARD).write_text(json.dumps(card))


def _card_without_network(folder, name):
    card = json.loads((folder / CARD).read_text())
    del card["network"]
    (folder / CARD).write_text(json.dumps(card))


def _extra_key(folder, name):
    state = torch.load(folder / "best.pt", weights_only=True)
    state["stray.weight"] = torch.zeros(1)
    torch.save(state, folder / "best.pt")
    card = json.loads((folder / CARD).read_text())
    card["weights"]["sha256"] = sha256_file(folder / "best.pt")
    (folder / CARD).write_text(json.dumps(card))


@pytest.mark.parametrize(
    "breakage,name,message",
    [
        (_drop, CARD, "model.json: missing"),
        (_drop, "best.pt", "best.pt: missing"),
        (_bad_json, CARD, "model.json: not valid JSON"),
        (_card_without_network, CARD, "model.json: missing key 'network'"),
        (_tamper, "best.pt", "best.pt: sha256 differs"),
        (_other_network, CARD, "has shape"),
        (_extra_key, "best.pt", "unexpected 'stray.weight'"),
    ],
)
def test_broken_folders_are_refused_in_one_line(tiny, tmp_path, breakage, name, message):
    cfg = with_network(tiny("classification"), "cnn", (4, 8))
    folder, _ = make_model_folder(tmp_path / "run", cfg, "supervised", cls_data())
    breakage(folder, name)
    with pytest.raises(ModelFolderError) as err:
        load_model(folder)
    text = str(err.value)
    assert message in text and "\n" not in text and str(folder) in text


def test_write_model_card_needs_a_finished_run(tiny, tmp_path):
    with pytest.raises(ModelFolderError, match="train.json: missing"):
        write_model_card(tmp_path, tiny("classification"), cls_data(), "supervised")


def test_card_of_a_real_training_run(tiny, tmp_path):
    """train_run on tiny data, then the card: its training record is train.json's."""

    from semimed.data.preprocess import preprocess
    from semimed.data.sources import ingest
    from semimed.data.splits import make_splits
    from semimed.data.taskdata import load_task_data
    from semimed.training.train import train_run

    cfg = tiny("classification")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, eval_every=2))
    ingest(cfg, tmp_path / "ingested")
    manifest = preprocess(cfg, tmp_path / "ingested", tmp_path / "processed")
    write_json_atomic(tmp_path / "splits.json", make_splits(manifest, cfg.split, "view"))
    data = load_task_data(cfg, tmp_path / "processed", tmp_path / "splits.json")
    model_dir = tmp_path / "models" / "supervised" / "seed0"
    files = [tmp_path / "processed" / "manifest.json", tmp_path / "splits.json"]
    info = train_run(cfg, data, "supervised", 0, model_dir, tmp_path / "live", files)
    card = write_model_card(model_dir, cfg, data, "supervised")
    assert card["training"]["fingerprint"] == info["fingerprint"]
    assert card["training"]["best_step"] == info["best_step"]
    assert card["training"]["val_score"] == info["best_val_balanced_accuracy"]
    loaded = load_model(model_dir)
    # the same network built from params.yaml instead of the card, with the same weights
    ref = build.method_for_data(cfg, data, "supervised").inference_model()
    ref.load_state_dict(torch.load(model_dir / "best.pt", map_location="cpu", weights_only=True))
    reparameterize(ref)
    x = data.images[:4]
    with torch.no_grad():
        assert torch.allclose(loaded.network(x), ref(x), atol=1e-6)


def test_package_and_console_import_light():
    """`import semimed` and the console script's module do not import torch."""
    code = "import sys, semimed, semimed.serving.console; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
