"""CPU cost of every classification network at the pipeline's default input.

Each network is built as the pipeline builds it (48x48 frames, 1 channel, 5 classes; default
widths: cnn [8, 16, 32, 64], lwn [24, 48, 96, 192], the others ignore ``channels``) and timed:
inference latency at batch 1 and per-image time at batch 64 (eval, ``torch.inference_mode``,
after ``reparameterize``, which fuses lwn's branches), and one training step at batch 48
(forward + cross-entropy + backward, no optimizer step). Each time is the median of repeats
after a warm-up run. ``lwn (unfused)`` shows what fusing saves. The header records the load
average, as other processes inflate times.

    python benchmarks/networks.py --out benchmarks/networks.md [--threads 1 2] [--budget 0.5]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from semimed.networks import NETWORKS, Classifier, DataShape, build_network, reparameterize

SIDE, IN_CHANNELS, NUM_CLASSES = 48, 1, 5  # params.yaml: preprocess.image_size; view classes
DEFAULT_CHANNELS = {"cnn": [8, 16, 32, 64], "lwn": [24, 48, 96, 192]}


def median_seconds(fn: Callable[[], object], budget_s: float) -> float:
    """Median wall time of ``fn()`` after one warm-up run: at least 3 runs, more while the
    total stays within ``budget_s``."""
    fn()
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 200):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def classifiers() -> dict[str, Classifier]:
    """Every registered network that builds as a 2D ``Classifier`` (segmentation nets skipped)."""
    nets = {}
    for name in NETWORKS:
        net = build_network(
            name,
            DataShape.single(2, IN_CHANNELS, NUM_CLASSES),
            channels=DEFAULT_CHANNELS.get(name, DEFAULT_CHANNELS["cnn"]),
            dropout=0.1,
        )
        if isinstance(net, Classifier):
            nets[name] = net
    return nets


def train_step_ms(net: Classifier, budget_s: float) -> float:
    x, y = torch.rand(48, IN_CHANNELS, SIDE, SIDE), torch.randint(0, NUM_CLASSES, (48,))

    def step():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    net.train()
    return 1e3 * median_seconds(step, budget_s)


@torch.inference_mode()
def inference_ms(model: Classifier, budget_s: float) -> tuple[float, float]:
    """(latency at batch 1, time per image at batch 64), milliseconds."""
    model.eval()
    x1, x64 = torch.rand(1, IN_CHANNELS, SIDE, SIDE), torch.rand(64, IN_CHANNELS, SIDE, SIDE)
    b1 = median_seconds(lambda: model(x1), budget_s)
    b64 = median_seconds(lambda: model(x64), budget_s)
    return 1e3 * b1, 1e3 * b64 / 64


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.inference_mode()
def mega_macs(model: Classifier) -> float:
    """Multiply-accumulates per image, millions (torch's FLOP counter / 2); load-independent."""
    with FlopCounterMode(display=False) as counter:
        model(torch.rand(1, IN_CHANNELS, SIDE, SIDE))
    return counter.get_total_flops() / 2e6


def table(threads: int, budget_s: float) -> str:
    torch.set_num_threads(threads)
    rows = [
        "| network | parameters | inference parameters | MMACs/image | batch 1: ms/image "
        "| batch 64: ms/image | batch 64: images/s | train step, batch 48: ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, net in classifiers().items():
        torch.manual_seed(0)
        fused = reparameterize(copy.deepcopy(net))
        variants = [(name, fused, f"{train_step_ms(net, budget_s):.0f}")]
        if _count(fused) != _count(net):
            variants.append((f"{name} (unfused)", net, "same"))
        for label, model, step in variants:
            b1, b64 = inference_ms(model, budget_s)
            rows.append(
                f"| {label} | {_count(net):,} | {_count(model):,} | {mega_macs(model):.1f} "
                f"| {b1:.2f} | {b64:.3f} "
                f"| {1e3 / b64:,.0f} | {step} |"
            )
    return f"### {threads} thread(s)\n\n" + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/networks.md"))
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[torch.get_num_threads()],
        help="torch CPU thread counts, one table each (default: torch's default)",
    )
    parser.add_argument(
        "--budget", type=float, default=0.3, help="seconds of repeats per measurement (>= 3 runs)"
    )
    args = parser.parse_args()
    start, load = time.perf_counter(), os.getloadavg()[0]
    tables = [table(t, args.budget) for t in args.threads]
    load = max(load, os.getloadavg()[0])
    cores = os.cpu_count() or 1
    busy = " (other processes competed for the CPU: times are inflated)" if load > cores else ""
    header = (
        f"# Classification networks on CPU: {SIDE}x{SIDE}x{IN_CHANNELS} input, "
        f"{NUM_CLASSES} classes\n\n"
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}; "
        "medians over repeats after warm-up; inference under `torch.inference_mode` after "
        "`reparameterize` (fuses lwn); train step = forward + cross-entropy + backward. "
        f"Written by `python benchmarks/networks.py` in {time.perf_counter() - start:.0f} s; "
        f"1-minute load average up to {load:.1f} on {cores} cores{busy}.\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + "\n".join(tables))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
