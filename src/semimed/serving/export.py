"""A model folder's inference network as TorchScript and ONNX (`semimed export`).

The exported graph is the network alone, as `semimed.serving.model_folder.load_model` returns it:
the method's ``inference_model()`` (EMA teacher, averaged pair), LWN branches fused, eval
mode. Input ``image`` (B, C, H, W) for classification or (B, C, X, Y, Z) patches of the
card's ``inference.patch_size`` for segmentation (C: the card's ``in_channels``); output
``logits`` (B, sum(task_sizes)) or (B, K, X, Y, Z), K classes. The batch axis is dynamic.
Preprocessing, sliding windows and the inverse resampling stay outside: the copied
``model.json`` says what they are.

ONNX uses the `torch.export`-based exporter when `onnxscript` is installed and the legacy
TorchScript-based one (``dynamo=False``) otherwise. With `onnxruntime` installed, the export
is checked against PyTorch on a random batch of another size than the traced one.
"""

from __future__ import annotations

import importlib.util
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from semimed.io import write_json_atomic
from semimed.serving.model_folder import CARD, LoadedModel, load_model
from semimed.serving.predict_io import PredictError, check_output, output_folder

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
MARKER = "export.json"
TOLERANCE = 1e-4  # largest |PyTorch - exported| logit difference accepted (float32 rounding)


class ExportError(PredictError):
    """An export that cannot be made or does not reproduce PyTorch; one line."""


def example_input(card: dict, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random batch in [0, 1] of the network's input shape: (B, C, S, S) or (B, C, *patch)."""
    if card["spatial_dims"] == 3 and "patch_size" in card["inference"]:
        shape = (card["in_channels"], *card["inference"]["patch_size"])
    else:
        size = card["preprocess"]["image_size"]
        shape = (card["in_channels"], *([size] * card["spatial_dims"]))
    return torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed))


def export_torchscript(net: nn.Module, x: torch.Tensor, path: Path) -> None:
    """`torch.jit.trace` of `net` on `x` (B, ...), saved to `path`. (PyTorch deprecates
    TorchScript in favour of `torch.export`; ONNX is the format to build on.)"""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # the deprecation notice
        traced = torch.jit.trace(net, x)
    traced.save(str(path))


def _weight_bytes(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def export_onnx(net: nn.Module, x: torch.Tensor, path: Path) -> None:
    """ONNX of `net` traced on `x` (B, ...), input ``image`` and output ``logits`` with a
    dynamic batch axis (weights of a model past ~2 GB in ``<path>.data`` beside it)."""
    names = {"input_names": ["image"], "output_names": ["logits"]}
    if importlib.util.find_spec("onnxscript") is not None:
        options = {
            "dynamic_shapes": ({0: torch.export.Dim("batch")},),
            "dynamo": True,
            "verbose": False,
            # one self-contained file; ONNX needs separate weights only past 2 GB (protobuf)
            "external_data": _weight_bytes(net) > 1.8e9,
        }
    else:  # the legacy exporter
        options = {"dynamic_axes": {"image": {0: "batch"}, "logits": {0: "batch"}}}
        options["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporters' deprecation notices
        torch.onnx.export(net, (x,), str(path), **names, **options)


@torch.no_grad()
def max_difference(net: nn.Module, path: Path, fmt: str, x: torch.Tensor) -> float | None:
    """max |net(x) - exported(x)| over a batch `x`; None for ONNX without onnxruntime."""
    want = net(x).float().numpy()
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            scripted = torch.jit.load(str(path), map_location="cpu")
        got = scripted(x).float().numpy()
    else:
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": x.numpy()})[0]
    if got.shape != want.shape:
        raise ExportError(f"{path}: output shape {list(got.shape)}, PyTorch {list(want.shape)}")
    return float(np.abs(got - want).max())


def export_model(
    model: str | Path | LoadedModel, out: str | Path, formats=FORMATS, tolerance: float = TOLERANCE
) -> dict:
    """Export a model folder to `out` (written whole or not at all): ``model.torchscript.pt``
    and/or ``model.onnx``, a copy of ``model.json`` and ``export.json`` (files, input and
    output names, max difference to PyTorch per format); returns the latter.

    Raises `ExportError` if an exported model differs from PyTorch by more than `tolerance`."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"--format: {unknown or 'none'}; choose from {', '.join(FORMATS)}")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, "cpu")
    net = loaded.network.cpu().eval()
    check_output(out, [], [], loaded.folder, marker=MARKER)
    x, check = example_input(loaded.card, 2), example_input(loaded.card, 3, seed=1)
    info = {
        "model": str(loaded.folder),
        "weights_sha256": loaded.card["weights"]["sha256"],
        "input": {"name": "image", "shape": ["batch", *x.shape[1:]]},
        "output": {"name": "logits"},
        "files": {},
        "max_abs_difference": {},
        "tolerance": tolerance,
    }
    with output_folder(out) as tmp:
        for fmt in dict.fromkeys(formats):
            path = tmp / FILES[fmt]
            try:
                (export_torchscript if fmt == "torchscript" else export_onnx)(net, x, path)
            except Exception as err:  # exporters raise many kinds; say which step failed
                first = (str(err).splitlines() or [err.__class__.__name__])[0]
                raise ExportError(f"{loaded.folder}: {fmt} export failed ({first})") from None
            diff = max_difference(net, path, fmt, check)
            if diff is not None and not diff <= tolerance:
                raise ExportError(
                    f"{loaded.folder}: {fmt} export differs from PyTorch by {diff:.2e} "
                    f"(> {tolerance:.0e})"
                )
            info["files"][fmt] = sorted(p.name for p in tmp.glob(f"{FILES[fmt]}*"))
            info["max_abs_difference"][fmt] = diff
        shutil.copyfile(loaded.folder / CARD, tmp / CARD)
        write_json_atomic(tmp / MARKER, info)
    return info
