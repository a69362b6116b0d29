"""Batch statistics over every training process, for the methods' running memories.

Under DDP (``semimed.training.distributed``) each process draws its share of the global batch, and the
loop copies rank 0's buffers to every process after each step: a memory updated from the local
share alone would keep rank 0's share and drop the others'. FreeMatch's thresholds and TEAR's
alignment history and AdaPL memory are therefore updated from the rows of every process,
gathered first, as USB does (``concat_all_gather``). Plain ``torch.distributed``, so methods do
not import the loop's launcher; a no-op without an initialised process group (one process,
tests, the benchmark).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def all_rows(x: Tensor) -> Tensor:
    """``x`` (N, ...) of every process concatenated in rank order, (world * N, ...), without
    gradient; the shares must have one shape (the loop splits the global batch evenly).
    ``x`` itself outside a process group of several processes."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)
