"""Active-learning strategies (fernb.methods.active): hand-made cases with known answers, the query contract on a
tiny pool with a real backbone, and the loop."""
import math

import pytest
import torch
from torch import nn

from fernb import engine, models
from fernb.data import augment as aug
from fernb.data.dataset import FERDataset
from fernb.methods import active


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a shared 2-core runner two OpenMP threads can stall.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class LookupModel(nn.Module):
    """A timm-style stub: image i (every pixel = i) -> embedding table[i] -> linear classifier.

    forward_features recovers the row id from the normalized input, so `fernb.engine.predict` on a pool built by
    `id_pool` returns exactly the embeddings and logits the test wrote down.
    """

    def __init__(self, embeddings: torch.Tensor, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("table", embeddings.float())
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight)
        self.num_features = embeddings.shape[1]

    def forward_features(self, x):
        ids = (aug.from_input(x)[:, 0, 0, 0] * 255).round().long()
        return self.table[ids]

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def id_pool(n: int, labels=None) -> FERDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    labels = torch.zeros(n, dtype=torch.long) if labels is None else labels
    return FERDataset(images=images, labels=labels, classes=tuple("abc"))


def fixed_logits_model(probs: torch.Tensor) -> LookupModel:
    """Embedding = one-hot row id, classifier weight = log p: softmax(logits) reproduces `probs`."""
    n = len(probs)
    return LookupModel(torch.eye(n), probs.clamp_min(1e-6).log().T)


# Six rows, three classes, ranked by hand:
#   least confidence (1 - max p): 1 (.66) > 2 (.50) > 3 (.45) > 4 (.40) > 5 > 0
#   margin (smallest p1 - p2):    2 (.005) < 1 (.01) < 3 (.10) < 4 (.40) < 5 < 0
#   entropy:                      1 (1.10) > 4 (.95) > 2 (.72) > 3 (.69) > 5 > 0
PROBS = torch.tensor([[0.90, 0.05, 0.05],
                      [0.34, 0.33, 0.33],
                      [0.50, 0.495, 0.005],
                      [0.55, 0.45, 0.00],
                      [0.60, 0.20, 0.20],
                      [0.80, 0.15, 0.05]])


def test_uncertainty_scores_pure():
    assert active.least_confidence_scores(PROBS).argsort(descending=True)[:4].tolist() == [1, 2, 3, 4]
    assert active.margin_scores(PROBS).argsort(descending=True)[:4].tolist() == [2, 1, 3, 4]
    assert active.entropy_scores(PROBS).argsort(descending=True)[:4].tolist() == [1, 4, 2, 3]
    assert active.entropy_scores(PROBS)[1].item() == pytest.approx(-(0.34 * math.log(0.34) + 0.66 * math.log(0.33)))
    assert active.entropy_scores(torch.tensor([[1.0, 0.0, 0.0]])).item() == 0.0  # 0 log 0 = 0


@pytest.mark.parametrize("name,n,expected", [
    ("least_confidence", 1, [1]), ("margin", 1, [2]),          # margin separates from LC
    ("entropy", 2, [1, 4]), ("least_confidence", 2, [1, 2]),   # entropy separates from LC
    ("margin", 3, [2, 1, 3]),
])
def test_uncertainty_query_picks_expected_rows(name, n, expected):
    model, pool = fixed_logits_model(PROBS), id_pool(6)
    picked = active.get(name).query(model, pool, torch.zeros(6, dtype=torch.bool), n, device="cpu")
    assert picked.tolist() == expected


def test_uncertainty_query_skips_labeled_rows():
    model, pool = fixed_logits_model(PROBS), id_pool(6)
    labeled = torch.tensor([False, True, False, False, False, False])
    assert active.get("least_confidence").query(model, pool, labeled, 1, device="cpu").tolist() == [2]
    assert active.get("entropy").query(model, pool, labeled, 1, device="cpu").tolist() == [4]


