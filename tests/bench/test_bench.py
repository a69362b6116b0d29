"""The benchmark (`benchmarks.bench`) on tiny settings: every method's declared intrinsic cost
(`Method.intrinsic_passes`) is what its forward hooks count, bench.json / bench.md hold every section with finite positive
numbers, and the pipeline helpers work on toy inputs."""

from __future__ import annotations

import copy
import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, merge
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench, pipeline, steps, table
from semimed import build
from semimed.methods import METHODS
from semimed.networks import DataShape, output_layer
from semimed.networks.segmentation import build_unet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, default_params):
    """A folder with tiny params and the data stages' outputs (run in this process: fast)."""
    work = tmp_path_factory.mktemp("bench")
    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    params["segmentation"]["network"]["channels"] = [4, 8, 16]  # URPC needs 3 levels
    for task in bench.TASKS:
        params[task]["train"]["steps"] = 100  # SimCLR stays in its pretraining phase
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        for task in bench.TASKS:
            for stage in ("ingest", "preprocess", "split"):
                mp.setattr(sys, "argv", [stage, "--task", task])
                runpy.run_path(str(ROOT / "stages" / f"{stage}.py"), run_name="__main__")
    return work


@pytest.fixture(scope="module")
def result(workdir):
    out = workdir / "metrics"
    sections = "methods,data,predict"
    args = ["--quick", "--workdir", str(workdir), "--sections", sections, "--out", str(out)]
    return bench.main(args)


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_every_registered_method_declares_its_cost(tiny):
    for task, methods in METHODS.items():
        cfg = tiny(task)
        b, u = cfg.train.batch_size, cfg.train.batch_size * cfg.train.unlabeled_ratio
        for name, cls in methods.items():
            declared = steps.intrinsic_cost(cls, build.method_params(cfg, cls), b, u)
            assert declared is not None and declared["why"], (task, name)
            assert declared["fwd"] > 0 and declared["bwd"] > 0, (task, name, declared)
        assert steps.intrinsic_cost(methods["supervised"], None, b, u)["cost"] == 1.0


def test_measured_passes_are_the_declared_ones(result):
    """Hooks count what each method really runs: a repeated forward pass or a teacher with
    autograd would show here as a mismatch with `Method.intrinsic_passes`."""
    for task, rows in result["methods"].items():
        assert [r["method"] for r in rows] == list(METHODS[task])
        for r in rows:
            p, declared = r["measured_passes"], r["intrinsic"]
            measured = (p["fwd_grad"] + p["fwd_no_grad"], p["bwd"])
            assert measured == (declared["fwd"], declared["bwd"]), (task, r["method"])
            for key in ("step_ms", "cpu_ms_1_thread", "ratio", "waste", "gflop", "flop_ratio"):
                assert _positive(r[key]), (task, r["method"], key, r[key])
        assert next(r for r in rows if r["method"] == "supervised")["ratio"] == 1.0


def test_side_layers_are_priced_at_their_flops(result):
    """DST's pseudo and worst-case heads (copies of the output layer) are declared as side
    layers: the declared cost is the pair's 4 passes at 1 + 2 * the layer's share of a pass,
    and the FLOPs it measures over CPS's (the same pair without heads) are that factor."""
    rows = {r["method"]: r for r in result["methods"]["segmentation"]}
    side = rows["dst"]["intrinsic"]["side_layers"]
    assert side["count"] == 2 and 0 < side["share"] < 1
    factor = 1 + 2 * side["share"]
    assert rows["dst"]["intrinsic"]["cost"] == pytest.approx(
        rows["cps"]["intrinsic"]["cost"] * factor, rel=1e-2
    )
    measured = rows["dst"]["flop_ratio"] / rows["cps"]["flop_ratio"]
    assert measured == pytest.approx(factor, rel=0.05)
    assert all("side_layers" not in r["intrinsic"] for name, r in rows.items() if name != "dst")


