"""Benchmark (`make bench`): each method's cost against its intrinsic cost, data throughput and
the pipeline's time and memory. Writes ``metrics/bench.json`` and ``metrics/bench.md``.

* methods: every registered method of both tasks trains on ONE fixed batch (the loader's first)
  of the default network and batch size, each step as the training loop takes it (forward,
  backward, clipping, optimizer, schedule, ``on_step_end``). Methods are timed in interleaved
  rounds, so load from other processes spreads over all of them. Times: the fastest wall time
  of a step with torch's default threads, and the median CPU time of a step on ONE thread; the
  ratios use the latter, which other processes on a shared machine disturb far less (two
  OpenMP threads wait for each other whenever one of them is descheduled). Beside the ratio to
  ``supervised``: the DECLARED intrinsic cost (``INTRINSIC``: images forwarded and
  back-propagated through the networks per step; cost model forward 1, backward 2 per image,
  so ``supervised`` costs 3 B), the MEASURED passes (forward hooks on every network count the
  images forwarded with and without autograd, and those whose output receives a gradient),
  the FLOPs of a step (``FlopCounterMode``) and the ops that take most of its CPU time.
  waste = ratio / intrinsic ratio: above 1.1 a method spends time its algorithm does not need.
* data: preprocessing (the preprocess stage's function), MONAI ``Dataset`` (the chain re-run
  every epoch) against ``CacheDataset`` (run once), the training stream (``train_batches``)
  and sliding-window inference per volume.
* pipeline: in a scratch copy of the repository (git's files and the outputs in ``dvc.lock``):
  ``dvc status`` and a no-op ``dvc repro``; the data stages, a shortened training and its
  evaluation per task, analyze and report as subprocesses (wall time, peak resident memory).
  The default ``dvc repro`` time is ESTIMATED from them and the recorded training seconds, or
  measured from scratch in the copy with ``--pipeline`` (~9 min on 2 cores).

    python -m semimed.bench [--quick] [--pipeline] [--workdir DIR] [--out metrics]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from semimed.config import load_task
from semimed.data.loaders import load_task_data, train_batches
from semimed.inference import predict_volume
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.methods import METHODS
from semimed.train import build_optimizer, lr_factor, make_method, method_for_data

TASKS = ("classification", "segmentation")
TARGETS = {"pipeline_s": 600.0, "waste": 1.1, "noop_repro_s": 3.0, "peak_rss_gib": 4.0}
GIB = 2.0**30
# Work per run: (rounds, steps per round, warm-up steps) per method on one thread (CPU time,
# the ratios) and on the default threads (wall time); items cached (classification,
# segmentation), stream batches, sliding-window volumes, repeats of each DVC command.
SIZES = {
    "default": dict(one=(4, 3, 2), wall=(2, 2, 1), items=(64, 6), batches=20, volumes=3, repeats=3),
    "quick": dict(one=(1, 2, 1), wall=(1, 2, 1), items=(2, 2), batches=2, volumes=1, repeats=1),
}


# Intrinsic cost of one training step: (images forwarded, images back-propagated) through the
# task's network(s), for b labeled and u = mu * b unlabeled images (segmentation: crops) and the
# method's params p; cost = forward + 2 * backward, in units of supervised's 3 b.
def _one(b, u, p):
    return b, b


def _joint(b, u, p):
    return b + 2 * u, b + 2 * u


def _teacher(b, u, p):
    return b + 2 * u, b + u


def _pair(b, u, p):
    return 2 * (b + u), 2 * (b + u)


_CPS = "two networks, each on labeled + unlabeled"
INTRINSIC = {
    "classification": {
        "supervised": (_one, "one pass over the labeled batch"),
        "supervised_full": (_one, "as supervised, with every train label"),
        "fixmatch": (_joint, "labeled + weak + strong in ONE pass (BN sees the mixed batch)"),
        "pseudo_label": (_joint, "as FixMatch: one pass over labeled, weak and strong"),
        "freematch": (
            lambda b, u, p: (b + 2 * u, (3 if p.gate else 1) * (b + 2 * u)),
            "as FixMatch; the Fix-A-Step gate adds two backward passes",
        ),
        "mean_teacher": (_teacher, "student on labeled + strong; EMA teacher on weak, no grad"),
        "mixmatch": (
            lambda b, u, p: (b + 4 * u, b + 2 * u),
            "no-grad guess on both weak views, then one pass over the mixed batch",
        ),
        "tear": (
            lambda b, u, p: (b + 3 * u, b + 2 * u),
            "student on labeled + weak + strong; EMA teacher on weak, no grad",
        ),
        "simclr": (
            lambda b, u, p: (2 * u, 2 * u),
            "pretraining: backbone on two strong views (the later linear probe is cheaper)",
        ),
    },
    "segmentation": {
        "supervised": (_one, "one pass over the labeled crops"),
        "supervised_full": (_one, "as supervised, with every train label"),
        "mean_teacher": (_teacher, "student on labeled + strong; EMA teacher on weak, no grad"),
        "acisis": (_teacher, "student on labeled + unlabeled; EMA teacher on unlabeled, no grad"),
        "uamt": (
            lambda b, u, p: (b + u + p.passes * u, b + u),
            "student on labeled + unlabeled; T noisy teacher passes, no grad",
        ),
        "urpc": (lambda b, u, p: (b + u, b + u), "one deep-supervision network pass"),
        "ssnet": (
            lambda b, u, p: (3 * (b + u), 3 * (b + u)),
            "clean pass + VAT probe (input gradient only) + adversarial pass",
        ),
        **{n: (_pair, _CPS) for n in ("cps", "dhc", "crest", "simis", "depl", "adsh", "cld")},
        "dst": (_pair, _CPS + " (+ pseudo and worst-case heads)"),
    },
}


def intrinsic_passes(task: str, name: str, b: int, u: int, params) -> tuple[int, int, str] | None:
    """(images forwarded, images back-propagated, why) per step, or None if undeclared."""
    if name not in INTRINSIC[task]:
        return None
    rule, why = INTRINSIC[task][name]
    return (*rule(b, u, params), why)


# --------------------------------------------------------------------------- methods
class PassCounter:
    """Counts images through a method's networks (``net`` and its copies: ``net2``, teacher,
    EMA); classifiers are hooked at ``backbone``, which TEAR and SimCLR call directly."""

    def __init__(self, method: torch.nn.Module) -> None:
        self.counts = {"fwd_grad": 0, "fwd_no_grad": 0, "bwd": 0}
        nets = [m for m in method.children() if isinstance(m, type(method.net))]
        self.handles = [getattr(n, "backbone", n).register_forward_hook(self._seen) for n in nets]

    def _seen(self, module, inputs, output) -> None:
        if not torch.is_tensor(output):
            return
        n = len(output)
        if output.requires_grad:
            self.counts["fwd_grad"] += n
            output.register_hook(lambda grad: self.counts.update(bwd=self.counts["bwd"] + n))
        else:
            self.counts["fwd_no_grad"] += n

    def remove(self) -> dict:
        for h in self.handles:
            h.remove()
        return self.counts


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ log lines (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class StepRunner:
    """One method with its optimizer and schedule on a fixed batch; ``step()`` does what one
    iteration of ``semimed.train.train_run`` does in one CPU process (no AMP there)."""

    def __init__(self, cfg, data, name: str) -> None:
        cls = METHODS[cfg.task][name]
        torch.manual_seed(0)
        self.method = method_for_data(cfg, data, name)
        self.batch = next(train_batches(data, cfg, cls, seed=0, device=torch.device("cpu")))
        self.t = cfg.train
        self.trainable = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.trainable, self.t)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.t)
        )
        self.step_index, self.sums = 0, {}
        self.wall: list[float] = []  # seconds per step, torch's default threads
        self.cpu: list[float] = []  # CPU seconds per step, one thread

    def step(self) -> tuple[float, float]:
        """One training step; (wall seconds, CPU seconds of this process)."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.method.train()
        terms = self.method.training_step(self.batch, self.step_index)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if self.t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.t.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.method.on_step_end(self.step_index)
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.step_index += 1
        return time.perf_counter() - wall, time.process_time() - cpu

    def profile(self) -> dict:
        """Passes (hooks) and FLOPs of one step; the ops with most CPU time in another."""
        counter = PassCounter(self.method)
        with FlopCounterMode(display=False) as flops:
            self.step()
        passes = counter.remove()
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            self.step()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        top = [
            [e.key.removeprefix("aten::"), round(100 * e.self_cpu_time_total / total)]
            for e in ops[:3]
        ]
        return {"passes": passes, "gflop": flops.get_total_flops() / 1e9, "top_ops": top}


