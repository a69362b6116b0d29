"""Training methods by task and name: ``METHODS["classification"]["fixmatch"]``.

Each task's registry is the explicit ``METHODS`` dict of its package
(`semimed.methods.classification`, `semimed.methods.segmentation`), imported on first use, so
that one task's code never depends on the other task's methods (a change to a segmentation
method does not re-run classification stages). Adding a method = one file under
``classification/`` or ``segmentation/``, one entry in that package's ``METHODS``, one test
and one params block.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from semimed.methods.base import Method

PACKAGES = {
    "classification": "semimed.methods.classification",
    "segmentation": "semimed.methods.segmentation",
}


class _Registry(Mapping):
    """task -> {name: Method class}; a task's package is imported when first asked for."""

    def __getitem__(self, task: str) -> dict[str, type[Method]]:
        if task not in PACKAGES:
            raise KeyError(task)
        return importlib.import_module(PACKAGES[task]).METHODS

    def __iter__(self) -> Iterator[str]:
        return iter(PACKAGES)

    def __len__(self) -> int:
        return len(PACKAGES)


METHODS: Mapping[str, dict[str, type[Method]]] = _Registry()


def get_method(task: str, name: str) -> type[Method]:
    """The Method class registered for ``task`` under ``name``; ValueError lists valid choices."""
    if task not in METHODS:
        raise ValueError(f"unknown task '{task}'; choose one of: {', '.join(METHODS)}")
    if name not in METHODS[task]:
        choices = ", ".join(METHODS[task])
        raise ValueError(f"unknown {task} method '{name}'; choose one of: {choices}")
    return METHODS[task][name]


__all__ = ["METHODS", "PACKAGES", "Method", "get_method"]
