"""Inference shared by validation (train loop) and the evaluate stage.

Both run the model in `eval()` mode under `torch.inference_mode()`: no random augmentation,
no dropout, no autograd bookkeeping (seed 001's original applied random augmentations at
test time; we never do).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from semimed.multitask import blockwise_softmax


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device,
    task_sizes: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Class probabilities (N, C) for images (N, 1, H, W); a multi-task model's columns are
    its tasks' blocks (``task_sizes``), each a softmax of its own."""
    model.eval()
    sizes = tuple(task_sizes) if task_sizes else None
    out = []
    for i in range(0, len(images), batch_size):
        logits = model(images[i : i + batch_size].to(device)).float()
        sizes = sizes or (logits.shape[1],)
        out.append(blockwise_softmax(logits, sizes).cpu())
    return torch.cat(out).numpy()


@torch.inference_mode()
def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    roi_size,
    overlap: float,
    sw_batch_size: int,
    device,
) -> np.ndarray:
    """Label map (X, Y, Z) uint8 for a whole volume (1, X, Y, Z), by MONAI sliding-window
    inference with Gaussian-weighted window blending."""
    model.eval()
    x = torch.as_tensor(np.asarray(image), dtype=torch.float32)[None].to(device)
    logits = sliding_window_inference(
        x,
        roi_size=tuple(roi_size),
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=overlap,
        mode="gaussian",
        padding_mode="constant",
    )
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