def test_kcenter_picks_farthest_from_labeled():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0],                    # labeled
                           [0.5, 0.0], [0.0, 1.5], [5.0, 5.0], [2.0, 0.0]])
    labeled = torch.tensor([True, True, False, False, False, False])
    assert active.kcenter_greedy(points, labeled, 1).tolist() == [4]
    # After (5, 5) joins the centers, (0, 1.5) is the worst covered (1.5 vs 1.0 and 0.5).
    assert active.kcenter_greedy(points, labeled, 2, chunk_size=2).tolist() == [4, 3]
    # The same through the strategy, with the embeddings coming out of a model.
    model = LookupModel(points, torch.randn(3, 2))
    assert active.get("coreset").query(model, id_pool(6), labeled, 2, device="cpu").tolist() == [4, 3]


def test_kcenter_without_labeled_is_seeded_and_covers():
    x = torch.randn(200, 8)
    none = torch.zeros(200, dtype=torch.bool)
    a = active.kcenter_greedy(x, none, 10, generator=torch.Generator().manual_seed(1))
    b = active.kcenter_greedy(x, none, 10, generator=torch.Generator().manual_seed(1))
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10


def naive_kcenter(x, labeled, n):
    dist = torch.cdist(x, x)
    delta = dist[:, labeled].min(1).values
    delta[labeled] = -1
    out = []
    for _ in range(n):
        u = int(delta.argmax())
        out.append(u)
        delta = torch.minimum(delta, dist[u])
        delta[u] = -1
        delta[labeled] = -1
    return out


def test_kcenter_matches_naive_full_matrix():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g, dtype=torch.float64)
    labeled = torch.rand(300, generator=g) < 0.1
    assert active.kcenter_greedy(x, labeled, 25, chunk_size=37).tolist() == naive_kcenter(x, labeled, 25)


@pytest.mark.parametrize("select", ["kcenter", "badge", "glister"])
@pytest.mark.parametrize("n", [15, 80])
def test_pure_selectors_contract_on_random_pool(select, n):
    g = torch.Generator().manual_seed(n)
    N, D, K = 100, 12, 7
    emb = torch.randn(N, D, generator=g)
    probs = torch.randn(N, K, generator=g).softmax(1)
    labeled = torch.zeros(N, dtype=torch.bool)
    labeled[torch.randperm(N, generator=g)[:40]] = True
    if select == "kcenter":
        picked = active.kcenter_greedy(emb, labeled, n, chunk_size=16)
    elif select == "badge":
        picked = active.badge_select(probs, emb, labeled, n, torch.Generator().manual_seed(0), chunk_size=16)
    else:
        picked = active.glister_select(probs, emb, labeled, n, torch.randn(30, K), torch.randn(30, D),
                                       torch.randint(0, K, (30,)), chunk_size=16)
    expected = min(n, 60)
    assert picked.dtype == torch.long and len(picked) == expected
    assert len(set(picked.tolist())) == expected
    assert not labeled[picked].any()


def test_badge_distance_identity_equals_materialized():
    g = torch.Generator().manual_seed(3)
    probs = torch.randn(20, 5, generator=g).softmax(1)
    emb = torch.randn(20, 9, generator=g)
    grads = active.gradient_embeddings(probs, emb)
    assert grads.shape == (20, 45)
    # g_i = (p_i - onehot(argmax p_i)) (x) e_i, checked entry by entry for one row
    a = probs[4].clone()
    a[a.argmax()] -= 1
    assert torch.allclose(grads[4].view(5, 9), torch.outer(a, emb[4]), atol=1e-6)
    for c in (0, 7, 19):
        materialized = (grads - grads[c]).pow(2).sum(1)
        assert torch.allclose(active.gradient_sq_distances(probs, emb, c), materialized, atol=1e-4, rtol=1e-4)


def test_badge_first_center_is_largest_gradient_and_seeded():
    g = torch.Generator().manual_seed(5)
    probs = torch.randn(50, 4, generator=g).softmax(1)
    emb = torch.randn(50, 6, generator=g)
    labeled = torch.zeros(50, dtype=torch.bool)
    norms = active.gradient_embeddings(probs, emb).norm(dim=1)
    labeled[norms.argmax()] = True  # the largest is labeled: the first pick must be the largest unlabeled one
    norms[labeled] = -1
    picked = active.badge_select(probs, emb, labeled, 10, torch.Generator().manual_seed(0))
    assert picked[0].item() == norms.argmax().item()
    again = active.badge_select(probs, emb, labeled, 10, torch.Generator().manual_seed(0))
    assert picked.tolist() == again.tolist()


