"""MONAI transforms without their metadata bookkeeping, safely from several threads.

MONAI's switch (`monai.data.set_track_meta`) is one process-wide flag. `plain_tensors` turns
it off for the code inside and counts the callers inside it (a prefetch thread and the main
thread may both crop), so that the last one out restores the value the first one in found.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from monai.data import get_track_meta, set_track_meta

_lock = threading.Lock()
_inside = 0  # callers inside `plain_tensors` now
_before = True  # the flag the first of them found


@contextlib.contextmanager
def plain_tensors() -> Iterator[None]:
    """MONAI transforms return plain tensors inside (``set_track_meta(False)``), restored after.
    The crops' MetaTensor bookkeeping (metadata, applied operations) costs time and nothing
    downstream reads it; the values are the same (tested). Safe
    from several threads: the flag is restored when the last of them leaves (while one is
    inside, MONAI transforms in other threads return plain tensors too; the loop's main
    thread runs none that read metadata)."""
    global _inside, _before
    with _lock:
        if _inside == 0:
            _before = get_track_meta()
            set_track_meta(False)
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0:
                set_track_meta(_before)
