"""The GPU bench mode (`python -m benchmarks.bench --preset gpu [--device cuda]`): per
method at the GPU preset's sizes, the training step with the data stream and on a fixed
batch, its FLOPs, the share of the device's bf16 peak and the data stream's share.

Sizes: params.yaml with ``conf/preset/gpu.yaml`` merged over it (Hydra's ``# @package
_global_`` file: keys of params.yaml; dotted keys such as ``segmentation.train.batch_size``
work too), then ``--overrides FILE.yaml``.
The data stages run at those sizes in a scratch folder (or ``--workdir``, kept for reruns).
Each step is the training loop's (`benchmarks.steps.StepRunner`: forward under the loop's
autocast, bf16 on CUDA, then `optimizer_step`); CUDA work is synchronised only around timed
spans, so the times include every kernel queued inside them.

* ms/step: the data stream's next batch, then the step, as the loop runs them;
* ms/step on a fixed batch: the step alone on one batch (no data work);
* data stream: ms per batch of the stream alone, and its share of the streamed step
  (1 - fixed / streamed: what the step waits for it);
* GFLOP/step (`FlopCounterMode`) and the share of the device's dense bf16 peak (`PEAKS`)
  at the fixed-batch time; n/a for a device not listed (and for CPUs);
* host syncs/step: synchronising calls in one fixed-batch step (`benchmarks.syncs`: CUDA's
  sync debug mode; on a CPU the host reads, which include CPU-only checks and the host path of
  `optimizer_step`, as the optimizer is fused only on CUDA).
Writes ``bench_gpu.json`` and ``bench_gpu.md`` (the device named) under ``--out``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.steps import StepRunner, registered
from benchmarks.syncs import host_syncs
from benchmarks.table import batch_line
from semimed import build, paths
from semimed.build import load_task
from semimed.config import TASKS
from semimed.data.loaders import train_batches
from semimed.data.prefetch import Prefetcher
from semimed.data.taskdata import load_task_data
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.training import speedups

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "conf" / "preset" / "gpu.yaml"
# Dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name().
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
# The methods benchmarked by default (those registered); --methods overrides.
METHODS = {
    "classification": ("supervised", "fixmatch", "freematch"),
    "segmentation": ("supervised", "mean_teacher", "cps", "dhc", "urpc"),
}
# train.steps at least this: the bench runs past a tiny budget, and `lr_factor`'s poly decay
# past train.steps is a complex number (the schedule does not change a step's time).
MIN_STEPS = 1000
# (warm-up steps, timed steps) per measurement.
STEPS = {"default": (3, 10), "quick": (1, 2)}


def _nested(over: dict) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; nested dicts pass through."""
    out: dict = {}
    for key, value in over.items():
        for part in reversed(str(key).split(".")):
            value = {part: _nested(value) if isinstance(value, dict) else value}
        merge(out, value)
    return out


