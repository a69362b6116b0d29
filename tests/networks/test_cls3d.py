"""Classification beyond grey 2D frames: colour images (B, 3, H, W) and volumes (B, 1, D, H, W),
for every classification network and for the weak / strong views."""

import numpy as np
import pytest
import torch
from torch import nn

from semimed.networks import CLASSIFIERS_3D, DataShape, build_network
from semimed.transforms import (
    STRONG_OPS,
    BatchByInputKindd,
    BatchRandAffined,
    BatchRandColourd,
    BatchRandContrastd,
    BatchRandGaussianNoised,
    BatchRandLocalShuffled,
    BatchRandSomeOfd,
    _shuffle_windows_nd,
    echo_strong_ops,
    input_kind,
    seed_transform,
    strong_augment,
    volume_strong_ops,
    weak_augment,
)

# (spatial_dims, input shape) per input kind; sides as small as each network takes
# (densenet121: 32 in 2D, 16 in 3D).
KINDS = {
    "grey2d": (2, (2, 1, 32, 32)),
    "colour2d": (2, (2, 3, 32, 32)),
    "volume": (3, (2, 1, 16, 16, 16)),
}
CASES = [(n, k) for n in ("cnn", "lwn", "resnet18", "densenet121") for k in KINDS]
CASES = [(n, k) for n, k in CASES if KINDS[k][0] == 2 or n in CLASSIFIERS_3D]


@pytest.mark.parametrize("name,kind", CASES)
def test_classifier_per_input_kind(name, kind):
    torch.manual_seed(0)
    dims, shape = KINDS[kind]
    channels = (4, 4, 8, 8) if name == "lwn" else (4, 8)
    net = build_network(name, DataShape.single(dims, shape[1], 3), channels=channels, dropout=0)
    x = torch.rand(shape)
    features = net.backbone(x)
    assert features.shape == (2, net.head.in_features) and isinstance(net.head, nn.Linear)
    logits = net.head(features)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(net(x), logits)  # train mode, but BN with the same batch
    logits.logsumexp(1).mean().backward()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    assert len({type(m) for m in convs}) == 1 and convs[0].weight.ndim == dims + 2
    assert convs[0].in_channels == shape[1] * (4 if name == "lwn" else 1)  # lwn: Haar bands
    for layer in (convs[0], convs[-1], net.head):  # first and last layers learn
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_3d_networks_fit_medmnist_volumes():
    x = torch.rand(2, 1, 28, 28, 28)
    for name in ("cnn", "densenet121"):  # resnet18 at 28^3 is slow on a CPU; shown above
        net = build_network(
            name, DataShape.single(3, 1, 11), channels=(8, 8, 8, 8), dropout=0
        ).eval()
        with torch.no_grad():
            assert net(x).shape == (2, 11)
    resnet = build_network("resnet18", DataShape.single(3, 2, 2), channels=(), dropout=0)
    trunk = resnet.backbone[0]
    assert trunk.conv1.stride == (1, 1, 1) and trunk.conv1.in_channels == 2
    assert isinstance(trunk.maxpool, nn.Identity) and trunk.fc is None


# --- augmentations -------------------------------------------------------------------------

INPUTS = {
    "colour2d": (6, 3, 24, 24),
    "volume": (6, 1, 12, 14, 16),
    "volume2ch": (4, 2, 12, 12, 12),
}


def _images(shape):
    torch.manual_seed(0)
    return 0.1 + 0.8 * torch.rand(shape)


def _view(make, seed, x, **kw):
    return seed_transform(make("classification", **kw), seed)({"image": x})["image"]


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_views_keep_format_are_seeded_and_differ(kind, dtype):
    x = _images(INPUTS[kind]).to(dtype)
    weak, strong = _view(weak_augment, 3, x), _view(strong_augment, 3, x)
    for y in (weak, strong):
        assert y.shape == x.shape and y.dtype == dtype
        assert 0 <= y.min() and y.max() <= 1
        assert ((y - x).abs().flatten(1).amax(1) > 1e-3).all()  # every image changed
    assert torch.equal(weak, _view(weak_augment, 3, x))  # same seed, same view
    assert torch.equal(strong, _view(strong_augment, 3, x))
    assert not torch.equal(weak, _view(weak_augment, 4, x))  # another seed, another view
    assert not torch.allclose(weak, strong)


@pytest.mark.parametrize("kind", INPUTS)
def test_views_draw_per_image_and_warp_channels_alike(kind):
    one = _images(INPUTS[kind])[:1]
    x = one.repeat(4, *[1] * (one.ndim - 1))
    y = _view(weak_augment, 0, x)
    for i in range(1, 4):
        assert not torch.allclose(y[0], y[i])
    # the same warp for every channel: identical channels stay identical
    same = one[:, :1].expand_as(one).repeat(4, *[1] * (one.ndim - 1))
    y = _view(weak_augment, 0, same)
    assert torch.allclose(y, y[:, :1].expand_as(y))


def test_volume_weak_view_rotates_in_the_last_two_axes_only():
    x = torch.zeros(8, 1, 9, 9, 9)
    x[:, :, :, 3:6, 2:7] = 1.0  # a bar along D
    warp = seed_transform(BatchRandAffined(["image"], rotate=0.5), 0)
    y = warp({"image": x})["image"]
    assert torch.allclose(y, y[:, :, :1].expand_as(y), atol=1e-6)  # still constant along D
    assert not torch.allclose(y, x)


