"""What every stage script shares: argument parsing and one-line errors (paths: `paths`).

Importing it makes the process a semimed stage process (`semimed.process.start`: MONAI's
light import, freed memory kept), so stage scripts import it before any module that imports
MONAI (``from semimed import cli, ...`` comes first).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from semimed import process
from semimed.config import TASKS, ConfigError

process.start()


def parser(description: str, run: bool = False, task: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    if task:
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
