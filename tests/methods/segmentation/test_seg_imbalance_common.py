"""Checks parametrized over several of DHC's class-imbalance baselines (CReST ... AcISIS)."""

import pytest
from seg_helpers import fits_fixed_batch, make, make_batch
from seg_method_helpers import grads_reach

from semimed.methods.segmentation.acisis import AcISIS
from semimed.methods.segmentation.adsh import Adsh
from semimed.methods.segmentation.cld import CLD
from semimed.methods.segmentation.crest import CReST
from semimed.methods.segmentation.depl import DePL
from semimed.methods.segmentation.dst import DST
from semimed.methods.segmentation.simis import SimiS
from semimed.methods.segmentation.ssnet import SSNet

# CReST, SimiS, DePL and Adsh on CPS: batch A.
# DePL keeps only voxels whose debiased confidence reaches 0.9, which an untrained network
# never does; confidence 0 lets the gradient test see every voxel.
METHODS = [(CReST, {}), (SimiS, {}), (DePL, {"confidence": 0.0}), (Adsh, {})]
# CLD, DST, SS-Net and AcISIS (Basak et al.): batch B.
BATCH_B = [CLD, DST, SSNet, AcISIS]


@pytest.mark.parametrize("cls,params", METHODS)
def test_unsup_term_nonzero_and_reaches_both_networks(cls, params):
    method = make(cls, **params)
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    for net in (method.net, method.net2):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("cls,params", METHODS)
def test_fits_a_fixed_batch(cls, params):
    assert fits_fixed_batch(make(cls, **params))


def test_dhc_defaults_of_weight_and_rampup():
    """DHC's published protocol (-w 0.1 -r) for every baseline: weight 0.1, ramp over the run."""
    got = {cls: (cls.Params().cps_weight, cls.Params().rampup) for cls, _ in METHODS}
    assert got == {CReST: (0.1, 1.0), SimiS: (0.1, 1.0), DePL: (0.1, 1.0), Adsh: (0.1, 1.0)}


@pytest.mark.parametrize("cls", BATCH_B)
def test_unsup_term_nonzero_and_reaches_every_trained_network(cls):
    method = make(cls)
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    trained = [method.net] + [
        getattr(method, k) for k in ("net2", "projection") if hasattr(method, k)
    ]
    for module in trained:
        assert grads_reach(module), type(module).__name__
