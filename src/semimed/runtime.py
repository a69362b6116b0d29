"""Where and how a process runs: device choice, seeding, and every random state as tensors.

`rng_state` / `set_rng_state` capture what a resumed run needs to draw exactly what the
uninterrupted run would (torch, CUDA, NumPy, Python), as tensors and plain numbers only, so
checkpoints holding them load with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable

import numpy as np
import torch


def select_device(name: str) -> torch.device:
    """`auto` -> CUDA if present, else CPU; `cuda` without a GPU is a one-line error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def autocast_for(device: torch.device, amp: bool) -> tuple[Callable, torch.dtype | None]:
    """(context-manager factory, dtype): bf16 autocast on a CUDA device that has it, fp16
    otherwise; a no-op context without `amp` or on the CPU (dtype None)."""
    if not (amp and device.type == "cuda"):
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


def numpy_rng_state(rs: np.random.RandomState) -> dict:
    """A RandomState's MT19937 state as a tensor and numbers (weights_only-safe)."""
    _, keys, pos, has_gauss, gauss = rs.get_state(legacy=True)
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "gauss": (has_gauss, gauss),
    }


def set_numpy_rng_state(rs: np.random.RandomState, state: dict) -> None:
    has_gauss, gauss = state["gauss"]
    keys = state["keys"].numpy().astype(np.uint32)
    rs.set_state(("MT19937", keys, int(state["pos"]), int(has_gauss), float(gauss)))


def rng_state(device: torch.device) -> dict:
    """This process's global random states (dropout, methods' sampling), weights_only-safe."""
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_rng_state(np.random),
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_rng_state(np.random, state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
