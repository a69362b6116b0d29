"""A model folder applied to new files: images -> a CSV, NIfTI volumes -> label maps in
the input's own grid (`semimed predict`, the DVC stage ``predict_<task>``).

Preprocessing is the training chain itself (`semimed.data.preprocess`); inference is the
method's ``inference_model()`` (EMA teacher, averaged pair, fused LWN) as evaluation runs
it. Segmentation slides the trained patch over the preprocessed volume, then undoes the
chain's spatial steps from MONAI's record of them (`Compose.inverse`: un-crop, resample back,
re-orient), so every label map has exactly the input file's shape and affine.
"""

from __future__ import annotations

import functools
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import Compose, EnsureTyped
from monai.transforms.utils import convert_applied_interp_mode
from monai.utils import TraceKeys
from tqdm import tqdm

from semimed.config import ConfigError, PredictParams, load_task
from semimed.data.preprocess import classification_chain, segmentation_chain
from semimed.inference import predict_proba
from semimed.model_folder import CARD, LoadedModel, load_model
from semimed.predict_io import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    PredictError,
    check_output,
    discover,
    output_folder,
    read_volume,
    write_csv,
    write_manifest,
    write_nifti,
)
from semimed.runtime import autocast_for, select_device
from semimed.tasks import spec

__all__ = ["PredictError", "PredictParams", "labels_in_original_space", "predict"]


def load_predict_params(task: str, path: str | Path = "params.yaml") -> PredictParams:
    """The `<task>.predict` block of params.yaml; ConfigError names the key."""
    cfg = load_task(task, path)
    if cfg.predict is None:
        raise ConfigError(f"{path}: {task}.predict: missing key (see docs/predict.md)")
    return cfg.predict


def stage_output(output: str, input_path: str) -> Path:
    """Where the stage writes the predictions of one input: ``<output>/<input>`` (as the
    dvc.yaml entry ``${<task>.predict.output}/${item.input}`` spells it)."""
    if Path(input_path).is_absolute() or ".." in Path(input_path).parts:
        raise ConfigError(f"predict.inputs: {input_path!r} must be a path inside the repository")
    return Path(f"{output}/{input_path}")


def _cause(err: BaseException) -> str:
    """The innermost error of a chain (MONAI wraps reader errors) as one short phrase."""
    while err.__cause__ or err.__context__:
        err = err.__cause__ or err.__context__
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{err.__class__.__name__}: {text}"[:200] if text else err.__class__.__name__


# --------------------------------------------------------------------------- classification
def classify_images(loaded: LoadedModel, items, batch_size: int, autocast) -> list[dict]:
    """One CSV row per item: id, path, the predicted class per target and the per-class
    probabilities ``prob_<target>_<class>`` (each target's block a softmax of its own)."""
    card = loaded.card
    if card["spatial_dims"] != 2:
        raise PredictError(
            f"{loaded.folder / CARD}: a 3D classification model; predict reads 2D image files"
        )
    pre = card["preprocess"]
    chain = classification_chain(pre["image_size"], pre["channels"])
    probs = []
    with tqdm(total=len(items), desc="predict", unit="image", disable=None) as bar:
        for start in range(0, len(items), batch_size):
            chunk = []
            for item in items[start : start + batch_size]:
                try:
                    x = chain({"image": str(item.path)})["image"]  # (C, S, S) float32
                except Exception as err:
                    raise PredictError(
                        f"{item.path}: unreadable as an image ({_cause(err)})"
                    ) from None
                chunk.append(torch.as_tensor(x))
            with autocast():
                p = predict_proba(
                    loaded.network, torch.stack(chunk), batch_size, loaded.device, loaded.task_sizes
                )
            probs.append(p)
            bar.update(len(chunk))
    probs = np.concatenate(probs)  # (N, sum(task_sizes))
    rows = [{"id": item.id, "path": str(item.path)} for item in items]
    start = 0
    for target in loaded.targets:
        names = loaded.class_names(target)
        block, start = probs[:, start : start + len(names)], start + len(names)
        for row, p in zip(rows, block, strict=True):
            row[target] = names[int(p.argmax())]
            row.update({f"prob_{target}_{c}": f"{v:.6f}" for c, v in zip(names, p, strict=True)})
    return rows


def csv_columns(loaded: LoadedModel) -> list[str]:
    """id, path, one column per target (its predicted class), then ``prob_<target>_<class>``."""
    probs = [f"prob_{t}_{c}" for t in loaded.targets for c in loaded.class_names(t)]
    return ["id", "path", *loaded.targets, *probs]