def test_output_layer_share_of_a_unet():
    """The share is the output layer's FLOPs over the network's, forward + backward: for a
    transposed-convolution output layer, forward FLOPs = 2 * in * out * k^3 * input voxels."""
    net = build_unet(DataShape.single(3, 1, 3), channels=[4, 8], dropout=0)
    x = torch.randn(2, 1, 16, 16, 16)
    share = steps.output_layer_share(net, x)
    layer = output_layer(net)
    assert isinstance(layer, torch.nn.ConvTranspose3d) and layer.out_channels == 3
    layer_fwd = 2 * layer.in_channels * 3 * 27 * 2 * 8**3  # its input: 8^3 voxels, 2 crops
    with FlopCounterMode(display=False) as whole:
        net(x).sum().backward()
    assert share == pytest.approx(3 * layer_fwd / whole.get_total_flops(), rel=1e-6)
    assert 0 < share < 1


def test_json_and_markdown_hold_every_section(result, workdir):
    saved = json.loads((workdir / "metrics" / "bench.json").read_text())
    assert {"machine", "settings", "methods", "data", "targets", "seconds"} <= set(saved)
    assert saved["machine"]["cpus"] >= 1 and _positive(saved["machine"]["matmul_gflops"])
    for d in saved["data"].values():
        assert _positive(d["preprocess"]["per_s"]) and _positive(d["train_stream"]["images_per_s"])
        assert _positive(d["monai_dataset"]["no_cache_per_s"])
        assert _positive(d["monai_dataset"]["cached_per_s"])
    assert _positive(saved["data"]["segmentation"]["sliding_window"]["seconds_per_volume"])
    waste = next(t for t in saved["targets"] if t["target"].startswith("method time"))
    assert isinstance(waste["met"], bool) and _positive(waste["ratio"])
    md = (workdir / "metrics" / "bench.md").read_text()
    assert "| target |" in md and "| fixmatch |" in md and "| dst |" in md


def test_predict_throughput_per_task(result, workdir):
    """`semimed predict` on the test files: images/s and volumes/s with a default-network
    model folder (untrained here: the copy has no trained run)."""
    for task, unit in (("classification", "images"), ("segmentation", "volumes")):
        p = result["predict"][task]
        assert p["unit"] == unit and p["items"] >= 1 and _positive(p["per_s"]), p
        assert p["model"].startswith(("cnn", "unet")) and "untrained" in p["model"]
    md = (workdir / "metrics" / "bench.md").read_text()
    assert "| predict (CPU) |" in md and "volumes/s" in md and "images/s" in md


def test_startup_times_each_script_and_checks_the_targets(tmp_path):
    """A stage without torch and one with it: timed, their heavy imports named, and each
    checked against its own start-up limit."""
    from benchmarks import startup

    (tmp_path / "light.py").write_text("import json\n")
    (tmp_path / "heavy.py").write_text("import torch\n")
    out = startup.bench_startup(tmp_path, tmp_path, repeats=3)
    assert set(out) == {"python", "light", "heavy"}
    assert out["light"]["imports"] == [] and "torch" in out["heavy"]["imports"]
    assert 0 < out["python"]["seconds"] and out["light"]["seconds"] < out["heavy"]["seconds"]
    for entry in out.values():  # the fastest of the runs, the median beside it
        assert entry["runs"] == 3 and 0 < entry["seconds"] <= entry["median"]
    rows = {t["target"]: t for t in table.check_targets({"startup": out})}
    light, heavy = rows["stage start-up without torch (s)"], rows["stage start-up with torch (s)"]
    assert light["note"] == "slowest: light (fastest of 3 runs)"
    assert heavy["note"] == "slowest: heavy (fastest of 3 runs)"
    assert light["limit"] == 1.0 and heavy["limit"] == 2.5
    assert light["value"] == out["light"]["seconds"]
    machine = dict(cpus=2, threads=2, torch="x", matmul_gflops=1.0, load_start=0.0, load_end=0.0)
    md = table.markdown({"targets": [], "seconds": 1.0, "machine": machine, "startup": out})
    assert "| stage start-up (`--help`) | fastest s | median s | heavy imports |" in md
    assert f"| heavy | {out['heavy']['seconds']:.2f} | {out['heavy']['median']:.2f} |" in md


