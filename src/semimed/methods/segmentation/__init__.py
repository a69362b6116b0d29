"""Segmentation methods, one file each; registered in ``semimed.methods.METHODS``."""

from semimed.methods.segmentation.mean_teacher import MeanTeacher
from semimed.methods.segmentation.supervised import Supervised, SupervisedFull

__all__ = ["MeanTeacher", "Supervised", "SupervisedFull"]