def _timed_rounds(runners: dict, threads: int, rounds: int, steps: int, warmup: int) -> None:
    """Steps of every runner on ``threads`` torch threads, interleaved in rounds; one thread
    records CPU time, more threads wall time."""
    torch.set_num_threads(threads)
    for r in runners.values():
        for _ in range(warmup):
            r.step()
    for _ in range(rounds):
        for r in runners.values():
            for _ in range(steps):
                wall, cpu = r.step()
                (r.cpu if threads == 1 else r.wall).append(cpu if threads == 1 else wall)


def bench_methods(cfg, data, one: tuple, wall: tuple) -> list[dict]:
    """One row per registered method of ``cfg.task`` (see the module docstring); ``one`` and
    ``wall``: (rounds, steps per round, warm-up steps) on one thread and on the default ones."""
    threads = torch.get_num_threads()
    runners = {name: StepRunner(cfg, data, name) for name in METHODS[cfg.task]}
    try:
        if threads > 1:
            _timed_rounds(runners, threads, *wall)
        _timed_rounds(runners, 1, *one)
        info = {name: r.profile() for name, r in runners.items()}  # one thread, as the ratios
    finally:
        torch.set_num_threads(threads)
    b = cfg.train.batch_size
    u = b * cfg.train.unlabeled_ratio
    base_cpu = statistics.median(runners["supervised"].cpu)
    rows = []
    for name, r in runners.items():
        passes, gflop = info[name]["passes"], info[name]["gflop"]
        cpu, wall = statistics.median(r.cpu), min(r.wall or r.cpu)
        row = {
            "method": name,
            "step_ms": round(1e3 * wall, 2),
            "step_ms_median": round(1e3 * statistics.median(r.wall or r.cpu), 2),
            "cpu_ms_1_thread": round(1e3 * cpu, 2),
            "steps_timed": {"one_thread": len(r.cpu), "default_threads": len(r.wall)},
            "ratio": round(cpu / base_cpu, 3),
            "measured_passes": passes,
            "gflop": round(gflop, 4),
            "flop_ratio": round(gflop / info["supervised"]["gflop"], 3),
            "gflops_per_s": round(gflop / wall, 1),
            "top_ops": info[name]["top_ops"],
        }
        declared = intrinsic_passes(cfg.task, name, b, u, r.method.params)
        if declared is not None:
            fwd, bwd, why = declared
            cost = (fwd + 2 * bwd) / (3 * b)
            row["intrinsic"] = {"fwd": fwd, "bwd": bwd, "cost": round(cost, 3), "why": why}
            row["waste"] = round(cpu / base_cpu / cost, 3)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- data
