"""Classification methods, one file each; registered in ``semimed.methods.METHODS``."""

from semimed.methods.classification.fixmatch import FixMatch
from semimed.methods.classification.mean_teacher import MeanTeacher
from semimed.methods.classification.pseudo_label import PseudoLabel
from semimed.methods.classification.supervised import Supervised, SupervisedFull

__all__ = ["FixMatch", "MeanTeacher", "PseudoLabel", "Supervised", "SupervisedFull"]
