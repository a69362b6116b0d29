"""Classification methods, one file each, and their registry ``METHODS`` (name -> class).

Keys equal each class's ``name``; ``semimed.methods.METHODS["classification"]`` is this dict."""

from semimed.methods.classification.fixmatch import FixMatch
from semimed.methods.classification.freematch import FreeMatch
from semimed.methods.classification.mean_teacher import MeanTeacher
from semimed.methods.classification.mixmatch import MixMatch
from semimed.methods.classification.pseudo_label import PseudoLabel
from semimed.methods.classification.simclr import SimCLR
from semimed.methods.classification.supervised import Supervised, SupervisedFull
from semimed.methods.classification.tear import TEAR

METHODS = {
    "supervised": Supervised,
    "supervised_full": SupervisedFull,
    "fixmatch": FixMatch,
    "mean_teacher": MeanTeacher,
    "pseudo_label": PseudoLabel,
    "mixmatch": MixMatch,
    "freematch": FreeMatch,
    "tear": TEAR,
    "simclr": SimCLR,
}

__all__ = [
    "METHODS",
    "TEAR",
    "FixMatch",
    "FreeMatch",
    "MeanTeacher",
    "MixMatch",
    "PseudoLabel",
    "SimCLR",
    "Supervised",
    "SupervisedFull",
]
