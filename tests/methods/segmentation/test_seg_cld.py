"""CLD segmentation: rarity weights, the confidence bank, the class-sampled CPS term."""

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet
from seg_method_helpers import hand_labels, hand_logits

from semimed.methods.segmentation.class_weights import class_sampling_mask
from semimed.methods.segmentation.cld import CLD, cld_weights


def test_cld_weights_grow_with_rarity():
    w = cld_weights(torch.tensor([1000.0, 100.0, 10.0, 0.0]))
    expected = torch.tensor([1.0, 10.0, 100.0, 1000.0]).pow(1 / 3)
    assert torch.allclose(w, expected)
    torch.manual_seed(0)
    method = CLD(tiny_unet, CLD.Params(), NUM_CLASSES, 10, class_counts=[1000.0, 100.0, 10.0])
    assert torch.allclose(method.weights, expected[:3])
    assert torch.equal(make(CLD).weights, torch.ones(NUM_CLASSES))


def test_cld_bank_pools_confs_iter_steps_then_ema():
    method = make(CLD, confs_iter=2, confs_momentum=0.5)
    y = hand_labels([0, 0, 1, 2])
    # Each class's probability on its own voxels: 0.9 (class 0), 0.6 (class 1), 0.2 (class 2).
    step1 = hand_logits([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.4, 0.4, 0.2]])
    for _ in range(2):
        method.update_banks((step1, step1), y)
    assert torch.allclose(method.confs[0], torch.tensor([0.9, 0.6, 0.2]))
    # The least confident class is sampled at rate 1, the most confident least often.
    assert torch.allclose(method.rates()[0], torch.tensor([0.125, 0.5, 1.0]).sqrt())
    # The next pooled estimate (class 2 now at 0.6) enters with momentum 0.5.
    step2 = hand_logits([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]])
    method.update_banks((step2, step2), y)
    assert torch.allclose(method.confs[0, 2], torch.tensor(0.2))  # pooled, not yet applied
    method.update_banks((step2, step2), y)
    assert torch.allclose(method.confs[0, 2], torch.tensor(0.4))

    # A resumed run counts on from the checkpoint's step (the host copy follows the buffer):
    # one more pooled step, then the update fires on the same step as in the first run.
    method.update_banks((step1, step1), y)
    resumed = make(CLD, confs_iter=2, confs_momentum=0.5)
    resumed.load_state_dict(method.state_dict())
    assert resumed._conf_steps == int(method.conf_steps) == 5
    for m in (method, resumed):
        m.update_banks((step1, step1), y)
    assert torch.equal(resumed.confs, method.confs) and int(resumed.conf_steps) == 6


def test_cld_cps_term_is_class_weighted_and_sampled_by_own_prediction():
    torch.manual_seed(0)
    method = CLD(tiny_unet, CLD.Params(confs_iter=100), NUM_CLASSES, 10, class_counts=[9, 3, 1])
    method.confs.copy_(torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.5]]))
    batch = make_batch()
    torch.manual_seed(1)
    terms = method.training_step(batch, 10)
    torch.manual_seed(1)
    x = torch.cat([batch["x_lb"], batch["x_ulb_w"]])
    with torch.no_grad():
        a, b = method.net(x), method.net2(x)
        expected = 0.0
        for student, teacher, rates in ((a, b, method.rates()[0]), (b, a, method.rates()[1])):
            target = teacher.argmax(1)
            keep = class_sampling_mask(student, rates)
            ce = torch.nn.functional.cross_entropy(student, target, reduction="none")
            expected += (ce * method.weights[target] * keep).mean()
    assert torch.allclose(terms["unsup"], expected, atol=1e-5)


@pytest.mark.parametrize("cls", [CLD])
def test_fits_a_fixed_batch(cls):
    assert fits_fixed_batch(make(cls))


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (CLD, "gamma", 0.0),
        (CLD, "confs_iter", 0),
        (CLD, "confs_momentum", 1.0),
        (CLD, "weight_power", -1.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
