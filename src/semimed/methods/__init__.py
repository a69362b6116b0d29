"""Training methods by task and name: ``get_method("classification", "fixmatch")``.

Adding a method = one file under ``classification/`` or ``segmentation/``, one entry below,
one test and one params block. Keys equal each class's ``name``.
"""

from __future__ import annotations

from semimed.methods import classification, segmentation
from semimed.methods.base import Method

METHODS: dict[str, dict[str, type[Method]]] = {
    "classification": {
        "supervised": classification.Supervised,
        "supervised_full": classification.SupervisedFull,
        "fixmatch": classification.FixMatch,
        "mean_teacher": classification.MeanTeacher,
        "pseudo_label": classification.PseudoLabel,
        "mixmatch": classification.MixMatch,
        "freematch": classification.FreeMatch,
        "tear": classification.TEAR,
        "simclr": classification.SimCLR,
    },
    "segmentation": {
        "supervised": segmentation.Supervised,
        "supervised_full": segmentation.SupervisedFull,
        "mean_teacher": segmentation.MeanTeacher,
        "uamt": segmentation.UAMT,
        "cps": segmentation.CrossPseudoSupervision,
        "urpc": segmentation.URPC,
        "dhc": segmentation.DHC,
        "crest": segmentation.CReST,
        "simis": segmentation.SimiS,
        "depl": segmentation.DePL,
        "adsh": segmentation.Adsh,
        "cld": segmentation.CLD,
        "dst": segmentation.DST,
        "ssnet": segmentation.SSNet,
        "acisis": segmentation.AcISIS,
    },
}


def get_method(task: str, name: str) -> type[Method]:
    """The Method class registered for ``task`` under ``name``; ValueError lists valid choices."""
    if task not in METHODS:
        raise ValueError(f"unknown task '{task}'; choose one of: {', '.join(METHODS)}")
    if name not in METHODS[task]:
        choices = ", ".join(METHODS[task])
        raise ValueError(f"unknown {task} method '{name}'; choose one of: {choices}")
    return METHODS[task][name]


__all__ = ["METHODS", "Method", "get_method"]