def test_run_measured_reports_peak_memory(tmp_path):
    code = "b = b'x' * (200 * 2**20); print('done')"
    run = pipeline.run_measured([sys.executable, "-c", code], tmp_path)
    assert run["rc"] == 0 and "done" in run["output"]
    assert 0.19 < run["peak_rss_gib"] < 2 and run["seconds"] > 0


def test_copy_repo_takes_git_files_and_dvc_outputs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "data" / "out").mkdir(parents=True)
    (src / "data" / "out" / "f.npy").write_text("x")
    (src / ".gitignore").write_text("/data/\n")
    (src / "tracked.txt").write_text("t")
    (src / "dvc.lock").write_text(
        yaml.safe_dump({"stages": {"s": {"outs": [{"path": "data/out"}]}}})
    )
    env = pipeline.isolated_env(tmp_path)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=src, env=env, check=True, capture_output=True)
    (src / "untracked.txt").write_text("u")
    assert pipeline.copy_repo(src, dst, env) == ["data/out"]
    for rel in ("tracked.txt", "untracked.txt", "dvc.lock", "data/out/f.npy", ".git"):
        assert (dst / rel).exists(), rel


def test_estimate_and_targets_say_what_is_missed(tmp_path, tiny):
    cfg = tiny("segmentation")
    run = tmp_path / "models" / "segmentation" / cfg.methods[0] / f"seed{cfg.seeds[0]}"
    run.mkdir(parents=True)
    (run / "train.json").write_text(json.dumps({"seconds": 30.0}))
    train = {"seconds": 12.0, "peak_rss_gib": 1.5}
    evaluate = {"seconds": 13.0, "peak_rss_gib": 4.5}  # start-up 10 s + scoring 3 s
    runs = {"ingest segmentation": {"seconds": 5.0, "peak_rss_gib": 0.9}}
    runs.update({"train segmentation/x": train, "evaluate segmentation/x": evaluate})
    probe = {"train": train, "evaluate": evaluate, "loop_s": 2.0}
    stages = {"runs": runs, "train_eval": {"segmentation": probe}}
    est = pipeline.estimate_pipeline(tmp_path, {"segmentation": cfg}, stages, {"noop_repro_s": 4.0})
    n = len(cfg.methods) * len(cfg.seeds)  # one run recorded: the others count as its 30 s
    assert est["unrecorded"] == n - 1 and est["startup_s"]["segmentation"] == 10.0
    assert est["parts"]["train segmentation"] == n * (30.0 + 10.0)
    assert est["parts"]["evaluate segmentation"] == 10.0 + n * 3.0  # one stage, one start-up
    assert est["seconds"] == 5.0 + est["parts"]["train segmentation"] + 10.0 + n * 3.0 + 4.0

    dvc = {"noop_repro_s": 4.0, "note": "median"}
    pipe = {"dvc": dvc, "stages": stages, "estimate": est}
    methods = {"segmentation": [{"method": "a", "waste": 1.5}, {"method": "b", "waste": 0.9}]}
    rows = {t["target"]: t for t in table.check_targets({"methods": methods, "pipeline": pipe})}
    waste = rows["method time / intrinsic cost"]
    assert waste["met"] is False and "segmentation/a 1.50x" in waste["note"]
    assert rows["no-op dvc repro (s)"]["ratio"] == pytest.approx(4 / 2, abs=1e-3)
    memory = rows["peak resident memory of train/evaluate (GiB)"]
    assert memory["met"] is False and memory["note"] == "evaluate segmentation/x"
    assert "ESTIMATE" in rows["default pipeline (s)"]["note"]

    machine = dict(cpus=2, threads=2, torch="x", matmul_gflops=1.0, load_start=0.0, load_end=0.0)
    res = {"targets": list(rows.values()), "seconds": 1.0, "machine": machine, "pipeline": pipe}
    md = table.markdown(res)
    assert "| no-op dvc repro (s) | 2 | 4.00 | **no** | 2.00 |" in md
    assert "| stage evaluate segmentation/x | 13.0 | 4.50 |" in md and "ESTIMATE" in md


