"""Segmentation methods, one file each, and their registry ``METHODS`` (name -> class).

Keys equal each class's ``name``; ``semimed.methods.METHODS["segmentation"]`` is this dict."""

from semimed.methods.segmentation.acisis import AcISIS
from semimed.methods.segmentation.adsh import Adsh
from semimed.methods.segmentation.cld import CLD
from semimed.methods.segmentation.cps import CrossPseudoSupervision
from semimed.methods.segmentation.crest import CReST
from semimed.methods.segmentation.depl import DePL
from semimed.methods.segmentation.dhc import DHC
from semimed.methods.segmentation.dst import DST
from semimed.methods.segmentation.mean_teacher import MeanTeacher
from semimed.methods.segmentation.simis import SimiS
from semimed.methods.segmentation.ssnet import SSNet
from semimed.methods.segmentation.supervised import Supervised, SupervisedFull
from semimed.methods.segmentation.uamt import UAMT
from semimed.methods.segmentation.urpc import URPC

METHODS = {
    "supervised": Supervised,
    "supervised_full": SupervisedFull,
    "mean_teacher": MeanTeacher,
    "uamt": UAMT,
    "cps": CrossPseudoSupervision,
    "urpc": URPC,
    "dhc": DHC,
    "crest": CReST,
    "simis": SimiS,
    "depl": DePL,
    "adsh": Adsh,
    "cld": CLD,
    "dst": DST,
    "ssnet": SSNet,
    "acisis": AcISIS,
}

__all__ = [
    "METHODS",
    "DHC",
    "UAMT",
    "URPC",
    "Adsh",
    "CReST",
    "DePL",
    "SimiS",
    "CLD",
    "DST",
    "SSNet",
    "AcISIS",
    "CrossPseudoSupervision",
    "MeanTeacher",
    "Supervised",
    "SupervisedFull",
]
