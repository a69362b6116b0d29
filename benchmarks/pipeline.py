"""The pipeline's time and memory (the ``pipeline`` section), in a scratch copy of the
repository (git's files and the outputs in ``dvc.lock``): ``dvc status`` and a no-op
``dvc repro``; the data stages, a shortened training and its evaluation per task, analyze and
report as subprocesses (wall time, peak resident memory). The default ``dvc repro`` time is
ESTIMATED from them and the recorded training seconds, or measured from scratch in the copy
with ``--pipeline``."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.steps import intrinsic_cost
from semimed import build, paths
from semimed.tasks import TASK_SPECS

GIB = 2.0**30


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


def isolated_env(tmp: Path) -> dict:
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


def heaviest_default(cfg) -> str:
    """The method of ``cfg.methods`` with the largest declared intrinsic cost."""
    b, u = cfg.train.batch_size, cfg.train.batch_size * cfg.train.unlabeled_ratio

    def cost(name):
        cls = build.method_class(cfg.task, name)
        declared = intrinsic_cost(cls, build.method_params(cfg, cls), b, u)
        return -1 if declared is None else declared["fwd"] + 2 * declared["bwd"]

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

    for task in TASK_SPECS:
        for name in ("ingest", "preprocess", "split"):
            stage(f"{name} {task}", name, "--task", task)
    if not runs:
        return out
    raw = yaml.safe_load((work / "params.yaml").read_text())
    for task in cfgs:
        raw[task]["train"].update(steps=2, warmup_steps=1, eval_every=2, checkpoint_every=2)
    (work / "params_bench.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for task, cfg in cfgs.items():
        method, seed = heaviest_default(cfg), max(cfg.seeds) + 1000  # no real run's folder
        run = f"{task}/{method}"
        args = ["--task", task, "--method", method, "--seed", str(seed)]
        args += ["--params", "params_bench.yaml"]
        train = stage(f"train {run}", "train", *args)
        loop = json.loads((work / paths.model_dir(task, method, seed) / "train.json").read_text())
        train["note"] = f"{loop['steps']} steps + validation: loop {loop['seconds']} s"
        # A trained model where the copy has one: scoring an untrained one's scattered voxels
        # (surface distances) takes several times longer than the pipeline's evaluations.
        trained = (work / paths.model_dir(task, method, cfg.seeds[0]) / "best.pt").is_file()
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
    stage (wall - loop of the two-step run); per task's evaluate stage one start-up plus, per
    run, the measured evaluation minus that start-up; DVC's no-op.
    A run without a record counts as its task's mean (``unrecorded`` says how many)."""
    measured = ("ingest", "preprocess", "split", "analyze", "report")
    runs = stages["runs"]
    parts = {k: v["seconds"] for k, v in runs.items() if k.startswith(measured)}
    startups, unrecorded = {}, 0
    for task, cfg in cfgs.items():
        probe = stages["train_eval"][task]
        startup = startups[task] = round(probe["train"]["seconds"] - probe["loop_s"], 2)
        matrix = [(m, s) for m in cfg.methods for s in cfg.seeds]
        files = [work / paths.model_dir(task, m, s) / "train.json" for m, s in matrix]
        loops = [json.loads(p.read_text())["seconds"] for p in files if p.is_file()]
        unrecorded += len(files) - len(loops)
        loops += [statistics.mean(loops) if loops else 0.0] * (len(files) - len(loops))
        parts[f"train {task}"] = sum(loops) + len(loops) * startup
        # one evaluate stage per task: one start-up, then each run's scoring
        scoring = max(0.0, probe["evaluate"]["seconds"] - startup)
        parts[f"evaluate {task}"] = startup + len(loops) * scoring
    parts["dvc no-op"] = dvc.get("noop_repro_s") or 0.0
    parts = {k: round(v, 1) for k, v in parts.items()}
    total = round(sum(parts.values()), 1)
    return {"seconds": total, "parts": parts, "startup_s": startups, "unrecorded": unrecorded}
