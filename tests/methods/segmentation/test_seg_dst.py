"""DST segmentation: the pseudo head, the worst-case head behind gradient reversal, inference."""

import math

import pytest
import torch
from seg_helpers import fits_fixed_batch, make, make_batch
from seg_method_helpers import grads_reach

from semimed.methods.segmentation.dst import DST, GradientReversal, grl_coefficient, worst_case_loss
from semimed.networks.segmentation import PairAverage


def test_dst_pseudo_labels_train_the_pseudo_head_not_the_main_head():
    method = make(DST, threshold=0.0)
    terms = method.training_step(make_batch(), 5)
    assert terms["pseudo"].item() > 0
    terms["pseudo"].backward()
    for net, heads in ((method.net, method.heads), (method.net2, method.heads2)):
        output_layer = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)][
            -1
        ]
        assert grads_reach(heads.pseudo)
        assert output_layer.weight.grad is None or output_layer.weight.grad.abs().sum() == 0
        assert not grads_reach(heads.worst)
        # The shared features below the heads do learn from the pseudo-labels.
        assert grads_reach(net)


def test_dst_worst_case_head_behind_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (GradientReversal.apply(x, 0.3) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.3, -0.6, -0.9]))
    assert grl_coefficient(0, 0.1, 1.0, 500) == 0.0
    assert math.isclose(grl_coefficient(500, 0.1, 1.0, 500), 0.2 / (1 + math.exp(-1)) - 0.1)
    # Main head: labeled voxel -> class 0, unlabeled voxel -> class 1; the worst head is uniform:
    # CE = log 2 on the labeled row, -log(1 - 0.5) on the unlabeled one; eta' = 2.
    main = torch.tensor([[3.0, 0.0], [0.0, 3.0]]).reshape(2, 2, 1)
    loss = worst_case_loss(main, torch.zeros(2, 2, 1), 1, 2.0)
    assert math.isclose(loss.item(), 3 * math.log(2), rel_tol=1e-4)
    method = make(DST)
    terms = method.training_step(make_batch(), 5)
    terms["worst"].backward()
    assert grads_reach(method.heads.worst) and grads_reach(method.net)
    assert not grads_reach(method.heads.pseudo)


def test_dst_inference_is_the_plain_pair():
    method = make(DST)
    model = method.inference_model()
    assert isinstance(model, PairAverage)
    method.eval()
    x = make_batch()["x_lb"]
    with torch.no_grad():
        mean = 0.5 * (method.net(x).softmax(1) + method.net2(x).softmax(1))
        assert torch.allclose(model(x).exp(), mean, atol=1e-5)
    assert method.heads._features is None


@pytest.mark.parametrize("cls", [DST])
def test_fits_a_fixed_batch(cls):
    assert fits_fixed_batch(make(cls))


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (DST, "threshold", 1.5),
        (DST, "grl_steps", 0),
        (DST, "eta", -1.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
