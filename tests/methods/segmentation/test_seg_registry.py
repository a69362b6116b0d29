"""The segmentation registry, base-class checks and checks shared by several methods."""

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet

from semimed.methods import METHODS, get_method
from semimed.methods.losses import add_unsup_ratio
from semimed.methods.segmentation import (
    DHC,
    CrossPseudoSupervision,
    MeanTeacher,
    Supervised,
    SupervisedFull,
)


def test_registry_names_and_flags():
    registry = METHODS["segmentation"]
    # Every method of the segmentation suite (DHC and its baselines), in priority order.
    suite = ["uamt", "cps", "urpc", "dhc", "crest", "simis", "depl", "adsh", "cld", "dst"]
    assert [m for m in registry if m in suite + ["ssnet", "acisis"]] == suite + ["ssnet", "acisis"]
    assert registry["supervised"] is Supervised and registry["mean_teacher"] is MeanTeacher
    assert registry["supervised_full"] is SupervisedFull
    for name, cls in METHODS["segmentation"].items():
        assert cls.name == name and get_method("segmentation", name) is cls
    assert SupervisedFull.labeled_pool == "all" and Supervised.labeled_pool == "labeled"
    assert MeanTeacher.uses_unlabeled and not Supervised.uses_unlabeled
    with pytest.raises(ValueError, match="unknown segmentation method 'fixmatch'; choose one of: "):
        get_method("segmentation", "fixmatch")


@pytest.mark.parametrize(
    "cls,kwargs,field",
    [
        (Supervised, {"dice_weight": -1.0}, "dice_weight"),
        (Supervised, {"ce_weight": -0.5}, "ce_weight"),
        (Supervised, {"dice_weight": 0.0, "ce_weight": 0.0}, "dice_weight, ce_weight"),
        (MeanTeacher, {"ema_decay": 1.0}, "ema_decay"),
        (MeanTeacher, {"consistency": -0.1}, "consistency"),
        (MeanTeacher, {"rampup": 1.5}, "rampup"),
    ],
)
def test_params_reject_bad_values(cls, kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**kwargs)


def test_base_rejects_bad_sizes():
    with pytest.raises(ValueError, match="total_steps"):
        Supervised(tiny_unet, Supervised.Params(), num_classes=NUM_CLASSES, total_steps=0)
    with pytest.raises(ValueError, match="num_classes"):
        Supervised(tiny_unet, Supervised.Params(), num_classes=1, total_steps=5)


@pytest.mark.parametrize("cls", [CrossPseudoSupervision, DHC])
def test_unsup_term_nonzero_and_reaches_both_networks(cls):
    method = make(cls)
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    for net in (method.net, method.net2):
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_cps_and_dhc_fit_a_fixed_batch():
    assert fits_fixed_batch(make(CrossPseudoSupervision))
    assert fits_fixed_batch(make(DHC))


@pytest.mark.parametrize(
    "name", [n for n, c in METHODS["segmentation"].items() if c.uses_unlabeled]
)
def test_every_semi_supervised_method_logs_its_unsup_ratio(name):
    cls = METHODS["segmentation"][name]
    torch.manual_seed(0)
    method = cls(
        lambda: tiny_unet(deep_supervision=cls.deep_supervision),
        cls.Params(),
        num_classes=NUM_CLASSES,
        total_steps=10,
        num_unlabeled=4,
    )
    terms = add_unsup_ratio(method.training_step(make_batch(), 9))
    ratio = terms["unsup_ratio"]
    assert not ratio.requires_grad
    expected = terms["weight"] * terms["unsup"] / terms["sup"]
    # (loss - sup) / sup: loss and sup are float32, each within 2^-24 of its value, so the
    # difference carries up to 2^-24 (loss + sup) of rounding; ratio within that over sup
    bound = 2 * 2.0**-24 * (terms["loss"] + terms["sup"]).item() / terms["sup"].item()
    assert ratio.item() == pytest.approx(expected.item(), abs=bound)