@contextlib.contextmanager
def _inside(folder: Path):
    """Work in ``folder`` (contextlib.chdir needs Python 3.11)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _timed(fn):
    began = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - began


def bench_data(cfg, work: Path, data, items: int, batches: int, volumes: int) -> dict:
    """Preprocessing, caching, training-stream and sliding-window throughput of one task."""
    from monai.data import CacheDataset, Dataset

    from semimed.data import preprocess as pp

    ingested = work / "data" / cfg.task / "ingested"
    unit = "images" if cfg.task == "classification" else "volumes"
    with tempfile.TemporaryDirectory() as tmp, _inside(work):  # manifest paths are relative
        manifest, secs = _timed(lambda: pp.preprocess(cfg, ingested, Path(tmp) / "processed"))
    n = len(manifest["records"])
    out = {"unit": unit, "preprocess": {"items": n, "seconds": round(secs, 2), "per_s": n / secs}}

    records = json.loads((ingested / "manifest.json").read_text())["records"][:items]
    if cfg.task == "classification":
        chain, keys = (
            pp.classification_chain(cfg.preprocess.image_size, cfg.preprocess.channels),
            ("image",),
        )
    else:
        chain = pp.segmentation_chain(tuple(cfg.preprocess.spacing), cfg.preprocess.window)
        keys = ("image", "label")
    files = [{k: str(work / r[k]) for k in keys} for r in records]

    def epoch(ds):
        return [ds[i] for i in range(len(ds))]

    plain = Dataset(files, transform=chain)
    epoch(plain)  # file-system cache and lazy imports warm
    plain_s = _timed(lambda: epoch(plain))[1]
    cached, build_s = _timed(lambda: CacheDataset(files, chain, num_workers=0, progress=False))
    cached_s = max(_timed(lambda: epoch(cached))[1], 1e-9)
    k = len(files)
    out["monai_dataset"] = {
        "items": k,
        "no_cache_per_s": k / plain_s,
        "cache_build_s": build_s,
        "cached_per_s": k / cached_s,
    }

    # The training stream of the default SSL method with the most views per step.
    cls = METHODS[cfg.task]["fixmatch" if cfg.task == "classification" else "mean_teacher"]
    stream = train_batches(data, cfg, cls, seed=0, device=torch.device("cpu"))
    per_batch = sum(len(v) for key, v in next(stream).items() if key.startswith("x_"))
    secs = _timed(lambda: [next(stream) for _ in range(batches)])[1]
    out["train_stream"] = {
        "method": cls.name,
        "images_per_batch": per_batch,
        "batch_ms": 1e3 * secs / batches,
        "images_per_s": per_batch * batches / secs,
    }
    if cfg.task == "segmentation":
        out["sliding_window"] = _sliding_window(cfg, data, volumes)
    return json.loads(json.dumps(out), parse_float=lambda x: round(float(x), 3))


def _sliding_window(cfg, data, volumes: int) -> dict:
    """Seconds per volume of ``predict_volume`` (validation settings, default network)."""
    torch.manual_seed(0)
    net = make_method(cfg, "supervised", data.num_classes, in_channels=data.in_channels)
    model, e = net.inference_model(), cfg.eval
    ids = (data.split["val"] + data.split["test"])[:volumes]
    times, voxels = [], []
    for vid in ids[:1] + ids:  # the first call warms up
        image = data.volumes[vid][0]
        args = (model, image, cfg.train.patch_size, e.overlap, e.sw_batch_size, "cpu")
        times.append(_timed(lambda args=args: predict_volume(*args))[1])
        voxels.append(int(np.prod(image.shape[1:])))
    return {
        "volumes": len(ids),
        "seconds_per_volume": statistics.mean(times[1:]),
        "mean_voxels": statistics.mean(voxels[1:]),
    }


# --------------------------------------------------------------------------- pipeline
def run_measured(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run ``cmd``: wall seconds, exit code, output, and peak resident memory in GiB of the
    process and the descendants it waited for (``wait4``)."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "seconds": round(time.perf_counter() - began, 2),
        "rc": proc.returncode,
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3),  # Linux: ru_maxrss in KiB
        "output": output,
    }


def _env(tmp: Path) -> dict:
    """The environment with git and DVC isolated from the user's configuration and caches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "GIT_"))}
    for var in ("HOME", "DVC_SITE_CACHE_DIR", "DVC_GLOBAL_CONFIG_DIR", "DVC_SYSTEM_CONFIG_DIR"):
        (tmp / var.lower()).mkdir(exist_ok=True)
        env[var] = str(tmp / var.lower())
    env.update(DVC_NO_ANALYTICS="1", GIT_CONFIG_NOSYSTEM="1")
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"], env[f"GIT_{who}_EMAIL"] = "bench", "bench@localhost"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _lock_outs(repo: Path) -> list[str]:
    """Every output path recorded in ``repo/dvc.lock`` (none without a lock)."""
    lock = repo / "dvc.lock"
    stages = yaml.safe_load(lock.read_text())["stages"] if lock.is_file() else {}
    return sorted({o["path"] for s in stages.values() for o in s.get("outs", [])})