def test_flip_mirrors_each_axis_and_is_off_by_default():
    x = _images((64, 1, 4, 5, 6))
    y = seed_transform(BatchRandAffined(["image"], flip=0.5), 0)({"image": x})["image"]
    combos = [[1 + a for a in range(3) if f >> a & 1] for f in range(8)]  # mirrored axes
    seen = set()
    for i in range(64):
        matches = [f for f, axes in enumerate(combos) if torch.allclose(y[i], x[i].flip(axes))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))  # every combination of mirrored axes occurs
    assert weak_augment("classification").transforms[0].flip == 0
    assert _view(strong_augment, 0, x, flip=0.5).shape == x.shape


def test_input_kind():
    assert input_kind(torch.zeros(2, 1, 8, 8)) == "grey2d"
    assert input_kind(torch.zeros(2, 3, 8, 8)) == "colour2d"
    assert input_kind(torch.zeros(2, 1, 4, 8, 8)) == "volume"
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) or \(B, C, D, H, W\)"):
        input_kind(torch.zeros(8, 8))


def test_grey_strong_view_draws_what_the_echo_some_of_drew():
    # The dispatcher gives its children its own seed: the grey child draws exactly as the
    # echo SomeOf did when it stood alone in the Compose.
    x = _images((8, 1, 24, 24))
    alone = BatchRandSomeOfd(["image"], echo_strong_ops(), num_ops=(1, 6), prob=0.5)
    kinds = {k: BatchRandSomeOfd(["image"], f(), (1, len(f())), 0.5) for k, f in STRONG_OPS.items()}
    routed = BatchByInputKindd(["image"], kinds)
    assert torch.equal(
        seed_transform(alone, 5)({"image": x})["image"],
        seed_transform(routed, 5)({"image": x})["image"],
    )


NEW_OPS = {
    "contrast": lambda: BatchRandContrastd(["image"], prob=1.0),
    "noise": lambda: BatchRandGaussianNoised(["image"], prob=1.0),
    "colour": lambda: BatchRandColourd(["image"], prob=1.0),
    "shuffle3d": lambda: BatchRandLocalShuffled(["image"], prob=1.0),
}


@pytest.mark.parametrize("name", NEW_OPS)
def test_new_ops_change_every_image_and_are_reproducible(name):
    x = _images((5, 3, 8, 10, 12) if name == "shuffle3d" else (5, 3, 16, 16))
    y = seed_transform(NEW_OPS[name](), 1)({"image": x})["image"]
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert ((y - x).abs().flatten(1).amax(1) > 1e-3).all()
    assert torch.equal(y, seed_transform(NEW_OPS[name](), 1)({"image": x})["image"])


def test_colour_jitter_keeps_grey_pixels_grey_up_to_the_cast():
    x = _images((4, 1, 8, 8)).expand(4, 3, 8, 8)  # grey RGB images
    t = seed_transform(BatchRandColourd(["image"], saturation=0.5, gain=0.0, prob=1.0), 0)
    torch.testing.assert_close(t({"image": x})["image"], x)  # saturation has nothing to change


def test_volume_local_shuffle_keeps_each_window_multiset():
    x = _images((3, 2, 10, 11, 12))
    window, offset = np.array([2, 3, 2]), np.array([[0, 0, 0], [1, 2, 0], [1, 1, 1]])
    y = _shuffle_windows_nd(x, window, offset, np.ones(3), torch.Generator().manual_seed(0))
    assert (y != x).float().mean() > 0.3
    assert torch.equal(x.flatten(2).sort(-1).values, y.flatten(2).sort(-1).values)
    # image 0: 2x2x2 windows from the corner; the 11th row is cut by the border and stays
    tiles = [
        v[0, :, :10, :10, :12].reshape(2, 5, 2, 5, 2, 6, 2).permute(0, 1, 3, 5, 2, 4, 6)
        for v in (x, y)
    ]
    assert torch.equal(*(t.reshape(2, -1, 8).sort(-1).values for t in tiles))
    assert torch.equal(x[0, :, :, 10], y[0, :, :, 10])
    assert torch.equal(y[:, 0] != x[:, 0], y[:, 1] != x[:, 1])  # channels move together
    none = _shuffle_windows_nd(x, window, offset, np.zeros(3), torch.Generator())
    assert torch.equal(none, x)


def test_volume_strong_ops_keep_3d_format():
    x = _images((4, 1, 12, 12, 12))
    for op in volume_strong_ops():
        op.prob = 1.0
        y = seed_transform(op, 0)({"image": x})["image"]
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and not torch.equal(y, x)


@pytest.mark.parametrize("name", CLASSIFIERS_3D)
def test_3d_state_dict_round_trip(name, tmp_path):
    # The 3D cnn keeps channels-last weights: saving and loading must not care.
    def make():
        return build_network(name, DataShape.single(3, 1, 2), channels=(4, 8), dropout=0).eval()

    net, other = make(), make()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    other.load_state_dict(torch.load(tmp_path / "w.pt"))
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(other(x), net(x))
