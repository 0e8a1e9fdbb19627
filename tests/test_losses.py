"""SupCon / NT-Xent (FUCLE Eq. 1) and the DRM losses (Eq. 3-5) against loops and hand-computed values."""
import math

import pytest
import torch
from torch.nn import functional as F

from fernb.losses import (drm_loss, high_importance_mask, nt_xent_loss, rank_regularization_loss, supcon_loss,
                          weighted_cross_entropy)


def supcon_by_loops(features, labels, temperature):
    """Eq. 1 written out with Python loops over anchors i, positives p and contrast samples a != i."""
    batch, views, _ = features.shape
    z = [features[b, v].double() for v in range(views) for b in range(batch)]
    ids = [(int(labels[b]) if labels is not None else b) for v in range(views) for b in range(batch)]
    per_anchor = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and ids[p] == ids[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(len(z)) if a != i)
        terms = [-math.log(math.exp(float(z[i] @ z[p]) / temperature) / denominator) for p in positives]
        per_anchor.append(sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor)


def random_features(batch=6, views=2, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g), dim=-1)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_loops_labeled(temperature):
    features = random_features()
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = supcon_loss(features, labels, temperature=temperature)
    assert got.item() == pytest.approx(supcon_by_loops(features, labels, temperature), rel=1e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_matches_loops_label_free(temperature):
    features = random_features(seed=1)
    got = supcon_loss(features, None, temperature=temperature)
    assert got.item() == pytest.approx(supcon_by_loops(features, None, temperature), rel=1e-5)


def test_supcon_single_view_skips_anchors_without_positive():
    features = random_features(batch=6, views=1, seed=2)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])           # samples 3 and 5 have no positive
    got = supcon_loss(features, labels, temperature=0.2)
    assert got.item() == pytest.approx(supcon_by_loops(features, labels, 0.2), rel=1e-5)
    assert supcon_loss(features.squeeze(1), labels, temperature=0.2).item() == pytest.approx(got.item())


