"""Host synchronisations inside a training step: what makes the CPU wait for the GPU.

On CUDA, PyTorch's sync debug mode warns at every synchronising call
(`torch.cuda.set_sync_debug_mode`); those warnings are counted. Elsewhere `HostReads`, a
dispatch mode, records the ops that read a tensor back to the host (``.item()``, ``bool()``,
``int()``: ``_local_scalar_dense``) or size an output by its data (``nonzero``,
``masked_select``, ``unique``, ``bincount``): the same calls would synchronise on a GPU.
Some CPU kernels read their input for a check the CUDA kernel skips (``F.one_hot``'s range
check), so a CPU count can exceed the GPU's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Substrings of the aten ops `HostReads` records.
HOST_READ_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "bincount")


class HostReads(TorchDispatchMode):
    """Records (in ``seen``) every dispatched op that reads data back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(k in str(func) for k in HOST_READ_OPS):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def host_syncs(fn: Callable[[], object], device: torch.device) -> int:
    """How many times ``fn()`` synchronises with the host (see the module docstring)."""
    if device.type == "cuda":
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        return sum("synchroniz" in str(w.message) for w in caught)
    with HostReads() as mode:
        fn()
    return len(mode.seen)
