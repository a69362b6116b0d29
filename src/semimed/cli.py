"""What every stage script shares: argument parsing and one-line errors (paths: `paths`).

Importing it marks a stage process: MONAI's first import in it skips MONAI's eager load of
every subpackage (`semimed.monai_import`; ~2.5 s of start-up). Stage scripts import it before
any module that imports MONAI (``from semimed import cli, ...`` comes first). `main` keeps
freed memory in the process (`semimed.heap`) before it runs the stage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from semimed import heap, monai_import
from semimed.config import TASKS, ConfigError

monai_import.install()


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
    heap.keep_freed_memory()  # CPU steps reuse freed blocks instead of faulting in new pages
    try:
        fn()
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
