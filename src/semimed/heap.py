"""Process-wide glibc malloc settings for processes that run torch on the CPU.

By default glibc serves every allocation above a (dynamic) threshold with its own ``mmap`` and
gives freed memory at the top of the heap back to the system. A 3D training step allocates and
frees tens of full-size tensors of a few MiB each; every one of them then comes back as fresh
pages, and the kernel zero-fills each page on first touch: on the default segmentation step
that page faulting is a tenth of the step (supervised, CPS) to a fifth (URPC, whose pyramid
losses allocate most). `keep_freed_memory` fixes the mmap threshold at 32 MiB and raises the
trim threshold, so a step's freed blocks stay in the process and the next step reuses them,
as PyTorch's CUDA caching allocator does on a GPU (PyTorch's CPU tuning guide gets the same
from jemalloc or TCMalloc). Values and results do not change (the CPU allocator aligns
tensors to 64 bytes either way); blocks above 32 MiB still go back to the system when freed,
the training loop hands the kept memory back before each validation
(`release_free_memory`), and all of it is returned when the process ends. No effect where
the C library is not glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap: glibc's own ceiling for its dynamic threshold,
# above every tensor of a training step of the default and preset workloads; larger blocks
# (whole volumes in preprocess, evaluate, predict) still get their own mmap and go back to
# the system when freed, so keeping memory costs nothing there.
MMAP_BYTES = 32 << 20
# The heap keeps up to this much free memory at its top: more than a step frees at once.
KEEP_BYTES = 1 << 30


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library if it is glibc, else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (ValueError, OSError):  # no such name here: not glibc
        return None
    return ctypes.CDLL(None)


def keep_freed_memory(mmap_bytes: int = MMAP_BYTES, keep_bytes: int = KEEP_BYTES) -> bool:
    """Set glibc's mmap threshold to ``mmap_bytes`` and its trim threshold to ``keep_bytes``
    (see the module docstring); True if glibc took both, False on another C library."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took_mmap = mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
    took_trim = mallopt(_M_TRIM_THRESHOLD, keep_bytes)
    return bool(took_mmap and took_trim)


def release_free_memory() -> None:
    """Give the free memory the heap keeps back to the system (glibc ``malloc_trim(0)``): the
    training loop calls it before each validation, whose allocations differ from a training
    step's, so that its peak does not add to the blocks the steps keep."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
