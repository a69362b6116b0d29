"""The benchmark's targets and ``metrics/bench.md``: each target met or not, then Markdown
tables of the methods, data and pipeline sections of ``metrics/bench.json``; `batch_line`,
the sizes a task's tables name (bench.md and the GPU mode's bench_gpu.md)."""

from __future__ import annotations

# Limits: default dvc repro seconds, method time / intrinsic cost, no-op dvc repro seconds,
# peak resident memory (GiB) of a train or evaluate stage, start-up seconds of a stage script
# without torch and of one with torch.
TARGETS = {
    "pipeline_s": 300.0,
    "waste": 1.1,
    "noop_repro_s": 2.0,
    "peak_rss_gib": 4.0,
    "startup_light_s": 1.0,
    "startup_torch_s": 2.5,
}


def batch_line(cfg) -> str:
    """The network and batch of a task's config in words, e.g. ``unet [16, 32, 64, 128],
    32x32x32, 2 labeled + 2 unlabeled``."""
    t, n = cfg.train, cfg.network
    shape = "x".join(map(str, t.patch_size or (cfg.preprocess.image_size,) * 2))
    unlabeled = t.batch_size * t.unlabeled_ratio
    return f"{n.name} {list(n.channels)}, {shape}, {t.batch_size} labeled + {unlabeled} unlabeled"


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
    startup = {k: v for k, v in res.get("startup", {}).items() if k != "python"}
    for key, torch, what in (
        ("startup_light_s", False, "without"),
        ("startup_torch_s", True, "with"),
    ):
        group = [
            (v["seconds"], k) for k, v in startup.items() if ("torch" in v["imports"]) == torch
        ]
        if group:
            value, name = max(group)
            n = startup[name].get("runs")
            note = f"slowest: {name}" + (f" (fastest of {n} runs)" if n else "")
            add(f"stage start-up {what} torch (s)", key, value, note)
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
    left = ("method", "target", "note", "passes", "top", "data", "pipeline", "met", "predict")
    left += ("stage", "heavy", "model", "items")
    align = ["---" if h.startswith(left) else "---:" for h in header]
    lines = ["", "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def _median(entry: dict) -> str:
    """A start-up entry's median, ``-`` for an entry without one."""
    return f"{entry['median']:.2f}" if "median" in entry else "-"


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
        _declared(i),
        f"{p['fwd_grad']}+{p['fwd_no_grad']} / {p['bwd']}",
        _fmt(r["flop_ratio"]),
        _fmt(r["ratio"] / r["flop_ratio"] if r["flop_ratio"] else None),
        f"{r['gflops_per_s']:.0f}",
        ", ".join(f"{name} {share}" for name, share in r["top_ops"]),
    ]


def _declared(i: dict | None) -> str:
    if not i:
        return "undeclared"
    side = i.get("side_layers")
    extra = f" (+ {side['count']} x {side['share']:.2f} side layers)" if side else ""
    return f"{i['fwd']} / {i['bwd']}{extra}"


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
    header += ["passes declared", "passes measured", "FLOP x sup.", "x sup. / FLOP x sup."]
    header += ["GFLOP/s", "top ops (% CPU)"]
    for task, rows in res.get("methods", {}).items():
        lines += [
            "",
            f"**{task}** ({res['settings']['batches'][task]}), one fixed batch. ms/step: fastest "
            f"of {rows[0]['steps_timed']['default_threads']} steps, default threads. CPU ms: "
            f"median CPU time of {rows[0]['steps_timed']['one_thread']} steps on one thread; "
            "x supervised and waste (= x supervised / intrinsic x) use it. "
            "Passes: images forwarded / back-propagated per step, declared and measured by hooks "
            "(with grad + without); cost model forward 1, backward 2 per image; a method "
            "that trains copies of the network's output layer on every pass (DST's pseudo and "
            "worst-case heads: side layers) pays each at the output layer's share of a pass's "
            "FLOPs. x sup. / FLOP x sup.: the time ratio against the ratio of convolution and "
            "matmul FLOPs (`FlopCounterMode`), which leaves out element-wise work (URPC's loss "
            "on three full-size outputs).",
        ]
        lines += _table(header, [_method_row(r) for r in rows])
    if res.get("data"):
        header = ["data", "preprocess stage", "MONAI Dataset (no cache)", "CacheDataset"]
        header += ["training stream", "sliding window"]
        lines += _table(header, [_data_row(t, d) for t, d in res["data"].items()])
    if res.get("predict"):
        rows = [
            [
                t,
                f"{p['per_s']:.2f} {p['unit']}/s",
                f"{p['items']} in {p['seconds']:.1f} s",
                p["model"],
            ]
            for t, p in res["predict"].items()
        ]
        lines += _table(["predict (CPU)", "throughput", "items", "model folder"], rows)
    if res.get("startup"):
        rows = [
            [k, f"{v['seconds']:.2f}", _median(v), ", ".join(v["imports"]) or "-"]
            for k, v in res["startup"].items()
        ]
        head = ["stage start-up (`--help`)", "fastest s", "median s", "heavy imports"]
        lines += _table(head, rows)
    rows = _pipeline_rows(res.get("pipeline", {}))
    if rows:
        lines += _table(["pipeline", "seconds", "peak RSS GiB"], rows)
    return "\n".join(lines) + "\n"