# --------------------------------------------------------------------------- segmentation
@functools.lru_cache(maxsize=4)
def volume_chain(spacing: tuple[float, ...], window: tuple[float, ...]) -> Compose:
    """Training's `segmentation_chain` (image only) without its final conversion to NumPy,
    so its output keeps MONAI's record of the spatial steps applied (for the inverse)."""
    chain = segmentation_chain(spacing, window, labeled=False)
    return Compose([t for t in chain.transforms if not isinstance(t, EnsureTyped)])


def preprocess_volume(path: str | Path, spacing, window) -> MetaTensor:
    """A NIfTI volume -> (1, X', Y', Z') float32 in [0, 1], RAS, `spacing` mm, cropped to the
    body: exactly what training saw, plus its metadata and applied operations."""
    chain = volume_chain(tuple(float(s) for s in spacing), tuple(float(w) for w in window))
    try:
        image = chain({"image": str(path)})["image"]
    except Exception as err:
        raise PredictError(f"{path}: cannot preprocess ({_cause(err)})") from None
    if min(image.shape[1:]) == 0:
        raise PredictError(f"{path}: no voxel above the intensity window {list(window)}")
    return image


def _untraced(ops):
    """`ops` with every transform id (nested ones too, e.g. a crop's padding) set to
    `TraceKeys.NONE`, so the inverse matches them in last-in-first-out order."""
    if isinstance(ops, list):
        return [_untraced(op) for op in ops]
    if isinstance(ops, dict):
        out = {k: _untraced(v) for k, v in ops.items()}
        return out | ({TraceKeys.ID: TraceKeys.NONE} if TraceKeys.ID in ops else {})
    return ops


def _invert(data: torch.Tensor, reference: MetaTensor, nearest: bool) -> np.ndarray:
    """(C, X', Y', Z') on `reference`'s preprocessed grid -> (C, X, Y, Z) on its file's grid.

    MONAI's record of the applied operations holds every size and affine the inverse needs;
    its transform ids are cleared (`_untraced`) so any instance of the chain inverts it."""
    ops = _untraced(deepcopy(reference.applied_operations))
    if nearest:  # labels: nearest neighbour instead of the image's bilinear resampling
        ops = convert_applied_interp_mode(ops, mode="nearest", align_corners=None)
    pred = MetaTensor(data.detach().float().cpu(), meta=deepcopy(reference.meta))
    pred.applied_operations = ops
    inverse_chain = volume_chain((1.0, 1.0, 1.0), (0.0, 1.0))  # settings unused by the inverse
    out = inverse_chain.inverse({"image": pred})["image"]
    return np.asarray(out.detach().cpu().numpy())


