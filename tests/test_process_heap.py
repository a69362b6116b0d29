"""`semimed.process`: stage processes keep freed tensor memory (glibc malloc thresholds) and the
loop gives it back before validation, which a fresh process shows in glibc's own accounting;
no effect on another C library."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semimed import cli, process

ROOT = Path(__file__).resolve().parents[1]
GLIBC = hasattr(os, "confstr") and "CS_GNU_LIBC_VERSION" in os.confstr_names

# Frees a tensor of N MiB in a fresh process and prints the free bytes glibc then holds
# (mallinfo2().fordblks) and how much the resident memory grew (/proc/self/statm): with the
# default thresholds the block was its own mmap and went back to the system; kept, it stays in
# the heap, resident, for the next allocation; released (malloc_trim), its pages go back.
PROBE = """
import ctypes, os, sys
from semimed import process
if sys.argv[1] in ("keep", "release"):
    assert process.keep_freed_memory()
import torch

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
before = resident()
x = torch.ones(int(sys.argv[2]) * 256 * 1024)  # argv[2] MiB
del x
if sys.argv[1] == "release":
    process.release_free_memory()
print(libc.mallinfo2().fordblks, resident() - before)
"""


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_tensor_memory_stays_in_the_process():
    def probe(mode: str, size_mib: int = 8) -> tuple[int, int]:
        env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
        cmd = [sys.executable, "-c", PROBE, mode, str(size_mib)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        free, grown = done.stdout.split()[-2:]
        return int(free), int(grown)

    mib = 1024 * 1024
    free, grown = probe("default")
    assert free < 8 * mib and grown < 4 * mib
    free, grown = probe("keep")
    assert free >= 8 * mib and grown >= 8 * mib
    free, grown = probe("release")  # malloc_trim, as before each validation
    assert grown < 4 * mib
    free, grown = probe("keep", 64)  # above the 32 MiB mmap threshold: a volume, not a step
    assert free < 8 * mib and grown < 4 * mib


def test_no_effect_without_glibc(monkeypatch):
    def no_such_name(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "confstr", no_such_name)
    assert process.keep_freed_memory() is False
    process.release_free_memory()  # a no-op there


def test_every_stage_runs_with_it(monkeypatch):
    """Importing `semimed.cli` (every stage script's first import) starts both settings."""
    calls = []
    monkeypatch.setattr(process, "install_light_monai", lambda: calls.append("monai"))
    monkeypatch.setattr(process, "keep_freed_memory", lambda: calls.append("heap"))
    importlib.reload(cli)
    cli.main(lambda: calls.append("stage"))
    assert calls == ["monai", "heap", "stage"]
