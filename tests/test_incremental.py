"""Weakly supervised active incremental learning (Xu et al. Sec. 3.3, Alg. 1): patches, entropy (Eq. 7) and
diversity (Eq. 8) on crafted patch probabilities, worthiness (Eq. 9) with the top-alpha patches, Eq. 11-12's
sampling probabilities, no candidate selected twice, and the annotator's cost accounting."""
import math

import pytest
import torch

from fernb import models
from fernb.data.dataset import FERDataset
from fernb.methods import incremental as I
from fernb.methods.transfer import FinetuneConfig


# ---- patches -----------------------------------------------------------------------------------------------------
def test_patch_boxes_are_a_3x3_grid_covering_the_image():
    boxes = I.patch_boxes(48, 3, 2 / 3)
    assert len(boxes) == 9 and {b[2] for b in boxes} == {32}
    assert boxes[0] == (0, 0, 32) and boxes[4] == (8, 8, 32) and boxes[8] == (16, 16, 32)
    tiles = I.patch_boxes(48, 3, 1 / 3)
    assert [b[:2] for b in tiles[:3]] == [(0, 0), (0, 16), (0, 32)]


def test_cut_patches_crops_and_resizes():
    img = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6) / 35
    patches = I.cut_patches(img, grid=3, fraction=1 / 3, out_size=2)
    assert patches.shape == (1, 9, 1, 2, 2)
    assert torch.equal(patches[0, 0, 0], img[0, 0, :2, :2])          # tile = crop, no resize at out_size 2
    assert torch.equal(patches[0, 8, 0], img[0, 0, 4:, 4:])
    up = I.cut_patches((img * 255).to(torch.uint8), grid=3, fraction=2 / 3)
    assert up.shape == (1, 9, 1, 6, 6) and up.dtype == torch.float32


# ---- Eq. 7-10 on crafted probabilities ----------------------------------------------------------------------------
def test_entropy_eq7_by_hand():
    P = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])                      # one candidate, two patches, two classes
    assert torch.allclose(I.patch_entropy(P), torch.tensor([math.log(2) / 2]))
    assert torch.allclose(I.patch_entropy(torch.full((1, 3, 4), 0.25)), torch.tensor([math.log(4)]))


def test_diversity_eq8_by_hand():
    p, q = torch.tensor([0.8, 0.2]), torch.tensor([0.4, 0.6])
    sym_kl = ((p - q) * (p / q).log()).sum()
    P = torch.stack([p, q])[None]
    assert torch.allclose(I.patch_diversity(P), sym_kl[None])
    # three patches: the sum over the three pairs (j < l); identical patches: 0
    r = torch.tensor([0.5, 0.5])
    P3 = torch.stack([p, q, r])[None]
    pair = lambda a, b: ((a - b) * (a / b).log()).sum()
    assert torch.allclose(I.patch_diversity(P3), (pair(p, q) + pair(p, r) + pair(q, r))[None])
    assert torch.allclose(I.patch_diversity(torch.stack([p, p, p])[None]), torch.zeros(1))


def test_dominant_class_top_alpha_and_worthiness():
    P = torch.tensor([[[0.7, 0.2, 0.1],      # patch 0
                       [0.1, 0.8, 0.1],      # patch 1
                       [0.6, 0.3, 0.1],      # patch 2
                       [0.5, 0.1, 0.4]]])    # patch 3; sums: 1.9, 1.4, 0.7 -> dominant class 0
    assert I.dominant_class(P).tolist() == [0]
    kept, order = I.top_alpha_patches(P, 0.5)                         # ceil(0.5 * 4) = 2 patches
    assert order.tolist() == [[0, 2]] and torch.equal(kept[0], P[0, [0, 2]])
    assert I.top_alpha_patches(P, 0.25)[1].tolist() == [[0]]
    w = I.worthiness(P, lambda1=1.0, lambda2=0.5, alpha=0.5)
    assert torch.allclose(w.entropy, I.patch_entropy(kept)) and torch.allclose(w.diversity, I.patch_diversity(kept))
    assert torch.allclose(w.W, w.entropy + 0.5 * w.diversity)
    # a candidate whose patches disagree is worth more than one whose patches agree confidently
    agree = torch.tensor([[[0.9, 0.05, 0.05]] * 4])
    both = torch.cat([agree, P])
    assert I.worthiness(both, alpha=1.0).W.argmax() == 1
    with pytest.raises(ValueError, match="alpha"):
        I.top_alpha_patches(P, 0.0)


