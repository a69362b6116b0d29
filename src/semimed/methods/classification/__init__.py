"""Classification methods, one file each; registered in ``semimed.methods.METHODS``."""

from semimed.methods.classification.fixmatch import FixMatch
from semimed.methods.classification.freematch import FreeMatch
from semimed.methods.classification.mean_teacher import MeanTeacher
from semimed.methods.classification.mixmatch import MixMatch
from semimed.methods.classification.pseudo_label import PseudoLabel
from semimed.methods.classification.simclr import SimCLR
from semimed.methods.classification.supervised import Supervised, SupervisedFull
from semimed.methods.classification.tear import TEAR

__all__ = [
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