def test_badge_matches_materialized_kmeans_plus_plus():
    g = torch.Generator().manual_seed(7)
    probs = torch.randn(120, 5, generator=g).softmax(1)
    emb = torch.randn(120, 8, generator=g, dtype=torch.float64)
    labeled = torch.rand(120, generator=g) < 0.2
    grads = active.gradient_embeddings(probs, emb).double()
    cand = (~labeled).nonzero().flatten()
    gc = grads[cand]
    sampler = torch.Generator().manual_seed(11)
    picked = [int(gc.norm(dim=1).argmax())]
    d2 = torch.full((len(cand),), float("inf"), dtype=torch.float64)
    for _ in range(14):
        d2 = torch.minimum(d2, (gc - gc[picked[-1]]).pow(2).sum(1))
        d2[picked] = 0
        picked.append(int(active._sample_proportional(d2, sampler)))
    fast = active.badge_select(probs, emb, labeled, 15, torch.Generator().manual_seed(11), chunk_size=32)
    assert fast.tolist() == cand[picked].tolist()


def test_bald_prefers_disagreeing_passes():
    agree = torch.tensor([0.5, 0.5]).expand(4, 2)                           # uncertain but every pass agrees
    disagree = torch.tensor([[0.99, 0.01], [0.01, 0.99], [0.99, 0.01], [0.01, 0.99]])
    confident = torch.tensor([0.99, 0.01]).expand(4, 2)
    scores = active.bald_scores(torch.stack([agree, disagree, confident], dim=1))  # (T=4, N=3, K=2)
    assert scores[0].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[2].item() == pytest.approx(0.0, abs=1e-6)
    assert scores[1] > 0.5 * math.log(2)


def test_glister_prefers_gradient_aligned_with_validation():
    # Validation: one row at e = (1, 0), logits (0, 0), label 0 -> a_v = (-0.5, 0.5), G_V = a_v (x) e_v.
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    probs = torch.tensor([[0.7, 0.3],    # predicted 0: a = (-0.3, 0.3), gain (a.a_v)(e.e_v) = +0.3  aligned
                          [0.3, 0.7],    # predicted 1: gain -0.3                                    opposed
                          [0.7, 0.3]])   # orthogonal embedding: gain 0
    val = (torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    none = torch.zeros(3, dtype=torch.bool)
    assert active.glister_select(probs, emb, none, 1, *val, bias=False).tolist() == [0]
    assert active.glister_select(probs, emb, none, 3, *val, bias=False).tolist() == [0, 2, 1]
    labeled = torch.tensor([True, False, False])
    assert active.glister_select(probs, emb, labeled, 1, *val, bias=False).tolist() == [2]


def test_glister_online_update_changes_later_picks():
    # Two identical aligned candidates and a weaker distinct one. With a huge step, the first pick already fixes
    # the validation loss along its direction, so the online update must change the ranking of what remains.
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    probs = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.8, 0.2]])
    val = (torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    none = torch.zeros(3, dtype=torch.bool)
    tiny = active.glister_select(probs, emb, none, 2, *val, eta=1e-6, bias=False)
    huge = active.glister_select(probs, emb, none, 2, *val, eta=100.0, bias=False)
    assert tiny.tolist() == [0, 1]
    assert huge.tolist() == [0, 2]


class Linear2(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.fc = nn.Linear(len(w), 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.stack([torch.zeros_like(w), w]))
            self.fc.bias.copy_(torch.tensor([0.0, b]))

    def forward(self, x):
        return self.fc(x)


def test_deepfool_matches_exact_distance_for_linear_binary():
    w, b = torch.tensor([3.0, -4.0, 0.0]), 1.0            # boundary w.x + b = 0, ||w|| = 5
    model = Linear2(w, b).eval()
    x = torch.tensor([[0.1, 0.2, 0.3], [4.0, -2.0, 1.0], [-2.0, 3.0, 7.0]])
    exact = (x @ w + b).abs() / w.norm()
    norms = active.deepfool_perturbation_norms(model, x, overshoot=0.02)
    assert torch.allclose(norms, 1.02 * (exact + 1e-4), rtol=1e-4, atol=1e-5)
    assert norms[0] < norms[1] and norms[0] < norms[2]    # the point near the boundary is the one DFAL queries


def test_deepfool_multiclass_flips_label():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 4)).eval()
    x = torch.randn(12, 5)
    norms = active.deepfool_perturbation_norms(model, x, max_iter=50, overshoot=0.02)
    assert (norms > 0).all() and torch.isfinite(norms).all()


