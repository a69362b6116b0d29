"""What every stage script shares: argument parsing, the path layout, one-line errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from semimed.config import TASKS, ConfigError


def data_dir(task: str, part: str) -> Path:
    """data/<task>/<part>: `ingested`, `processed` (folders) or `splits.json`."""
    return Path("data") / task / part


def run_dir(root: str, task: str, method: str, seed: int) -> Path:
    """<root>/<task>/<method>/seed<k>: one run's folder under models/ or plots/..."""
    return Path(root) / task / method / f"seed{seed}"


def parser(description: str, run: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    if run:
        p.add_argument("--method", required=True, help="registry name, e.g. fixmatch")
        p.add_argument("--seed", required=True, type=int, help="training seed")
    return p


def main(fn: Callable[[], None]) -> None:
    """Run a stage; bad params or data end it with one line naming the key or file."""
    try:
        fn()
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
