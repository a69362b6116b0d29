"""Stage start-up (the ``startup`` section): seconds from ``python stages/<name>.py --help``
to its exit, i.e. the interpreter plus the stage's module-level imports, and which heavy
packages those load. Every DVC stage pays this once per run before any work, so over all
the stages of the default pipeline it adds up; torch is the largest part, then MONAI through
`semimed.process` (which keeps MONAI from loading every submodule). The stage's own run may
import more lazily; that is work, not start-up.

Each script runs `repeats` times in fresh interpreters; ``seconds`` is the fastest run and
``median`` the median. As with ``timeit``, slower runs are other processes' interference (a
busy neighbour on a shared machine slows an import down), so the targets use the fastest;
the median is reported beside it."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "monai", "torchvision", "sklearn", "scipy", "matplotlib")
PROBE = (
    "import runpy, sys\n"
    "script, sys.argv = sys.argv[1], [sys.argv[1], '--help']\n"
    "try:\n"
    "    runpy.run_path(script, run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
)


def _timed(command: list[str], cwd: Path, repeats: int) -> dict:
    """Fastest and median wall seconds of ``command`` over `repeats` fresh interpreters, and
    the heavy packages named on the last line of its standard error (`PROBE`'s report)."""
    times, heavy = [], ""
    for _ in range(repeats):
        began = time.perf_counter()
        out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - began)
        heavy = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
    return {
        "seconds": round(min(times), 3),
        "median": round(statistics.median(times), 3),
        "runs": len(times),
        "imports": heavy.split(),
    }


def stage_startup(script: Path, cwd: Path, repeats: int) -> dict:
    """`_timed` of ``script --help``: its start-up and the heavy packages it imported."""
    return _timed([sys.executable, "-c", PROBE, str(script)], cwd, repeats)


def bench_startup(scripts: Path, cwd: Path, repeats: int) -> dict:
    """`stage_startup` of every stage script, and of a bare interpreter for reference."""
    out = {"python": _timed([sys.executable, "-c", "pass"], cwd, repeats)}
    for script in sorted(scripts.glob("*.py")):
        out[script.stem] = stage_startup(script, cwd, repeats)
    return out
