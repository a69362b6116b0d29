"""Benchmark (`make bench`): each method's cost against its intrinsic cost, data throughput and
the pipeline's time and memory. Writes ``metrics/bench.json`` and ``metrics/bench.md``.

* methods (`benchmarks.steps`): every registered method of both tasks trains on one fixed
  batch through the loop's `optimizer_step`; step time and FLOPs against the passes its
  Method class declares and the passes hooks measure.
* data (`benchmarks.data_stream`): preprocessing, MONAI Dataset against CacheDataset, the
  training stream and sliding-window inference.
* pipeline (`benchmarks.pipeline`): DVC's own cost and the stages' wall time and peak memory
  in a scratch copy of the repository; the default ``dvc repro`` time estimated from them, or
  measured from scratch with ``--pipeline`` (~9 min on 2 cores).
* targets and tables: `benchmarks.table`.

Run from the repository root:

    python -m benchmarks.bench [--quick] [--pipeline] [--workdir DIR] [--out metrics]
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
from benchmarks.pipeline import bench_dvc, bench_stages, copy_repo, estimate_pipeline, isolated_env
from benchmarks.steps import bench_methods
from benchmarks.table import check_targets, markdown
from semimed import paths
from semimed.build import load_task
from semimed.data.taskdata import load_task_data
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.tasks import TASK_SPECS

TASKS = tuple(TASK_SPECS)
# Work per run: (rounds, steps per round, warm-up steps) per method on one thread (CPU time,
# the ratios) and on the default threads (wall time); items cached (classification,
# segmentation), stream batches, sliding-window volumes, repeats of each DVC command.
SIZES = {
    "default": dict(one=(4, 3, 2), wall=(2, 2, 1), items=(64, 6), batches=20, volumes=3, repeats=3),
    "quick": dict(one=(1, 2, 1), wall=(1, 2, 1), items=(2, 2), batches=2, volumes=1, repeats=1),
}


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


def _batch_line(cfg) -> str:
    t, n = cfg.train, cfg.network
    shape = "x".join(map(str, t.patch_size or (cfg.preprocess.image_size,) * 2))
    unlabeled = t.batch_size * t.unlabeled_ratio
    return f"{n.name} {list(n.channels)}, {shape}, {t.batch_size} labeled + {unlabeled} unlabeled"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--quick", action="store_true", help="a few steps and items (tests)")
    p.add_argument("--pipeline", action="store_true", help="also time a full dvc repro (~9 min)")
    workdir = "a folder with params.yaml (data/ made if missing) to use instead of a copy of "
    p.add_argument("--workdir", type=Path, help=workdir + "the repository; no DVC timings")
    p.add_argument("--sections", default="methods,data,pipeline", help="comma-separated subset")
    p.add_argument("--out", type=Path, default=paths.METRICS, help="folder for bench.json/.md")
    args = p.parse_args(argv)
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
        res["settings"]["batches"] = {t: _batch_line(c) for t, c in cfgs.items()}
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
