"""A model folder applied to new files: images -> a CSV, NIfTI volumes -> label maps in
the input's own grid (`semimed predict`, the DVC stage ``predict_<task>``).

Preprocessing is the training chain itself (`semimed.data.preprocess`); inference is the
method's ``inference_model()`` (EMA teacher, averaged pair, fused LWN) as evaluation runs
it. Segmentation slides the trained patch over the preprocessed volume, then undoes the
chain's spatial steps from MONAI's record of them (`Compose.inverse`: un-crop, resample back,
re-orient), so every label map has exactly the input file's shape and affine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from semimed.config import ConfigError, PredictParams, load_task_section
from semimed.data.original_space import (
    error_cause,
    invert,
    labels_in_original_space,
    preprocess_volume,
)
from semimed.data.preprocess import classification_chain
from semimed.inference import predict_proba, volume_logits
from semimed.runtime import autocast_for, select_device
from semimed.serving.model_folder import CARD, LoadedModel, load_model
from semimed.serving.predict_io import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    PredictError,
    check_output,
    discover,
    group_channels,
    output_folder,
    read_case,
    write_csv,
    write_manifest,
    write_nifti,
)
from semimed.tasks import spec

__all__ = ["PredictError", "predict"]


def load_predict_params(task: str, path: str | Path = "params.yaml") -> PredictParams:
    """The `<task>.predict` block of params.yaml; ConfigError names the key."""
    cfg = load_task_section(task, path)
    if cfg.predict is None:
        raise ConfigError(f"{path}: {task}.predict: missing key (see docs/predict.md)")
    return cfg.predict


def stage_output(output: str, input_path: str) -> Path:
    """Where the stage writes the predictions of one input: ``<output>/<input>`` (as the
    dvc.yaml entry ``${<task>.predict.output}/${item.input}`` spells it)."""
    if Path(input_path).is_absolute() or ".." in Path(input_path).parts:
        raise ConfigError(f"predict.inputs: {input_path!r} must be a path inside the repository")
    return Path(f"{output}/{input_path}")


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
                        f"{item.path}: unreadable as an image ({error_cause(err)})"
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
def segment_volume(loaded: LoadedModel, path, sw_batch_size: int, probabilities: bool, autocast):
    """(labels (X, Y, Z) uint8, probabilities (X, Y, Z, C) float32 or None), both in the
    file's own grid; probabilities are resampled back linearly (background = 1 - the rest).
    `path`: the volume, or a list of one file per input channel. The normalisation is the
    card's (`preprocess.intensity`, with the training data's statistics; a card without
    one: the HU window)."""
    pre, card = loaded.card["preprocess"], loaded.card
    try:
        fill = pre.get("nan_policy", "error") == "zero"
        intensity = pre.get("intensity") or pre["window"]
        image = preprocess_volume(path, pre["spacing"], intensity, fill_nonfinite=fill)
    except ConfigError as err:
        raise PredictError(str(err)) from None
    inference = card["inference"]
    with autocast():
        logits = volume_logits(
            loaded.network,
            image.as_tensor(),
            inference["patch_size"],
            inference["overlap"],
            sw_batch_size,
            loaded.device,
        )
    labels = labels_in_original_space(logits.argmax(1).to(torch.uint8), image)
    if not probabilities:
        return labels, None
    fg = invert(logits.softmax(1)[0, 1:], image, nearest=False)
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
    `probabilities`); a model with C > 1 input channels reads one file per channel,
    ``<id>_0000.nii.gz`` .. ``<id>_<C-1>.nii.gz``, in the first one's grid. Both write
    ``output/predictions.json`` (model, inputs, files), returned.
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
    items = group_channels(items, card["in_channels"])
    refs = {item.id: read_case(item, card["in_channels"]) for item in items}  # all first
    sw = batch_size or card["inference"]["sw_batch_size"]
    files = []
    with output_folder(output) as tmp:
        for item in tqdm(items, desc="predict", unit="volume", disable=None):
            source = [str(f) for f in item.channels] or item.path
            labels, probs = segment_volume(model, source, sw, probabilities, autocast)
            ref = refs[item.id]
            if labels.shape != tuple(ref.shape):  # the inverse must land on the input grid
                raise PredictError(
                    f"{item.path}: inverted to {list(labels.shape)}, not {ref.shape}"
                )
            write_nifti(tmp / f"{item.id}.nii.gz", labels, ref)
            entry = {"id": item.id, "input": str(item.path), "labels": f"{item.id}.nii.gz"}
            if item.channels:
                entry["input"] = [str(f) for f in item.channels]
            if probs is not None:
                write_nifti(tmp / f"{item.id}_probs.nii.gz", probs, ref)
                entry["probabilities"] = f"{item.id}_probs.nii.gz"
            files.append(entry)
        manifest["files"] = files
        write_manifest(tmp, manifest)
    return manifest
