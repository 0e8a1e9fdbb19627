"""DAL-Net (Xu et al. Table 1): MFM and the double activation layer on crafted tensors, the layer layout and
parameter counts, fernb's model convention; Softmax-MSE (Eq. 3-6): forward value by hand, gradcheck of the exact
derivative, Eq. 6 = the cross-entropy gradient (and not the derivative of the value)."""
import pytest
import torch
from torch.nn import functional as F

from fernb import models
from fernb.losses import SoftmaxMSE, cross_entropy_gradient, expected_class_index, softmax_mse, softmax_mse_value
from fernb.models.dalnet import (TABLE1, DALNet, DoubleActivation, MaxFeatureMap, double_activation, layer_table,
                                 max_feature_map)


# ---- MFM and DAL -----------------------------------------------------------------------------------------------
def test_max_feature_map_keeps_the_larger_of_the_two_halves():
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5, 4.0, -1.0]])          # halves (1, -2, 3) and (0.5, 4, -1)
    assert torch.equal(max_feature_map(x), torch.tensor([[1.0, 4.0, 3.0]]))
    maps = torch.zeros(1, 4, 2, 2)
    maps[0, 0] = torch.tensor([[1.0, -1.0], [2.0, -5.0]])
    maps[0, 2] = torch.tensor([[0.0, 3.0], [-2.0, -4.0]])
    out = MaxFeatureMap()(maps)
    assert out.shape == (1, 2, 2, 2)
    assert torch.equal(out[0, 0], torch.tensor([[1.0, 3.0], [2.0, -4.0]]))
    assert torch.equal(out[0, 1], torch.zeros(2, 2))


def test_max_feature_map_channels_last_matches_and_stays_channels_last():
    x = torch.randn(3, 8, 5, 5)
    ref = torch.maximum(x[:, :4], x[:, 4:])
    cl = max_feature_map(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(cl, ref)
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_max_feature_map_rejects_odd_channels():
    with pytest.raises(ValueError, match="even number"):
        max_feature_map(torch.zeros(2, 5))


def test_double_activation_is_relu_of_maxout():
    x = torch.tensor([[-3.0, 2.0, -1.0, -4.0],                     # halves (-3, 2) and (-1, -4)
                      [0.5, -0.5, 1.5, -2.0]])                     # halves (0.5, -0.5) and (1.5, -2)
    maxout = torch.tensor([[-1.0, 2.0], [1.5, -0.5]])
    assert torch.equal(max_feature_map(x), maxout)
    assert torch.equal(double_activation(x), torch.tensor([[0.0, 2.0], [1.5, 0.0]]))
    assert torch.equal(DoubleActivation()(x), double_activation(x))
    # gradient flows only through the winning half, and only where the winner is positive
    x = x.clone().requires_grad_(True)
    double_activation(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))


# ---- the network ---------------------------------------------------------------------------------------------
def test_table1_layout_and_parameter_count_at_the_papers_size():
    net = DALNet(num_classes=7, in_chans=1, img_size=144)
    convs = [b.conv for b in net.blocks]
    assert [c.out_channels for c in convs] == [96, 192, 384, 384, 256]
    assert [c.kernel_size[0] for c in convs] == [5, 3, 3, 3, 3]
    assert [c.in_channels for c in convs] == [1, 48, 96, 192, 192]          # MFM halves every conv's output
    assert net.ip1.out_features == 512 and net.ip2.out_features == 7
    assert net.ip1.in_features == 128 * 9 * 9                                # 144 -> 72 -> 36 -> 18 -> 9
    assert net.num_features == 256                                            # Maxout halves IP1
    expected = (1 * 25 * 96 + 96) + (48 * 9 * 192 + 192) + (96 * 9 * 384 + 384) + (192 * 9 * 384 + 384) \
        + (192 * 9 * 256 + 256) + (128 * 81 * 512 + 512) + (256 * 7 + 7)
    assert models.count_parameters(net) == expected
    table = layer_table(net)
    assert int(table["parameters"].iloc[-1]) == expected
    assert list(table["Table 1"][:5]) == [f"{m}, {k}x{k}" for m, k in TABLE1["convs"]]


@pytest.mark.parametrize("activation,features", [("dal", 64), ("maxout", 64), ("relu", 128)])
def test_activation_variants_and_the_fernb_convention(activation, features):
    torch.manual_seed(0)
    net = models.create("dalnet_mini", 7, in_chans=1, img_size=48, activation=activation).eval()
    x = torch.randn(3, 1, 48, 48)
    emb, logits = models.features_and_logits(net, x)
    assert emb.shape == (3, features) and logits.shape == (3, 7)
    assert torch.allclose(logits, net(x), atol=1e-6)
    if activation == "dal":
        assert (emb >= 0).all()
    net.reset_classifier(5)
    assert net(x).shape == (3, 5)


def test_other_input_sizes_run_through_the_adaptive_last_pool():
    net = DALNet(7, 3, img_size=64, width=0.25).eval()
    for size in (48, 64, 80):
        assert net(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_unknown_activation_rejected():
    with pytest.raises(ValueError, match="activation"):
        DALNet(activation="tanh")


# ---- Softmax-MSE -----------------------------------------------------------------------------------------------
def test_softmax_mse_forward_value_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, -1.0]])
    target = torch.tensor([2, 0])
    p1 = torch.tensor([1 / 3, 1 / 3, 1 / 3])
    e = torch.exp(torch.tensor([2.0, 0.0, -1.0]))
    p2 = e / e.sum()
    y1 = (p1 * torch.arange(3.0)).sum()               # Eq. 4: 1.0
    y2 = (p2 * torch.arange(3.0)).sum()
    expected = ((y1 - 2) ** 2 + (y2 - 0) ** 2) / 2    # Eq. 5
    assert torch.allclose(expected_class_index(logits), torch.stack([y1, y2]))
    assert torch.allclose(softmax_mse(logits, target), expected)
    assert torch.allclose(softmax_mse_value(logits, target), expected)
    # Eq. 3 subtracts max(X): large logits do not overflow
    big = logits + 1000.0
    assert torch.allclose(softmax_mse(big, target), expected)


def test_exact_gradient_passes_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(7, (6,))
    assert torch.autograd.gradcheck(lambda z: softmax_mse(z, y, "mse"), (x,))
    # and it is the autograd derivative of the plain-ops value
    g_exact, = torch.autograd.grad(softmax_mse(x, y, "mse"), x)
    g_auto, = torch.autograd.grad(softmax_mse_value(x, y), x)
    assert torch.allclose(g_exact, g_auto)


def test_eq6_gradient_is_the_cross_entropy_gradient_and_not_the_derivative_of_the_value():
    torch.manual_seed(1)
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(7, (6,))
    g, = torch.autograd.grad(softmax_mse(x, y), x)
    assert torch.allclose(g, cross_entropy_gradient(x, y), atol=1e-12)
    p = torch.softmax(x.detach(), 1)
    assert torch.allclose(g, (p - F.one_hot(y, 7)) / 6)          # Eq. 6 averaged over the batch (Eq. 5's 1/n)
    assert not torch.autograd.gradcheck(lambda z: softmax_mse(z, y, "softmax"), (x,), raise_exception=False)


def test_softmax_mse_float32_and_bad_arguments():
    x = torch.randn(4, 7, requires_grad=True)
    y = torch.randint(7, (4,))
    loss = SoftmaxMSE.apply(x, y, "softmax")
    loss.backward()
    assert x.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="gradient"):
        softmax_mse(x, y, "huber")
    with pytest.raises(ValueError, match="logits must be"):
        softmax_mse(torch.randn(4), y)