def test_deepfool_ranks_dead_inputs_last():
    """A row whose input gradient is zero (here: ReLU units that are all off) cannot be pushed to a boundary; it
    used to get norm 0 and be queried first."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3, 2))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([0.0, 0.0, 0.1]))
    x = torch.tensor([[-1.0, -1.0], [0.5, 0.3], [2.0, 0.1]])   # row 0: both ReLUs off, gradients all zero
    norms = active.deepfool_perturbation_norms(net, x)
    assert torch.isinf(norms[0]) and torch.isfinite(norms[1:]).all()
    assert _top_positions(norms, 2) == [1, 2]


def _top_positions(norms, n):
    return active._top(norms, n, descending=False).tolist()


def test_margin_ranks_by_the_margin_itself_in_float32():
    """Margins 3e-8 apart: 1 - margin rounds both to the same float32, the negated margin keeps them apart."""
    p = torch.tensor([[0.5, 0.5 - 3e-8, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float32)
    margins = p[:, 0] - p[:, 1]
    assert margins[1] < margins[0]                          # distinct in float32 (0 and ~3e-8)
    assert (1 - margins[0]) == (1 - margins[1])             # the old score 1 - margin tied them at 1.0
    assert active.margin_scores(p).argmax().item() == 1     # the smaller margin is queried first


def test_random_is_seeded():
    pool = id_pool(50)
    labeled = torch.zeros(50, dtype=torch.bool)
    labeled[:10] = True
    a = active.get("random", seed=3).query(None, pool, labeled, 7)
    b = active.get("random", seed=3).query(None, pool, labeled, 7)
    c = active.get("random", seed=4).query(None, pool, labeled, 7)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert not labeled[a].any()


def test_registry():
    assert set(active.STRATEGIES) == {"random", "least_confidence", "margin", "entropy", "bald", "coreset",
                                      "badge", "glister", "deepfool"}
    assert active.get("bald", T=5).T == 5
    with pytest.raises(ValueError, match="available"):
        active.get("nope")


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(0)
    pool = FERDataset(images=torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=g),
                      labels=torch.randint(0, 7, (40,), generator=g), name="pool")
    test = FERDataset(images=torch.randint(0, 256, (20, 1, 32, 32), dtype=torch.uint8, generator=g),
                      labels=torch.randint(0, 7, (20,), generator=g), name="test")
    torch.manual_seed(0)
    model = models.create("resnet_mini", 7, in_chans=1).eval()
    return pool, test, model


@pytest.mark.parametrize("name", sorted(active.STRATEGIES))
def test_every_strategy_honours_the_contract(tiny, name):
    pool, test, model = tiny
    labeled = torch.zeros(40, dtype=torch.bool)
    labeled[torch.randperm(40, generator=torch.Generator().manual_seed(1))[:8]] = True
    kwargs = {"max_iter": 10} if name == "deepfool" else {}
    strategy = active.get(name, seed=0, **kwargs)
    picked = strategy.query(model, pool, labeled, 5, device="cpu", val=test if name == "glister" else None)
    assert isinstance(picked, torch.Tensor) and picked.dtype == torch.long and len(picked) == 5
    assert len(set(picked.tolist())) == 5 and picked.min() >= 0 and picked.max() < 40
    assert not labeled[picked].any()
    everything = strategy.query(model, pool, labeled, 100, device="cpu")
    assert sorted(everything.tolist()) == (~labeled).nonzero().flatten().tolist()
    assert len(strategy.query(model, pool, labeled, 0, device="cpu")) == 0


def test_glister_without_validation_set(tiny):
    pool, _, model = tiny
    labeled = torch.zeros(40, dtype=torch.bool)
    labeled[:10] = True
    picked = active.get("glister").query(model, pool, labeled, 6, device="cpu")
    assert len(set(picked.tolist())) == 6 and not labeled[picked].any()


def test_run_active_learning_loop(tiny):
    pool, test, _ = tiny
    result = active.run_active_learning(
        "least_confidence", pool, test, model_fn=lambda: models.create("resnet_mini", 7, in_chans=1),
        initial_size=8, budget=4, cycles=2, seed=0, device="cpu",
        fit_kwargs={"epochs": 1, "batch_size": 4, "augment": None})
    frame = result.as_frame()
    assert len(frame) == 3
    assert frame["n_labeled"].tolist() == [8, 12, 16] == result.labeled_counts
    assert frame["n_selected"].tolist() == [0, 4, 4]
    assert 0.0 <= result.final_accuracy <= 1.0
    assert (frame["train_seconds"] > 0).all() and frame["query_seconds"].iloc[0] == 0
    picked = torch.cat(result.selected)
    assert len(set(picked.tolist())) == 8 and int(result.labeled_mask.sum()) == 16
    assert result.labeled_mask[picked].all()
    assert result.wall_seconds > 0 and result.peak_rss_mb >= 0
    # fractions work too, and the initial draw is seeded
    again = active.run_active_learning(
        "random", pool, test, model_fn=lambda: models.create("resnet_mini", 7, in_chans=1),
        initial_fraction=0.2, budget=0.1, cycles=1, seed=0, device="cpu",
        fit_kwargs={"epochs": 1, "batch_size": 4, "augment": None})
    assert again.labeled_counts == [8, 12]


@pytest.mark.parametrize("threshold, expected_pseudo", [(0.0, 28), (1.0, 0)])
def test_sigma_data_addition_adds_confident_unlabeled_rows(tiny, threshold, expected_pseudo):
    """FUCLE Sec. 3.1: after a cycle, unlabeled rows above sigma join the next fit with predicted labels.
    sigma = 0 admits every unlabeled row (28 = 40 - 12 labeled); sigma = 1 admits none."""
    pool, test, _ = tiny
    pool = pool.with_labels(pool.labels)                  # clean labels known, so the audit is computed
    rows_per_fit, current = [], []

    def counting(model, x, y, index):
        assert (y >= 0).all()                              # no unlabeled row reaches the loss
        current.append(len(index))
        return engine.cross_entropy_step(model, x, y, index)

    def model_fn():
        rows_per_fit.append(current.copy()) if current else None
        current.clear()
        return models.create("resnet_mini", 7, in_chans=1)

    result = active.run_active_learning(
        "random", pool, test, model_fn=model_fn, initial_size=8, budget=4, cycles=1, seed=0, device="cpu",
        fit_kwargs={"epochs": 1, "batch_size": 4, "augment": None, "loss_fn": counting},
        pseudo_label_threshold=threshold)
    rows_per_fit.append(current.copy())
    frame = result.as_frame()
    assert frame["n_pseudo"].tolist() == [0, expected_pseudo]
    assert [sum(r) for r in rows_per_fit] == [8, 12 + expected_pseudo]
    assert frame["n_labeled"].tolist() == [8, 12]          # pseudo-labels are not label reads
    if expected_pseudo:
        assert 0.0 <= frame["pseudo_accuracy"].iloc[1] <= 1.0


def test_measure_sees_a_large_allocation():
    with active.measure() as m:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block.add_(1)
        import time
        time.sleep(0.05)
        del block
    assert m.seconds >= 0.05
    assert m.peak_rss_mb > 40
