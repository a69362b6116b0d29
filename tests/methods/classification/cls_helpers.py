"""Shared by the classification method tests (not a test file): tiny CNNs, batch makers,
method builders and the checks several methods' tests use."""

import torch
from seg_helpers import RecordingBatch, loss_drops, trainable
from torch import nn

from semimed.methods.classification import TEAR
from semimed.networks import DataShape, build_network

__all__ = [
    "NUM_CLASSES",
    "NUM_UNLABELED",
    "RecordingBatch",
    "bright_weak_dark_strong",
    "dropout_cnn",
    "first_conv",
    "fit",
    "fits_fixed_batch",
    "indexed_batch",
    "intensity_net",
    "make",
    "make_batch",
    "make_indexed",
    "make_tear",
    "tiny_cnn",
    "trainable",
    "unsup_alone_reaches_weights",
]


NUM_CLASSES = 3
NUM_UNLABELED = 20


def tiny_cnn():
    return build_network("cnn", DataShape.single(2, 1, NUM_CLASSES), channels=(4, 8), dropout=0.0)


def dropout_cnn():
    return build_network("cnn", DataShape.single(2, 1, NUM_CLASSES), channels=(4, 8), dropout=0.5)


def make_batch(seed=0, n_lb=4, n_ulb=6):
    g = torch.Generator().manual_seed(seed)
    x_ulb_w = torch.rand(n_ulb, 1, 16, 16, generator=g)
    return RecordingBatch(
        x_lb=torch.rand(n_lb, 1, 16, 16, generator=g),
        y_lb=torch.randint(0, NUM_CLASSES, (n_lb,), generator=g),
        x_ulb_w=x_ulb_w,
        # A different image per sample, so the strong view's predictions differ from the weak's.
        x_ulb_s=(x_ulb_w + 0.3 * torch.rand(n_ulb, 1, 16, 16, generator=g)).clamp(0, 1),
    )


def make(cls, total_steps=100, **params):
    torch.manual_seed(0)
    return cls(tiny_cnn, cls.Params(**params), num_classes=NUM_CLASSES, total_steps=total_steps)


def indexed_batch(seed=0, n_lb=4, n_ulb=6):
    """Two strong views (``x_ulb_s``, ``x_ulb_s2``) and pool indices ``i_ulb``: TEAR, SimCLR."""
    g = torch.Generator().manual_seed(seed)
    x_ulb = torch.rand(n_ulb, 1, 16, 16, generator=g)

    def noisy():  # an independent perturbation of the same images
        return (x_ulb + 0.3 * torch.rand(n_ulb, 1, 16, 16, generator=g)).clamp(0, 1)

    return RecordingBatch(
        x_lb=torch.rand(n_lb, 1, 16, 16, generator=g),
        y_lb=torch.randint(0, NUM_CLASSES, (n_lb,), generator=g),
        x_ulb_w=x_ulb,
        x_ulb_s=noisy(),
        x_ulb_s2=noisy(),
        i_ulb=torch.tensor([2, 5, 7, 11, 13, 17]),
    )


def make_indexed(cls, total_steps=100, **params):
    """``make`` with a pool of ``NUM_UNLABELED`` unlabeled images: TEAR, SimCLR."""
    torch.manual_seed(0)
    return cls(
        tiny_cnn,
        cls.Params(**params),
        num_classes=NUM_CLASSES,
        total_steps=total_steps,
        num_unlabeled=NUM_UNLABELED,
    )


def make_tear(**params):
    torch.manual_seed(0)
    return TEAR(dropout_cnn, TEAR.Params(**params), NUM_CLASSES, 100, num_unlabeled=20)


def intensity_net():
    """Class set by mean intensity: bright images -> class 0, dark images -> class 1."""
    head = nn.Linear(1, NUM_CLASSES)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[10.0], [-10.0], [0.0]]))
        head.bias.copy_(torch.tensor([-5.0, 5.0, 0.0]))
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def bright_weak_dark_strong(batch):
    """Weak views bright (class 0), strong views dark (class 1): weak targets make CE high.

    The two intensities sit at different distances from the decision boundary (0.5), so the
    CE with the views swapped (about 8.0) differs from the right one (about 6.0).
    """
    batch["x_ulb_w"] = torch.full((6, 1, 16, 16), 0.9)
    batch["x_ulb_s"] = torch.full((6, 1, 16, 16), 0.2)
    return batch


def unsup_alone_reaches_weights(method, out):
    """Back-propagate the unsupervised term alone; True if it reaches head and first conv."""
    assert out["unsup"] > 0
    out["unsup"].backward()
    net = method.net
    assert all(p.grad is not None for p in net.parameters())
    first_conv = next(net.backbone.parameters())
    return net.head.weight.grad.abs().sum() > 0 and first_conv.grad.abs().sum() > 0


def fits_fixed_batch(method, steps=15):
    """``loss_drops`` on the fixed classification batch."""
    return loss_drops(method, make_batch(), steps)


def first_conv(net):
    return next(net.backbone.parameters())


def fit(method, batch, steps, lr=1e-2):
    """Adam steps on one fixed batch, as the loop does them; returns the losses before / after."""
    opt = torch.optim.Adam(trainable(method), lr=lr)
    before = method.training_step(batch, 0)["loss"].item()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        method.training_step(batch, step)["loss"].backward()
        opt.step()
        method.on_step_end(step)
    return before, method.training_step(batch, 0)["loss"].item()
