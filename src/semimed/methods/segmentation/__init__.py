"""Segmentation methods, one file each; registered in ``semimed.methods.METHODS``."""

from semimed.methods.segmentation.cps import CrossPseudoSupervision
from semimed.methods.segmentation.dhc import DHC
from semimed.methods.segmentation.mean_teacher import MeanTeacher
from semimed.methods.segmentation.supervised import Supervised, SupervisedFull

__all__ = ["DHC", "CrossPseudoSupervision", "MeanTeacher", "Supervised", "SupervisedFull"]