def merge(base: dict, over: dict) -> dict:
    """`base` updated recursively with `over` (lists and scalars replace)."""
    for k, v in over.items():
        base[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def gpu_params(base: dict, overrides: Path | None = None, preset: Path = PRESET) -> dict:
    """params.yaml's dict with the GPU preset and then `overrides` merged over its task
    sections (Hydra's ``defaults`` and ``preset`` keys are not params)."""
    layers = [yaml.safe_load(preset.read_text())]
    if overrides is not None:
        layers.append(yaml.safe_load(Path(overrides).read_text()) or {})
    out = {k: v for k, v in copy.deepcopy(base).items() if k in TASKS}
    for layer in layers:
        tasks = {k: v for k, v in _nested(layer).items() if k in TASKS}
        merge(out, tasks)
    for task in TASKS:  # the bench steps past a tiny budget; keep the schedules in range
        train = out[task]["train"]
        train["steps"] = max(train["steps"], MIN_STEPS)
    return out


def prepare_data(work: Path, params: dict) -> None:
    """`params` as ``work/params.yaml`` and the data stages' outputs at its sizes (the stage
    scripts, run in this process; skipped where the same params already made them)."""
    text = yaml.safe_dump(params, sort_keys=False)
    fresh = (work / "params.yaml").is_file() and (work / "params.yaml").read_text() == text
    (work / "params.yaml").write_text(text)
    argv = sys.argv
    try:
        with contextlib.chdir(work):
            for task in TASKS:
                if fresh and (work / paths.splits(task)).is_file():
                    continue
                for stage in ("ingest", "preprocess", "split"):
                    sys.argv = [stage, "--task", task]
                    runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")
    finally:
        sys.argv = argv


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ms(fn, n: int, device: torch.device) -> float:
    """Mean milliseconds of `n` calls of `fn`, synchronised only at both ends."""
    _sync(device)
    began = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return 1e3 * (time.perf_counter() - began) / n


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    """(device name, dense bf16 peak FLOP/s or None where unknown)."""
    if device.type != "cuda":
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", None
    name = torch.cuda.get_device_name(device)
    return name, next((p for key, p in PEAKS.items() if key in name), None)


def bench_method(cfg, data, name: str, device: torch.device, steps: tuple, peak) -> dict:
    """One row: ms/step with the stream and on a fixed batch, the stream alone, FLOPs."""
    warm, n = steps
    runner = StepRunner(cfg, data, name, device)
    if cfg.train.compile:
        speedups.compile_networks(runner.method)
    spec = build.stream_spec(runner.cls)
    raw = train_batches(data, cfg, spec, seed=2, device=device)  # timed alone
    stream = train_batches(data, cfg, spec, seed=1, device=device)
    if cfg.train.prefetch:  # as the loop: drawn ahead in a thread
        stream = Prefetcher(stream, cfg.train.prefetch)

    def streamed():
        runner.batch = next(stream)
        runner.step()

    began = time.perf_counter()
    streamed()  # the first step: compilation, when on
    first = time.perf_counter() - began
    with contextlib.closing(stream):
        for _ in range(warm):
            streamed()
        fixed = _ms(runner.step, n, device)
        with_stream = _ms(streamed, n, device)
    alone = _ms(lambda: next(raw), n, device)
    with FlopCounterMode(display=False) as counter:
        runner.step()
    gflop = counter.get_total_flops() / 1e9
    syncs = host_syncs(runner.step, device)
    return {
        "method": name,
        "step_ms": round(with_stream, 2),
        "fixed_batch_ms": round(fixed, 2),
        "stream_ms": round(alone, 2),
        "data_share": round(max(0.0, 1.0 - fixed / with_stream), 3),
        "gflop": round(gflop, 3),
        "peak_share": None if peak is None else round(gflop * 1e9 / (fixed / 1e3) / peak, 4),
        "first_step_s": round(first, 2),
        "host_syncs": syncs,
        "sync_free_optimizer": runner.opt.sync_free,
        "prefetch": cfg.train.prefetch,
        "compile": cfg.train.compile,
        "channels_last": cfg.train.channels_last,
    }


def run_gpu_bench(
    device: str = "auto",
    overrides: Path | None = None,
    quick: bool = False,
    workdir: Path | None = None,
    out: Path = paths.METRICS,
    methods: dict | None = None,
) -> dict:
    """The GPU bench mode (see the module docstring); returns what bench_gpu.json holds."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device is available")
    params = gpu_params(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    began = time.perf_counter()
    name, peak = peak_flops(dev)
    res: dict = {
        "device": name,
        "bf16_peak_tflops": None if peak is None else peak / 1e12,
        "torch": torch.__version__,
        "preset": str(PRESET.relative_to(ROOT)),
        "overrides": str(overrides) if overrides else None,
        "steps": dict(
            zip(("warmup", "timed"), STEPS["quick" if quick else "default"], strict=True)
        ),
        "tasks": {},
    }
    with tempfile.TemporaryDirectory(prefix="semimed-gpu-") as tmp:
        work = Path(workdir).resolve() if workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        prepare_data(work, params)
        for task in TASKS:
            cfg = load_task(task, work / "params.yaml")
            data = load_task_data(cfg, work / paths.processed(task), work / paths.splits(task))
            wanted = (methods or METHODS)[task]
            names = [m for m in wanted if m in registered(task)]
            rows = [bench_method(cfg, data, m, dev, res["steps"].values(), peak) for m in names]
            res["tasks"][task] = {"sizes": batch_line(cfg), "methods": rows}
    res["seconds"] = round(time.perf_counter() - began, 1)
    out = Path(out)
    write_json_atomic(out / "bench_gpu.json", res)
    write_bytes_atomic(out / "bench_gpu.md", markdown(res).encode())
    print(markdown(res))
    return res


def _pct(share) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


def markdown(res: dict) -> str:
    """``bench_gpu.md``: one table per task."""
    peak = res["bf16_peak_tflops"]
    lines = [
        f"GPU bench mode on **{res['device']}** (torch {res['torch']}; dense bf16 peak "
        f"{'n/a' if peak is None else f'{peak:g} TFLOP/s'}), sizes from {res['preset']}"
        + (f" + {res['overrides']}" if res["overrides"] else "")
        + f"; {res['steps']['timed']} timed steps after {res['steps']['warmup']}; "
        f"{res['seconds']:.0f} s."
    ]
    header = "| method | ms/step | ms/step on a fixed batch | data stream ms | data share "
    header += "| GFLOP/step | share of bf16 peak | first step s | host syncs/step |"
    for task, t in res["tasks"].items():
        first = t["methods"][0] if t["methods"] else {}
        knobs = f"prefetch {first.get('prefetch', 0)}, compile {first.get('compile', False)}"
        knobs += f", channels-last {first.get('channels_last', False)}"
        lines += ["", f"**{task}** ({t['sizes']}; {knobs})", "", header]
        lines.append("| --- |" + " ---: |" * 8)
        for r in t["methods"]:
            lines.append(
                f"| {r['method']} | {r['step_ms']:.1f} | {r['fixed_batch_ms']:.1f} | "
                f"{r['stream_ms']:.1f} | {_pct(r['data_share'])} | {r['gflop']:,.2f} | "
                f"{_pct(r['peak_share'])} | {r['first_step_s']:.1f} | {r['host_syncs']} |"
            )
    return "\n".join(lines) + "\n"
