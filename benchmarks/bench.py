"""Benchmark (`make bench`): each method's cost against its intrinsic cost, data throughput and
the pipeline's time and memory. Writes ``metrics/bench.json`` and ``metrics/bench.md``.

* methods (`benchmarks.steps`): every registered method of both tasks trains on one fixed
  batch through the loop's `optimizer_step`; step time and FLOPs against the passes its
  Method class declares and the passes hooks measure.
* data (`benchmarks.data_stream`): preprocessing, MONAI Dataset against CacheDataset, the
  training stream and sliding-window inference.
* pipeline (`benchmarks.pipeline`): DVC's own cost and the stages' wall time and peak memory
  in a scratch copy of the repository; the default ``dvc repro`` time estimated from them, or
  measured from scratch with ``--pipeline``.
* startup (`benchmarks.startup`): each stage script's start-up (interpreter + imports).
* predict (`benchmarks.predict_speed`): `semimed predict` images/s and volumes/s on the CPU.
* ``--preset gpu`` (`benchmarks.gpu`): per method at the GPU preset's sizes, ms/step, FLOPs,
  share of the device's bf16 peak and the data stream's share -> ``bench_gpu.json/.md``.
* targets, tables and the sizes line of each task: `benchmarks.table`.

Run from the repository root:

    python -m benchmarks.bench [--quick] [--pipeline] [--workdir DIR] [--out metrics]
    python -m benchmarks.bench --preset gpu [--device cuda] [--overrides FILE.yaml]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.data_stream import bench_data, timed
from benchmarks.gpu import run_gpu_bench
from benchmarks.pipeline import bench_dvc, bench_stages, copy_repo, estimate_pipeline, isolated_env
from benchmarks.predict_speed import bench_predict
from benchmarks.startup import bench_startup
from benchmarks.steps import bench_methods
from benchmarks.table import batch_line, check_targets, markdown
from semimed import paths, process
from semimed.build import load_task
from semimed.config import TASKS
from semimed.data.taskdata import load_task_data
from semimed.io import write_bytes_atomic, write_json_atomic

# Work per run: (rounds, steps per round, warm-up steps) per method on one thread (CPU time,
# the ratios) and on the default threads (wall time); items cached (classification,
# segmentation), stream batches, sliding-window volumes, repeats of each DVC command, runs of
# each stage's start-up, test items predicted (classification, segmentation).
SIZES = {
    "default": dict(
        one=(4, 3, 2), wall=(2, 2, 1), items=(64, 6), batches=20, volumes=3, repeats=3,
        startups=5, predict=(256, 4),
    ),
    "quick": dict(
        one=(1, 2, 1), wall=(1, 2, 1), items=(2, 2), batches=2, volumes=1, repeats=1,
        startups=1, predict=(4, 1),
    ),
}  # fmt: skip
SECTIONS = "methods,data,pipeline,startup,predict"


def machine() -> dict:
    import monai

    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    times = [timed(lambda: a @ b)[1] for _ in range(6)][1:]
    return {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "matmul_gflops": round(2 * 2048**3 / statistics.median(times) / 1e9, 1),
        "load_start": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--quick", action="store_true", help="a few steps and items (tests)")
    p.add_argument("--pipeline", action="store_true", help="also time a full dvc repro")
    workdir = "a folder with params.yaml (data/ made if missing) to use instead of a copy of "
    p.add_argument("--workdir", type=Path, help=workdir + "the repository; no DVC timings")
    p.add_argument("--sections", default=SECTIONS, help="comma-separated subset")
    p.add_argument("--out", type=Path, default=paths.METRICS, help="folder for bench.json/.md")
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu", help="gpu: benchmarks.gpu")
    p.add_argument("--device", default="auto", help="--preset gpu: cpu, cuda or auto")
    p.add_argument("--overrides", type=Path, help="--preset gpu: a YAML of params overrides")
    p.add_argument("--methods", help="--preset gpu: comma-separated methods (default: gpu.METHODS)")
    args = p.parse_args(argv)
    process.keep_freed_memory()  # as every stage process (semimed.process.start): the steps timed here
    if args.preset == "gpu":
        methods = args.methods and {t: tuple(args.methods.split(",")) for t in TASKS}
        out = args.out if args.out.is_absolute() else Path.cwd() / args.out
        return run_gpu_bench(args.device, args.overrides, args.quick, args.workdir, out, methods)
    sections, size = set(args.sections.split(",")), SIZES["quick" if args.quick else "default"]
    root, began = Path.cwd(), time.perf_counter()
    res: dict = {"machine": machine(), "settings": {"quick": args.quick, "pipeline": args.pipeline}}
    with tempfile.TemporaryDirectory(prefix="semimed-bench-") as tmp:
        env = isolated_env(Path(tmp))
        work = args.workdir.resolve() if args.workdir else Path(tmp) / "repo"
        pipe: dict = {}
        if not args.workdir:
            pipe["copied_outputs"] = len(copy_repo(root, work, env))
            if "pipeline" in sections:
                pipe["dvc"] = bench_dvc(work, env, size["repeats"], args.pipeline)
        cfgs = {t: load_task(t, work / "params.yaml") for t in TASKS}
        missing = any(not (work / paths.splits(t)).is_file() for t in TASKS)
        if "pipeline" in sections or missing:
            runs = "pipeline" in sections
            pipe["stages"] = bench_stages(work, root / "stages", env, cfgs, args.quick, runs)
        if "pipeline" in sections and "full_repro" not in pipe.get("dvc", {}):
            pipe["estimate"] = estimate_pipeline(work, cfgs, pipe["stages"], pipe.get("dvc", {}))
        res["pipeline"] = pipe
        res["settings"]["batches"] = {t: batch_line(c) for t, c in cfgs.items()}
        data = {
            t: load_task_data(c, work / paths.processed(t), work / paths.splits(t))
            for t, c in cfgs.items()
        }
        if "methods" in sections:
            timing = size["one"], size["wall"]
            res["methods"] = {t: bench_methods(c, data[t], *timing) for t, c in cfgs.items()}
        if "data" in sections:
            res["data"] = {
                t: bench_data(c, work, data[t], size["items"][k], size["batches"], size["volumes"])
                for k, (t, c) in enumerate(cfgs.items())
            }
        if "predict" in sections:
            res["predict"] = {
                t: bench_predict(c, data[t], work, size["predict"][k])
                for k, (t, c) in enumerate(cfgs.items())
            }
        if "startup" in sections:
            res["startup"] = bench_startup(root / "stages", work, size["startups"])
    res["machine"]["load_end"] = os.getloadavg()[0]
    res["seconds"] = round(time.perf_counter() - began, 1)
    res["targets"] = check_targets(res)
    out = args.out if args.out.is_absolute() else root / args.out
    write_json_atomic(out / "bench.json", res)
    write_bytes_atomic(out / "bench.md", markdown(res).encode())
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
