"""The classification registry (names, flags, errors) and checks shared by several methods."""

import pytest
from cls_helpers import NUM_CLASSES, make, make_batch, tiny_cnn

from semimed.methods import METHODS, get_method
from semimed.methods.classification import (
    TEAR,
    FixMatch,
    FreeMatch,
    MeanTeacher,
    MixMatch,
    PseudoLabel,
    SimCLR,
    Supervised,
    SupervisedFull,
)


def test_registry_names_and_flags():
    assert METHODS["classification"] == {
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
    for name, cls in METHODS["classification"].items():
        assert cls.name == name
        assert get_method("classification", name) is cls
    assert not Supervised.uses_unlabeled and Supervised.labeled_pool == "labeled"
    assert not SupervisedFull.uses_unlabeled and SupervisedFull.labeled_pool == "all"
    for cls in (FixMatch, MeanTeacher, PseudoLabel, MixMatch, FreeMatch, TEAR, SimCLR):
        assert cls.uses_unlabeled and cls.labeled_pool == "labeled"
    assert SimCLR.unlabeled_pool == "all" and MixMatch.views == ("w", "w2")


def test_registry_errors_list_choices():
    with pytest.raises(
        ValueError,
        match="unknown classification method 'remixmatch'; choose one of: "
        "supervised, supervised_full, fixmatch, mean_teacher, pseudo_label, mixmatch, ",
    ):
        get_method("classification", "remixmatch")
    with pytest.raises(ValueError, match="unknown task 'detection'.*classification, segmentation"):
        get_method("detection", "fixmatch")


def test_wrong_params_type_rejected():
    with pytest.raises(TypeError, match="params must be"):
        FixMatch(tiny_cnn, Supervised.Params(), num_classes=NUM_CLASSES, total_steps=10)


@pytest.mark.parametrize("cls", [FixMatch, PseudoLabel])
def test_unsup_gradient_flows_only_through_strong_view(cls):
    method = make(cls, threshold=0.0)
    captured = {}

    def keep_output(mod, inp, out):
        out.retain_grad()
        captured["logits"] = out

    method.net.register_forward_hook(keep_output)
    method.training_step(make_batch(), 0)["unsup"].backward()
    grad = captured["logits"].grad  # rows: 4 labeled, 6 weak, 6 strong
    assert grad[:10].abs().sum() == 0 and grad[10:].abs().sum() > 0


def test_constructors_accept_num_unlabeled():
    for cls in (MixMatch, FreeMatch):
        method = cls(tiny_cnn, cls.Params(), NUM_CLASSES, total_steps=5, num_unlabeled=7)
        assert method.num_unlabeled == 7 and method.uses_unlabeled
    assert MixMatch.views == ("w", "w2") and FreeMatch.views == ("w", "s")