def test_supcon_hand_computed_two_samples():
    # Two samples, two identical views each: z_1 = (1, 0), z_2 = (0, 1), tau = 1.
    # Anchor 1a sees 1b (sim 1), 2a and 2b (sim 0): denominator e + 2.
    z = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    # Label-free / different labels: one positive (the other view): -log(e / (e + 2)) = log(1 + 2 / e).
    expected = math.log(1 + 2 / math.e)                                    # 0.551444713932051
    assert supcon_loss(z, None, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    assert supcon_loss(z, torch.tensor([0, 1]), temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # Same label: three positives, sims 1, 0, 0: ((log(e+2) - 1) + 2 log(e+2)) / 3 = log(e + 2) - 1/3.
    expected_same = math.log(math.e + 2) - 1 / 3                           # 1.218111380598718
    assert supcon_loss(z, torch.tensor([4, 4]), temperature=1.0).item() == pytest.approx(expected_same, rel=1e-6)
    assert nt_xent_loss(z[:, 0], z[:, 1], temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_no_positive_anywhere_is_zero_with_gradient():
    features = random_features(batch=4, views=1, seed=3).requires_grad_(True)
    loss = supcon_loss(features, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    single = random_features(batch=1, views=1, seed=3).requires_grad_(True)
    loss = supcon_loss(single, None)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(single.grad).all()


def test_supcon_gradient_flows_and_is_stable_at_low_temperature():
    raw = torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    loss = supcon_loss(F.normalize(raw, dim=-1), torch.tensor([0, 1, 0, 1, 2, 2, 3, 3]), temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


def test_supcon_base_temperature_scales():
    features, labels = random_features(seed=5), torch.tensor([0, 1, 0, 2, 1, 0])
    plain = supcon_loss(features, labels, temperature=0.1)
    scaled = supcon_loss(features, labels, temperature=0.1, base_temperature=0.07)
    assert scaled.item() == pytest.approx(plain.item() * 0.1 / 0.07, rel=1e-6)


def test_nt_xent_is_label_free_supcon():
    z1, z2 = random_features(batch=5, views=2, seed=6).unbind(1)
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(
        supcon_by_loops(torch.stack([z1, z2], 1), None, 0.5), rel=1e-5)


def test_weighted_cross_entropy_hand_computed():
    # Sample 1: logits (2, 0, 0), alpha 0.5 -> (1, 0, 0), y = 0: -log(e / (e + 2)) = 0.551444713932051
    # Sample 2: logits (0, 0, 4), alpha 0.25 -> (0, 0, 1), y = 1: -log(1 / (e + 2)) = 1.551444713932051
    # Mean: 1.051444713932051
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    alpha = torch.tensor([0.5, 0.25], requires_grad=True)
    targets = torch.tensor([0, 1])
    loss = weighted_cross_entropy(logits, alpha, targets)
    assert loss.item() == pytest.approx(1.051444713932051, rel=1e-6)
    assert weighted_cross_entropy(logits, alpha.detach().reshape(2, 1), targets).item() == pytest.approx(loss.item())
    loss.backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_rank_regularization_hand_computed():
    # beta = 0.5, B = 4: high group {0.6, 0.55} mean 0.575, low group {0.5, 0.45} mean 0.475.
    # L_RR = max(0, 0.15 - (0.575 - 0.475)) = 0.05
    alpha = torch.tensor([0.5, 0.6, 0.45, 0.55], requires_grad=True)
    loss = rank_regularization_loss(alpha, beta=0.5, delta1=0.15)
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    loss.backward()
    # d/d alpha: -1/2 for each high-group sample, +1/2 for each low-group sample.
    assert torch.allclose(alpha.grad, torch.tensor([0.5, -0.5, 0.5, -0.5]))


def test_rank_regularization_zero_when_margin_met_and_floor_group_size():
    alpha = torch.tensor([0.4, 0.9, 0.5, 0.8])                      # means 0.85 and 0.45: gap 0.4 > 0.15
    assert rank_regularization_loss(alpha, beta=0.5, delta1=0.15).item() == 0.0
    # beta = 0.7, B = 5: high group = floor(3.5) = 3 -> {0.9, 0.8, 0.5} mean 0.7333, low {0.4, 0.3} mean 0.35
    alpha = torch.tensor([0.3, 0.9, 0.5, 0.8, 0.4])
    expected = max(0.0, 0.5 - ((0.9 + 0.8 + 0.5) / 3 - 0.35))
    assert rank_regularization_loss(alpha, beta=0.7, delta1=0.5).item() == pytest.approx(expected, abs=1e-6)
    assert high_importance_mask(alpha, 0.7).tolist() == [False, True, True, True, False]


@pytest.mark.parametrize("alpha, beta", [([0.5], 0.5), ([0.5, 0.6], 0.0), ([0.5, 0.6], 1.0), ([0.1, 0.2, 0.3], 0.3)])
def test_rank_regularization_rejects_empty_groups(alpha, beta):
    with pytest.raises(ValueError, match="group|beta|at least 2"):
        rank_regularization_loss(torch.tensor(alpha), beta=beta)


def test_drm_loss_combines_with_gamma():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    alpha = torch.tensor([0.5, 0.25])
    targets = torch.tensor([0, 1])
    # L_RR with beta = 0.5: high {0.5}, low {0.25}: max(0, 0.3 - 0.25) = 0.05; L_WCE = 1.051444713932051
    loss, parts = drm_loss(logits, alpha, targets, beta=0.5, delta1=0.3, gamma=0.2)
    assert parts["rr"].item() == pytest.approx(0.05, abs=1e-6)
    assert parts["wce"].item() == pytest.approx(1.051444713932051, rel=1e-6)
    assert loss.item() == pytest.approx(0.2 * 0.05 + 0.8 * 1.051444713932051, rel=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        drm_loss(logits, alpha, targets, gamma=1.5)


@pytest.mark.parametrize("batch_size", [10, 32, 64, 90, 170, 180, 330])
def test_high_group_size_is_scns_int_of_the_float_product(batch_size):
    """SCN splits at int(batch_size * beta); at B = 90, 170, 180, 330 the float product 0.7 * B falls just below
    the integer, so SCN's high group is one smaller than the exact 0.7 B."""
    from fernb.losses import high_group_size
    assert high_group_size(batch_size, 0.7) == int(batch_size * 0.7)
    if batch_size in (90, 170, 180, 330):
        assert high_group_size(batch_size, 0.7) == round(0.7 * batch_size) - 1