def test_gpu_params_merge_preset_then_overrides(tmp_path, default_params):
    """Hydra's `# @package _global_` preset, then --overrides (dotted keys too); other
    top-level keys (defaults, preset) are not params."""
    from benchmarks import gpu

    preset = tmp_path / "gpu.yaml"
    preset.write_text(
        "# @package _global_\npreset: gpu\nsegmentation:\n  train:\n    patch_size: [96, 96, 96]\n"
        "    batch_size: 2\n"
    )
    over = tmp_path / "over.yaml"
    over.write_text("segmentation.train.batch_size: 5\nclassification:\n  network: {name: cnn}\n")
    params = gpu.gpu_params(default_params, over, preset)
    assert params["segmentation"]["train"]["steps"] >= gpu.MIN_STEPS
    assert params["segmentation"]["train"]["patch_size"] == [96, 96, 96]
    assert params["segmentation"]["train"]["batch_size"] == 5
    assert params["segmentation"]["train"]["lr"] == default_params["segmentation"]["train"]["lr"]
    assert "preset" not in params and default_params["segmentation"]["train"]["batch_size"] == 2
    shipped = gpu.gpu_params(default_params)  # conf/preset/gpu.yaml
    assert shipped["classification"]["network"]["name"] == "resnet18"
    assert gpu.PEAKS["H200"] == gpu.PEAKS["H100"] == 989e12


def test_gpu_mode_runs_on_cpu_with_tiny_sizes(tmp_path):
    """`--preset gpu --device cpu` end to end: the data stages at the merged sizes, each
    method's streamed and fixed-batch step, the stream alone, FLOPs; no bf16 peak on a CPU."""
    over = copy.deepcopy(TINY)
    over["segmentation"]["network"]["channels"] = [4, 8, 16]  # URPC needs 3 levels
    over["classification"]["network"]["name"] = "cnn"  # the preset's resnet18 is slow on CPU
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(over))
    args = ["--preset", "gpu", "--device", "cpu", "--quick", "--overrides"]
    args += [str(tmp_path / "tiny.yaml"), "--methods", "supervised,mean_teacher,cps"]
    args += ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    res = bench.main(args)
    assert res["device"].startswith("CPU") and res["bf16_peak_tflops"] is None
    seg = res["tasks"]["segmentation"]
    assert [r["method"] for r in seg["methods"]] == ["supervised", "mean_teacher", "cps"]
    assert "16x16x16" in seg["sizes"]
    cls = res["tasks"]["classification"]["methods"]
    assert [r["method"] for r in cls] == ["supervised", "mean_teacher"]  # cps: not registered
    for r in seg["methods"] + cls:
        for key in ("step_ms", "fixed_batch_ms", "stream_ms", "gflop"):
            assert _positive(r[key]), (r["method"], key, r)
        assert 0.0 <= r["data_share"] < 1.0 and r["peak_share"] is None
        assert r["prefetch"] == 2 and r["first_step_s"] > 0  # the gpu preset prefetches
        # On a CPU the optimizer is not fused: its step reads the finite flag back (1 sync).
        assert r["host_syncs"] >= 1 and r["sync_free_optimizer"] is False
    md = (tmp_path / "out" / "bench_gpu.md").read_text()
    assert "GPU bench mode on **CPU" in md and "| cps |" in md and "n/a |" in md
    assert "host syncs/step" in md
    saved = json.loads((tmp_path / "out" / "bench_gpu.json").read_text())
    assert saved["tasks"]["segmentation"]["methods"][2]["gflop"] > seg["methods"][0]["gflop"]
