"""ARM (Shi et al. 2021; fernb.models.arm): shapes, the formula on hand-set weights, gradients, CPU execution, and
single-image (batch 1) behaviour of the affinity term."""
import pytest
import torch
from torch.nn import functional as F

from fernb import models
from fernb.models.arm import ARM, arm_output_side, arrangement_factor
from fernb.methods.scl import evaluate_batch_size
from fernb.data.dataset import FERDataset


def test_arrangement_factor_and_output_side_match_the_authors():
    assert arrangement_factor(512) == 16            # 512 x 7 x 7 -> 2 x 112 x 112
    assert arrangement_factor(256) == 8             # 4 maps for resnet_mini's 256 channels
    assert arm_output_side(7, 16) == 11             # kernel 32, stride 8: the authors' 121 features
    assert arm_output_side(4, 8) == 5
    with pytest.raises(ValueError, match="side >= 3"):
        arm_output_side(2, 16)


@pytest.mark.parametrize("name,size,kwargs,features", [
    ("resnet18_arm", 224, {}, 121),
    ("resnet_mini_arm", 64, {}, 25),
    ("resnet_mini_arm", 48, {}, 9),
    ("resnet18_arm", 64, {"output_stride": 16}, 25),
    ("resnet_mini_arm", 64, {"pooling": "avg"}, 256),
])
def test_output_shapes_and_the_features_and_logits_convention(name, size, kwargs, features):
    torch.manual_seed(0)
    model = models.create(name, 7, img_size=size, **kwargs)
    x = torch.randn(3, 3, size, size)
    emb, logits = models.features_and_logits(model, x)
    assert emb.shape == (3, features) and logits.shape == (3, 7)
    assert model.num_features == features
    assert torch.allclose(model(x), logits, atol=1e-5)


def test_arm_formula_on_hand_set_weights():
    """Arrangement (pixel shuffle), the shared single-channel de-albino kernel, BN, channel mean and affinity,
    recomputed step by step with plain torch ops."""
    torch.manual_seed(1)
    assert arrangement_factor(32) == 4               # 2 maps, as the authors' 512 channels give
    arm = ARM(channels=32, side=3, upscale=2)        # r = 2 given: 8 maps, kernel 2r = 4, stride r / 2 = 1
    assert arm.r == 2 and arm.groups == 8 and arm.kernel == 4 and arm.stride == 1
    with torch.no_grad():
        arm.de_albino.weight.copy_(torch.randn_like(arm.de_albino.weight))
        arm.alpha.fill_(0.7)
    fmap = torch.randn(5, 32, 3, 3)
    arm.train()
    out = arm(fmap)
    shuffled = F.pixel_shuffle(fmap, 2)                                           # (5, 8, 6, 6)
    per_map = torch.stack([F.conv2d(shuffled[:, g:g + 1], arm.de_albino.weight, stride=1)[:, 0]
                           for g in range(8)], dim=1)                             # (5, 8, 3, 3)
    mean = per_map.mean(dim=(0, 2, 3), keepdim=True)
    var = per_map.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normed = (per_map - mean) / torch.sqrt(var + arm.bn.eps)                     # BN at init: weight 1, bias 0
    x_mean = normed.mean(dim=1)
    expected = (x_mean + 0.7 * x_mean.mean(dim=0, keepdim=True)).flatten(1)
    assert out.shape == (5, 9)
    assert torch.allclose(out, expected, atol=1e-5)
    # the running affinity moved towards this batch's affinity by BN's momentum
    assert torch.allclose(arm.running_affinity, 0.1 * x_mean.mean(0).detach(), atol=1e-6)


def test_gradients_reach_the_kernel_alpha_and_the_trunk_on_cpu():
    torch.manual_seed(0)
    model = models.create("resnet_mini_arm", 7, img_size=64)
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)   # as the engine feeds it
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    arm = model.pool
    assert arm.de_albino.weight.grad is not None and arm.de_albino.weight.grad.abs().sum() > 0
    assert arm.alpha.grad is not None and arm.alpha.grad.abs() > 0
    assert arm.bn.weight.grad is not None
    assert model.trunk.conv1.weight.grad.abs().sum() > 0
    assert next(model.parameters()).device.type == "cpu"


def _fake_data(n=12, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 7, (n,), generator=g)
    return FERDataset(images=images, labels=labels)


def test_single_image_inference_is_batch_independent_with_the_running_affinity():
    torch.manual_seed(0)
    model = models.create("resnet_mini_arm", 7, img_size=64)
    model.train()
    for _ in range(3):                               # a few training batches fill BN and the running affinity
        model(torch.randn(8, 3, 64, 64))
    model.eval()
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)
    data = _fake_data()
    assert evaluate_batch_size(model, data, 1) == evaluate_batch_size(model, data, 12)


def test_batch_affinity_makes_the_prediction_depend_on_the_batch():
    """The authors' evaluation: with one image the affinity is the image's own map, x = (1 + alpha) x_i."""
    torch.manual_seed(0)
    model = models.create("resnet_mini_arm", 7, img_size=64, affinity_eval="batch")
    model.train()
    model(torch.randn(8, 3, 64, 64))
    model.eval()
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        fmap = model.forward_features(x[:1])
        amended = model.pool.amend(fmap)
        single = model.forward_head(fmap, pre_logits=True)
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
    assert torch.allclose(single, ((1 + model.pool.alpha) * amended).flatten(1), atol=1e-5)
    assert not torch.allclose(together, alone, atol=1e-3)
    model.set_affinity_eval("running")
    with torch.no_grad():
        assert torch.allclose(model(x), torch.cat([model(x[i:i + 1]) for i in range(6)]), atol=1e-5)


def test_wrong_input_size_names_the_fix():
    model = models.create("resnet_mini_arm", 7, img_size=64)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(2, 3, 96, 96))


def test_plain_pooling_control_has_the_same_trunk():
    torch.manual_seed(0)
    arm = models.create("resnet_mini_arm", 7, img_size=64)
    torch.manual_seed(0)
    avg = models.create("resnet_mini_arm", 7, img_size=64, pooling="avg")
    trunk_a = {k: v for k, v in arm.state_dict().items() if k.startswith("trunk.")}
    trunk_b = {k: v for k, v in avg.state_dict().items() if k.startswith("trunk.")}
    assert trunk_a.keys() == trunk_b.keys()
    assert all(torch.equal(trunk_a[k], trunk_b[k]) for k in trunk_a)   # same seed, same trunk init
    assert avg.num_features == 256 and arm.num_features == 25