def labels_in_original_space(
    labels, image: MetaTensor | str | Path, spacing=None, window=None
) -> np.ndarray:
    """A label map in the preprocessed grid -> (X, Y, Z) uint8 in the image file's own grid
    (its shape, affine and orientation), by inverting the chain (nearest neighbour).

    `labels`: (X', Y', Z') or (1, X', Y', Z') integers, on the grid `segmentation_chain
    (spacing, window)` makes of `image`, e.g. a `predict_volume` result on a preprocessed
    volume. `image`: the `preprocess_volume` output (carries the applied operations), or the
    path of the original NIfTI, which is then preprocessed again with `spacing` (mm) and
    `window` to recover them -- what evaluation needs to score in the label files' own space
    (the labeled chain crops and resamples labels on the image's grid, so it is the same).
    Voxels outside the body crop are background (0)."""
    if not isinstance(image, MetaTensor):
        if spacing is None or window is None:
            raise ValueError("labels_in_original_space: a path needs spacing and window")
        image = preprocess_volume(image, spacing, window)
    labels = torch.as_tensor(np.asarray(labels))
    labels = labels[None] if labels.ndim == 3 else labels
    if tuple(labels.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(
            f"labels_in_original_space: labels {list(labels.shape[1:])} are not on the "
            f"preprocessed grid {list(image.shape[1:])}"
        )
    return np.rint(_invert(labels, image, nearest=True)[0]).astype(np.uint8)


@torch.inference_mode()
def volume_logits(network, image: torch.Tensor, inference: dict, sw_batch_size: int, device):
    """Logits (1, C, X', Y', Z') of a preprocessed volume (1, X', Y', Z'): MONAI sliding-window
    inference with `inference`'s patch size and overlap, Gaussian blending (as
    `semimed.inference.predict_volume`, which returns only the argmax)."""
    network.eval()
    x = torch.as_tensor(image, dtype=torch.float32)[None].to(device)
    return sliding_window_inference(
        x,
        roi_size=tuple(inference["patch_size"]),
        sw_batch_size=sw_batch_size,
        predictor=network,
        overlap=inference["overlap"],
        mode="gaussian",
        padding_mode="constant",
    ).float()


def segment_volume(
    loaded: LoadedModel, path: Path, sw_batch_size: int, probabilities: bool, autocast
):
    """(labels (X, Y, Z) uint8, probabilities (X, Y, Z, C) float32 or None), both in the
    file's own grid; probabilities are resampled back linearly (background = 1 - the rest)."""
    pre, card = loaded.card["preprocess"], loaded.card
    image = preprocess_volume(path, pre["spacing"], pre["window"])
    with autocast():
        logits = volume_logits(
            loaded.network, image.as_tensor(), card["inference"], sw_batch_size, loaded.device
        )
    labels = labels_in_original_space(logits.argmax(1).to(torch.uint8), image)
    if not probabilities:
        return labels, None
    fg = _invert(logits.softmax(1)[0, 1:], image, nearest=False)
    fg = np.clip(fg, 0.0, 1.0)
    probs = np.concatenate([np.clip(1.0 - fg.sum(0, keepdims=True), 0.0, 1.0), fg])
    return labels, np.moveaxis(probs, 0, -1).astype(np.float32)


# --------------------------------------------------------------------------- entry point
def predict(
    model: str | Path | LoadedModel,
    inputs,
    output: str | Path,
    *,
    task: str | None = None,
    batch_size: int | None = None,
    probabilities: bool = False,
    device: str = "auto",
    path_column: str = "path",
) -> dict:
    """Predict every input file with a model folder; write `output` whole or not at all.

    Classification -> ``output/predictions.csv`` (`csv_columns`); segmentation ->
    ``output/<id>.nii.gz`` label maps (+ ``<id>_probs.nii.gz`` (X, Y, Z, C) with
    `probabilities`). Both write ``output/predictions.json`` (model, inputs, files), returned.
    `task`: refuse a model of another task; `batch_size`: images (classification) or windows
    (segmentation) per forward, default the card's. Bad input: `PredictError`, nothing written."""
    if not isinstance(model, LoadedModel):
        try:
            dev = select_device(device)
        except RuntimeError:
            raise PredictError(f"--device {device}: no CUDA device is available") from None
        model = load_model(model, dev)
    card = model.card
    if task is not None and model.task != task:
        raise PredictError(
            f"{model.folder / CARD}: a {model.task} model; the {task} task was asked for"
        )
    dense = spec(model.task).dense
    items = discover(inputs, NIFTI_SUFFIXES if dense else IMAGE_SUFFIXES, path_column)
    check_output(output, inputs, items, model.folder)
    autocast, _ = autocast_for(model.device, True)
    manifest = {
        "task": model.task,
        "model": str(model.folder),
        "method": card["method"],
        "weights_sha256": card["weights"]["sha256"],
        "inputs": [str(i) for i in inputs],
        "count": len(items),  # images or volumes predicted
    }
    if not dense:
        rows = classify_images(
            model, items, batch_size or card["inference"]["batch_size"], autocast
        )
        with output_folder(output) as tmp:
            write_csv(tmp / "predictions.csv", csv_columns(model), rows)
            manifest["files"] = ["predictions.csv"]
            write_manifest(tmp, manifest)
        return manifest
    refs = {item.id: read_volume(item.path, card["in_channels"]) for item in items}  # all first
    sw = batch_size or card["inference"]["sw_batch_size"]
    files = []
    with output_folder(output) as tmp:
        for item in tqdm(items, desc="predict", unit="volume", disable=None):
            labels, probs = segment_volume(model, item.path, sw, probabilities, autocast)
            ref = refs[item.id]
            if labels.shape != tuple(ref.shape):  # the inverse must land on the input grid
                raise PredictError(
                    f"{item.path}: inverted to {list(labels.shape)}, not {ref.shape}"
                )
            write_nifti(tmp / f"{item.id}.nii.gz", labels, ref)
            entry = {"id": item.id, "input": str(item.path), "labels": f"{item.id}.nii.gz"}
            if probs is not None:
                write_nifti(tmp / f"{item.id}_probs.nii.gz", probs, ref)
                entry["probabilities"] = f"{item.id}_probs.nii.gz"
            files.append(entry)
        manifest["files"] = files
        write_manifest(tmp, manifest)
    return manifest
