"""SS-Net segmentation: the adversarial perturbation, the class-memory contrast and its memory."""

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch
from seg_method_helpers import grads_reach, hand_labels, hand_logits

from semimed.methods.segmentation.ssnet import SSNet, soft_dice_distance, unit_per_sample


def test_ssnet_adversarial_perturbation_has_the_norm_and_raises_the_distance():
    method = make(SSNet, vat_xi=3.0, vat_eps=3.0)
    batch = make_batch()
    x = torch.cat([batch["x_lb"], batch["x_ulb_w"]])
    with torch.no_grad():
        probs = method.net(x).softmax(1)
    d = method.adversarial_direction(x, probs)
    assert torch.allclose((3.0 * d).flatten(1).norm(dim=1), torch.full((4,), 3.0), atol=1e-3)
    with torch.no_grad():
        adversarial = soft_dice_distance(method.net(x + 3.0 * d), probs)
        clean = soft_dice_distance(method.net(x), probs)
        randoms = [
            soft_dice_distance(method.net(x + 3.0 * unit_per_sample(torch.randn_like(x))), probs)
            for _ in range(3)
        ]
    assert adversarial > max(randoms) > clean - 1e-4
    # The direction's search leaves no gradient on the weights.
    assert not grads_reach(method.net)


def test_ssnet_contrast_pulls_features_to_their_class_memory():
    method = make(SSNet, feat_dim=2)
    for selector in (method.selectors[1], method.memory_selectors[1]):
        torch.nn.init.zeros_(selector[-1].weight)  # constant scores -> uniform weights
    method.memory[1, :2] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    method.memory_len[1] = 2
    labels = torch.tensor([1, 1, 0])
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    # Distances 1 - cos: [[0, 1], [1, 0]] -> mean 0.5, over C = 3 classes; class 0 has no memory.
    assert torch.isclose(method.contrast(z, labels), torch.tensor(0.5 / NUM_CLASSES))
    # Features parallel to every entry of their class's memory cost nothing.
    method.memory[1, :2] = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert torch.isclose(method.contrast(z[[0, 0, 2]], labels), torch.tensor(0.0), atol=1e-6)


def test_ssnet_memory_holds_correct_foreground_predictions_only():
    method = make(SSNet, memory_size=2, contrast_voxels=0)
    y = hand_labels([0, 0, 1, 1, 1, 2, 2, 2])
    # Background and class 1 right (three voxels), class 2 predicted as class 1.
    columns = [[0.8, 0.1, 0.1]] * 2 + [[0.1, 0.8, 0.1]] * 3 + [[0.1, 0.8, 0.1]] * 3
    logits = torch.cat([hand_logits(columns), hand_logits(columns)]).requires_grad_(True)
    method.separation_loss(logits, y, 1)
    assert method.memory_len.tolist() == [0, 2, 0]


@pytest.mark.parametrize("cls", [SSNet])
def test_fits_a_fixed_batch(cls):
    assert fits_fixed_batch(make(cls))


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (SSNet, "vat_eps", 0.0),
        (SSNet, "memory_size", 1),
        (SSNet, "contrast_voxels", -1),
        (SSNet, "rampup", 2.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