def copy_repo(root: Path, dest: Path, env: dict) -> list[str]:
    """Copy git's files (tracked, and untracked but not ignored) and the DVC outputs recorded
    in dvc.lock to ``dest`` and commit them there; returns the outputs copied."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    outs = _lock_outs(root)
    for rel in [f for f in listed if f] + outs:
        src, dst = root / rel, dest / rel
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for git in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", *git], cwd=dest, env=env, capture_output=True, check=True)
    return [o for o in outs if (dest / o).exists()]


def bench_dvc(work: Path, env: dict, repeats: int, force: bool) -> dict:
    """DVC's own cost in the copy ``work``: ``dvc status`` and a no-op ``dvc repro`` (medians
    of ``repeats``). The copy has no DVC cache, so ``dvc commit`` first stores the outputs in
    it (and where the code changed since the last repro records them as current; DVC checks
    the same hashes either way). With ``force``, a full ``dvc repro`` from scratch first."""
    dvc = [str(Path(sys.executable).parent / "dvc")]
    out: dict = {}
    if force:
        for rel in _lock_outs(work):
            path = work / rel
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        (work / "dvc.lock").unlink(missing_ok=True)
        run = run_measured(dvc + ["repro"], work, env)
        if run["rc"]:
            raise RuntimeError(f"dvc repro failed in the copy:\n{run['output'][-3000:]}")
        out["full_repro"] = {k: run[k] for k in ("seconds", "peak_rss_gib")}
    else:
        commit = run_measured(dvc + ["commit", "--force", "--quiet"], work, env)
        if commit["rc"]:
            return {"noop_repro_s": None, "note": "not timed: dvc commit failed (no repro yet?)"}
        same = subprocess.run(["git", "diff", "--quiet", "dvc.lock"], cwd=work, env=env)
        out.update(commit_s=commit["seconds"], lock_was_current=same.returncode == 0)
    status = [run_measured(dvc + ["status"], work, env)["seconds"] for _ in range(repeats)]
    repro = [run_measured(dvc + ["repro"], work, env) for _ in range(repeats)]
    ran = sum(r["output"].count("Running stage") for r in repro)
    out.update(
        status_s=statistics.median(status),
        noop_repro_s=statistics.median(r["seconds"] for r in repro),
        note=f"median of {repeats}" + (f"; {ran} stage runs: NOT a no-op" if ran else ""),
    )
    return out


def _heaviest_default(cfg) -> str:
    """The method of ``cfg.methods`` with the largest declared cost."""
    b, u = cfg.train.batch_size, cfg.train.batch_size * cfg.train.unlabeled_ratio

    def cost(name):
        passes = intrinsic_passes(cfg.task, name, b, u, cfg.method_params(name))
        return -1 if passes is None else passes[0] + 2 * passes[1]

    return max(cfg.methods, key=cost)


def bench_stages(work: Path, scripts: Path, env: dict, cfgs: dict, quick: bool, runs: bool) -> dict:
    """Stage scripts as subprocesses in ``work``: the data stages; with ``runs`` also per task
    a two-step training of the default method with the largest declared cost (it ends with a
    validation and a checkpoint: the stage's start-up and peak memory) and its evaluation,
    then (unless ``quick``) analyze and report."""
    out: dict = {"runs": {}, "train_eval": {}}

    def stage(label, name, *args):
        run = run_measured([sys.executable, str(scripts / f"{name}.py"), *args], work, env)
        if run["rc"]:
            raise RuntimeError(f"stage {name} {' '.join(args)} failed:\n{run['output'][-3000:]}")
        out["runs"][label] = {k: run[k] for k in ("seconds", "peak_rss_gib")}
        return out["runs"][label]

    for task in TASKS:
        for name in ("ingest", "preprocess", "split"):
            stage(f"{name} {task}", name, "--task", task)
    if not runs:
        return out
    raw = yaml.safe_load((work / "params.yaml").read_text())
    for task in cfgs:
        raw[task]["train"].update(steps=2, warmup_steps=1, eval_every=2, checkpoint_every=2)
    (work / "params_bench.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for task, cfg in cfgs.items():
        method, seed = _heaviest_default(cfg), max(cfg.seeds) + 1000  # no real run's folder
        run = f"{task}/{method}"
        args = ["--task", task, "--method", method, "--seed", str(seed)]
        args += ["--params", "params_bench.yaml"]
        train = stage(f"train {run}", "train", *args)
        loop = json.loads((work / "models" / run / f"seed{seed}" / "train.json").read_text())
        train["note"] = f"{loop['steps']} steps + validation: loop {loop['seconds']} s"
        # A trained model where the copy has one: scoring an untrained one's scattered voxels
        # (surface distances) takes several times longer than the pipeline's evaluations.
        trained = (work / "models" / run / f"seed{cfg.seeds[0]}" / "best.pt").is_file()
        if trained:
            args[5] = str(cfg.seeds[0])
        evaluate = stage(f"evaluate {run}", "evaluate", *args)
        evaluate["note"] = f"seed {args[5]}" + ("" if trained else ": the 2-step model")
        out["train_eval"][task] = dict(train=train, loop_s=loop["seconds"], evaluate=evaluate)
    if not quick:
        stage("analyze", "analyze")
        stage("report", "report")
    return out


def estimate_pipeline(work: Path, cfgs: dict, stages: dict, dvc: dict) -> dict:
    """Default ``dvc repro`` time from its parts: data stages, analyze and report as measured;
    per training run its recorded loop seconds (``train.json``) plus the start-up of a train
    stage (wall - loop of the two-step run); per evaluation the measured one; DVC's no-op.
    A run without a record counts as its task's mean (``unrecorded`` says how many)."""
    measured = ("ingest", "preprocess", "split", "analyze", "report")
    runs = stages["runs"]
    parts = {k: v["seconds"] for k, v in runs.items() if k.startswith(measured)}
    startups, unrecorded = {}, 0
    for task, cfg in cfgs.items():
        probe = stages["train_eval"][task]
        startup = startups[task] = round(probe["train"]["seconds"] - probe["loop_s"], 2)
        matrix = [(m, s) for m in cfg.methods for s in cfg.seeds]
        paths = [work / "models" / task / m / f"seed{s}" / "train.json" for m, s in matrix]
        loops = [json.loads(p.read_text())["seconds"] for p in paths if p.is_file()]
        unrecorded += len(paths) - len(loops)
        loops += [statistics.mean(loops) if loops else 0.0] * (len(paths) - len(loops))
        parts[f"train {task}"] = sum(loops) + len(loops) * startup
        parts[f"evaluate {task}"] = len(loops) * probe["evaluate"]["seconds"]
    parts["dvc no-op"] = dvc.get("noop_repro_s") or 0.0
    parts = {k: round(v, 1) for k, v in parts.items()}
    total = round(sum(parts.values()), 1)
    return {"seconds": total, "parts": parts, "startup_s": startups, "unrecorded": unrecorded}


# --------------------------------------------------------------------------- report
def check_targets(res: dict) -> list[dict]:
    """Each target with its value, whether it is met (None: not measured) and value / limit."""
    pipe, rows = res.get("pipeline", {}), []

    def add(name, key, value, note):
        limit = TARGETS[key]
        met = None if value is None else bool(value <= limit)
        ratio = None if value is None else round(value / limit, 3)
        rows.append(dict(target=name, limit=limit, value=value, met=met, ratio=ratio, note=note))

    if "full_repro" in pipe.get("dvc", {}):
        value, note = pipe["dvc"]["full_repro"]["seconds"], "measured: dvc repro from scratch"
        add("default pipeline (s)", "pipeline_s", value, note)
    elif "estimate" in pipe:
        note = "ESTIMATE from stage walls and recorded runs (--pipeline measures it)"
        add("default pipeline (s)", "pipeline_s", pipe["estimate"]["seconds"], note)
    methods = res.get("methods", {})
    rated = [
        (f"{t}/{r['method']}", r["waste"]) for t in methods for r in methods[t] if "waste" in r
    ]
    if rated:
        over = [f"{name} {w:.2f}x" for name, w in rated if w > TARGETS["waste"]]
        worst = max(rated, key=lambda r: r[1])
        note = "over: " + ", ".join(over) if over else f"worst: {worst[0]}"
        add("method time / intrinsic cost", "waste", worst[1], note)
    if "dvc" in pipe:
        add("no-op dvc repro (s)", "noop_repro_s", pipe["dvc"]["noop_repro_s"], pipe["dvc"]["note"])
    runs = pipe.get("stages", {}).get("runs", {})
    peaks = [(v["peak_rss_gib"], k) for k, v in runs.items() if k.startswith(("train", "eval"))]
    if peaks:
        peak, name = max(peaks)
        add("peak resident memory of train/evaluate (GiB)", "peak_rss_gib", peak, name)
    return rows


def _fmt(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; text columns left-aligned, numbers right-aligned."""
    left = ("method", "target", "note", "passes", "top", "data", "pipeline", "met")
    align = ["---" if h.startswith(left) else "---:" for h in header]
    lines = ["", "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def _method_row(r: dict) -> list:
    i, p = r.get("intrinsic"), r["measured_passes"]
    flag = "**" if r.get("waste", 0) > TARGETS["waste"] else ""
    return [
        r["method"],
        f"{r['step_ms']:.1f}",
        f"{r['cpu_ms_1_thread']:.1f}",
        f"{r['ratio']:.2f}",
        _fmt(i and i["cost"]),
        f"{flag}{_fmt(r.get('waste'))}{flag}",
        f"{i['fwd']} / {i['bwd']}" if i else "undeclared",
        f"{p['fwd_grad']}+{p['fwd_no_grad']} / {p['bwd']}",
        _fmt(r["flop_ratio"]),
        f"{r['gflops_per_s']:.0f}",
        ", ".join(f"{name} {share}" for name, share in r["top_ops"]),
    ]


def _data_row(task: str, d: dict) -> list:
    c, s, u, sw = d["monai_dataset"], d["train_stream"], d["unit"], d.get("sliding_window")
    return [
        task,
        f"{d['preprocess']['per_s']:.1f} {u}/s",
        f"{c['no_cache_per_s']:.1f} {u}/s",
        f"{c['cache_build_s']:.2f} s, then {c['cached_per_s']:,.0f} {u}/s",
        f"{s['images_per_s']:,.0f} images/s ({s['batch_ms']:.1f} ms/batch)",
        f"{sw['seconds_per_volume']:.2f} s/volume" if sw else "-",
    ]


def _pipeline_rows(pipe: dict) -> list[list]:
    dvc, runs = pipe.get("dvc", {}), pipe.get("stages", {}).get("runs", {})
    rows = []
    if "full_repro" in dvc:
        r = dvc["full_repro"]
        rows.append(["dvc repro from scratch", f"{r['seconds']:.0f}", f"{r['peak_rss_gib']:.2f}"])
    labels = {"commit_s": "dvc commit (fills the copy's cache)", "status_s": "dvc status"}
    labels["noop_repro_s"] = "dvc repro, nothing to do"
    rows += [[label, _fmt(dvc[k], ".1f"), ""] for k, label in labels.items() if k in dvc]
    for k, v in runs.items():
        label = f"stage {k}" + (f" ({v['note']})" if "note" in v else "")
        rows.append([label, f"{v['seconds']:.1f}", f"{v['peak_rss_gib']:.2f}"])
    if "estimate" in pipe:
        e = pipe["estimate"]
        parts = ", ".join(f"{k} {v:g}" for k, v in e["parts"].items())
        rows.append([f"default pipeline, ESTIMATE: {parts}", f"{e['seconds']:.0f}", ""])
    return rows


def markdown(res: dict) -> str:
    """``metrics/bench.md``: the tables the README includes."""
    m = res["machine"]
    lines = [
        f"`make bench` took {res['seconds']:.0f} s on {m['cpus']} CPU cores ({m['threads']} "
        f"torch threads, torch {m['torch']}, fp32 matmul {m['matmul_gflops']:.0f} GFLOP/s); "
        f"1-minute load average {m['load_start']:.1f} at the start, {m['load_end']:.1f} at the "
        "end (other processes on the machine inflate wall times)."
    ]
    met = {True: "yes", False: "**no**", None: "n/a"}
    targets = [
        [
            t["target"],
            f"{t['limit']:g}",
            _fmt(t["value"]),
            met[t["met"]],
            _fmt(t["ratio"]),
            t["note"],
        ]
        for t in res["targets"]
    ]
    lines += _table(["target", "limit", "value", "met", "value / limit", "note"], targets)
    header = ["method", "ms/step", "CPU ms", "x supervised", "intrinsic x", "waste"]
    header += ["passes declared", "passes measured", "FLOP x sup.", "GFLOP/s", "top ops (% CPU)"]
    for task, rows in res.get("methods", {}).items():
        lines += [
            "",
            f"**{task}** ({res['settings']['batches'][task]}), one fixed batch. ms/step: fastest "
            f"of {rows[0]['steps_timed']['default_threads']} steps, default threads. CPU ms: "
            f"median CPU time of {rows[0]['steps_timed']['one_thread']} steps on one thread; "
            "x supervised and waste (= x supervised / intrinsic x) use it. "
            "Passes: images forwarded / back-propagated per step, declared and measured by hooks "
            "(with grad + without); cost model forward 1, backward 2 per image.",
        ]
        lines += _table(header, [_method_row(r) for r in rows])
    if res.get("data"):
        header = ["data", "preprocess stage", "MONAI Dataset (no cache)", "CacheDataset"]
        header += ["training stream", "sliding window"]
        lines += _table(header, [_data_row(t, d) for t, d in res["data"].items()])
    rows = _pipeline_rows(res.get("pipeline", {}))
    if rows:
        lines += _table(["pipeline", "seconds", "peak RSS GiB"], rows)
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import monai

    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    times = [_timed(lambda: a @ b)[1] for _ in range(6)][1:]
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few steps and items (tests)")
    p.add_argument("--pipeline", action="store_true", help="also time a full dvc repro (~9 min)")
    workdir = "a folder with params.yaml (data/ made if missing) to use instead of a copy of "
    p.add_argument("--workdir", type=Path, help=workdir + "the repository; no DVC timings")
    p.add_argument("--sections", default="methods,data,pipeline", help="comma-separated subset")
    p.add_argument("--out", type=Path, default=Path("metrics"), help="folder for bench.json/.md")
    args = p.parse_args(argv)
    sections, size = set(args.sections.split(",")), SIZES["quick" if args.quick else "default"]
    root, began = Path.cwd(), time.perf_counter()
    res: dict = {"machine": machine(), "settings": {"quick": args.quick, "pipeline": args.pipeline}}
    with tempfile.TemporaryDirectory(prefix="semimed-bench-") as tmp:
        env = _env(Path(tmp))
        work = args.workdir.resolve() if args.workdir else Path(tmp) / "repo"
        pipe: dict = {}
        if not args.workdir:
            pipe["copied_outputs"] = len(copy_repo(root, work, env))
            if "pipeline" in sections:
                pipe["dvc"] = bench_dvc(work, env, size["repeats"], args.pipeline)
        cfgs = {t: load_task(t, work / "params.yaml") for t in TASKS}
        missing = any(not (work / "data" / t / "splits.json").is_file() for t in TASKS)
        if "pipeline" in sections or missing:
            runs = "pipeline" in sections
            pipe["stages"] = bench_stages(work, root / "stages", env, cfgs, args.quick, runs)
        if "pipeline" in sections and "full_repro" not in pipe.get("dvc", {}):
            pipe["estimate"] = estimate_pipeline(work, cfgs, pipe["stages"], pipe.get("dvc", {}))
        res["pipeline"] = pipe
        res["settings"]["batches"] = {t: _batch_line(c) for t, c in cfgs.items()}
        data = {}
        for t, c in cfgs.items():
            folder = work / "data" / t
            data[t] = load_task_data(c, folder / "processed", folder / "splits.json")
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