# ---- Eq. 11-12 and selection -------------------------------------------------------------------------------------
def test_sampling_probabilities_are_ordered_and_sum_to_one():
    W = torch.tensor([5.0, 3.0, 2.5, 1.0, 0.5])
    p = I.sampling_probabilities(W)
    expected = (W - 0.5) / (5.0 - 0.5)
    assert torch.allclose(p, (expected / expected.sum()).double())
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (p[:-1] >= p[1:]).all() and p[-1] == 0
    assert torch.allclose(I.sampling_probabilities(torch.ones(4)), torch.full((4,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="descending"):
        I.sampling_probabilities(torch.tensor([1.0, 2.0]))


def test_randomized_select_draws_distinct_candidates_from_the_top_wb():
    torch.manual_seed(0)
    W = torch.rand(200)
    top = set(torch.sort(W, descending=True).indices[:30].tolist())
    g = torch.Generator().manual_seed(1)
    picked = I.randomized_select(W, 10, w=3, generator=g)
    assert len(picked) == 10 and len(set(picked.tolist())) == 10 and set(picked.tolist()) <= top
    # w = 1 is exactly the top b (the last of the w*b has probability 0 and is filled in by rank)
    assert set(I.randomized_select(W, 10, w=1, generator=g).tolist()) == set(torch.sort(W, descending=True)
                                                                            .indices[:10].tolist())
    eligible = torch.ones(200, dtype=torch.bool)
    eligible[list(top)] = False
    again = I.randomized_select(W, 10, w=3, generator=g, eligible=eligible)
    assert not set(again.tolist()) & top


def _web(n=40, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.arange(n) % 7
    is_face = torch.ones(n, dtype=torch.bool)
    is_face[::5] = False
    given = clean.clone()
    given[1::4] = (given[1::4] + 1) % 7
    clean = torch.where(is_face, clean, torch.full_like(clean, -1))
    images = torch.randint(0, 255, (n, 1, size, size), dtype=torch.uint8, generator=g)
    return FERDataset(images=images, labels=given, clean_labels=clean, is_face=is_face, name="web")


def test_annotator_reveals_clean_labels_rejects_nonfaces_and_counts_every_look():
    web = _web()
    ann = I.Annotator(web, cost_per_look=2.0)
    rows = torch.tensor([0, 1, 2, 5])                                 # 0 and 5 are non-faces, 1 has a wrong label
    labels = ann.annotate(rows)
    assert labels.tolist() == [-1, int(web.clean_labels[1]), int(web.clean_labels[2]), -1]
    assert ann.looks == 4 and ann.cost == 8.0 and ann.rejected == 2 and ann.corrected == 1 and ann.confirmed == 1
    with pytest.raises(ValueError, match="already annotated"):
        ann.annotate(torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="twice"):
        ann.annotate(torch.tensor([3, 3]))
    assert ann.looks == 4


def _incremental_setup(n_train: int):
    """A 60-candidate web pool, `n_train` training rows cut from it, a one-step config and a seeded M_0."""
    web = _web(60)
    train = FERDataset(images=web.images[:n_train].clone(), labels=torch.arange(n_train) % 7, name="train")
    cfg = FinetuneConfig(model_name="dalnet_mini", batch_size=16, stage1_steps=1, stage2_steps=1)
    torch.manual_seed(0)
    return web, train, cfg, models.create("dalnet_mini", 7, in_chans=1, img_size=32).state_dict()


def test_run_incremental_never_selects_a_candidate_twice_and_accounts_cost():
    web, train, cfg, start = _incremental_setup(30)
    for selector in I.SELECTORS:
        res = I.run_incremental(start, train, web, train, cfg=cfg, selector=selector, rounds=3, b=8, steps=2,
                                seed=0, device="cpu")
        picked = torch.cat(res.selected)
        assert len(picked) == 24 and len(picked.unique()) == 24, selector
        assert [r.cost for r in res.rounds] == [0, 8, 16, 24]
        nonface = int((~web.is_face[picked]).sum())
        assert sum(r.nonfaces for r in res.rounds) == nonface == res.annotator["rejected non-faces"]
        assert sum(r.used for r in res.rounds) == 24 - nonface
        assert all(r.used_wrong == 0 for r in res.rounds)
    blind = I.run_incremental(start, train, web, train, cfg=cfg, selector="random", rounds=1, b=10, steps=2,
                              annotate=False, device="cpu")
    r = blind.rounds[1]
    picked = blind.selected[1]
    wrong = (~web.is_face[picked]) | (web.labels[picked] != web.clean_labels[picked])
    assert r.cost == 0 and r.used == 10 and r.used_wrong == int(wrong.sum())


def test_replay_ratio_sets_the_web_share_and_the_no_web_control_looks_at_nothing():
    web, train, cfg, start = _incremental_setup(40)
    kw = dict(cfg=cfg, selector="random", rounds=2, b=10, steps=2, seed=1, device="cpu")
    whole = I.run_incremental(start, train, web, train, replay_train=True, **kw)
    half = I.run_incremental(start, train, web, train, replay_train=1.0, **kw)
    alone = I.run_incremental(start, train, web, train, replay_train=False, **kw)
    assert all(s < 0.35 for s in whole.web_share)                 # at most 20 web rows beside 40 replayed
    assert all(s == pytest.approx(0.5) for s in half.web_share)   # r = 1: as many replayed rows as web rows
    assert all(s == 1.0 for s in alone.web_share)
    control = I.run_incremental(start, train, web, train, cfg=cfg, selector=I.NO_WEB, rounds=2, b=10, steps=2,
                                seed=1, device="cpu")
    assert [r.looks for r in control.rounds] == [0, 0, 0] and [r.cost for r in control.rounds] == [0, 0, 0]
    assert len(control.rounds) == 3 and control.web_share == []
    with pytest.raises(ValueError, match="replay_train"):
        I.run_incremental(start, train, web, train, replay_train=-1.0, **kw)


def test_replay_only_control_trains_on_a_round_sized_sample_of_the_training_set(monkeypatch):
    web, train, cfg, start = _incremental_setup(40)
    faces = float(web.is_face.float().mean()) * 10
    assert I.expected_round_size(10, web, 1.0, 40) == round(2 * faces)
    assert I.expected_round_size(10, web, False, 40) == round(faces)
    assert I.expected_round_size(10, web, True, 40) == round(faces) + 40
    seen = []
    fit = I._fit_round
    monkeypatch.setattr(I, "_fit_round", lambda model, data, **kw: (seen.append(data), fit(model, data, **kw))[1])
    res = I.run_incremental(start, train, web, train, cfg=cfg, selector=I.REPLAY_ONLY, rounds=2, b=10, steps=2,
                            replay_train=1.0, seed=3, device="cpu")
    assert [len(d) for d in seen] == [round(2 * faces)] * 2          # the expected size of a round of web data
    assert all(d.name == "train" for d in seen) and res.web_share == []
    assert [r.looks for r in res.rounds] == [0, 0, 0]                 # no candidate looked at
    assert not torch.equal(seen[0].images, seen[1].images)           # a fresh sample each round
    seen.clear()
    I.run_incremental(start, train, web, train, cfg=cfg, selector=I.NO_WEB, rounds=1, b=10, steps=2,
                      replay_train=1.0, seed=3, device="cpu")
    assert [len(d) for d in seen] == [40]                             # the other control: the whole training set
