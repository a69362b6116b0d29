"""`semimed.heap`: stage processes keep freed tensor memory (glibc malloc thresholds), which a
fresh process shows in glibc's own accounting; no effect on another C library."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semimed import cli, heap

ROOT = Path(__file__).resolve().parents[1]
GLIBC = hasattr(os, "confstr") and "CS_GNU_LIBC_VERSION" in os.confstr_names

# Frees an 8 MiB tensor in a fresh process and prints the free bytes glibc then holds
# (mallinfo2().fordblks): with the default thresholds the block was its own mmap and went back
# to the system; kept, it stays in the heap for the next allocation.
PROBE = """
import ctypes, sys
from semimed import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed_memory()
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
x = torch.ones(2 * 1024 * 1024)  # 8 MiB
del x
print(libc.mallinfo2().fordblks)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_tensor_memory_stays_in_the_process():
    def free_bytes(mode: str) -> int:
        env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
        cmd = [sys.executable, "-c", PROBE, mode]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    mib = 1024 * 1024
    assert free_bytes("default") < 8 * mib
    assert free_bytes("keep") >= 8 * mib


def test_no_effect_without_glibc(monkeypatch):
    def no_such_name(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "confstr", no_such_name)
    assert heap.keep_freed_memory() is False


def test_every_stage_runs_with_it(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append("heap"))
    cli.main(lambda: calls.append("stage"))
    assert calls == ["heap", "stage"]
