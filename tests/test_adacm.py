"""fernb.methods.adacm (Ada-CM, notebook 05) and fernb.methods.ssl_baselines (Pseudo-Labeling, MixMatch,
ReMixMatch): the margin (Eq. 1-2, the code's rules, the report's Eq. 6-8), the subset split, L_c, the loss of Eq. 5,
the baselines' building blocks on crafted inputs, and the methods inside the shared trainer."""
import copy
import math
import numpy as np

import pytest
import torch
from torch.nn import functional as F

from fernb import models
from fernb.data import synthfer as S
from fernb.data.dataset import UNLABELED
from fernb.losses.contrastive import nt_xent_loss
from fernb.methods import adacm as A
from fernb.methods import semisup as ss
from fernb.methods import ssl_baselines as sb


# ---- Eq. 1: thresholds from correct predictions ------------------------------------------------------------------
def _probs(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_thresholds_count_only_correct_predictions():
    probs = _probs([[0.9, 0.1, 0.0],    # label 0, predicted 0 (correct, s = 0.9)
                    [0.7, 0.3, 0.0],    # label 0, predicted 0 (correct, s = 0.7)
                    [0.95, 0.05, 0.0],  # label 1, predicted 0: wrong, must not raise T_0
                    [0.2, 0.6, 0.2],    # label 1, predicted 1 (correct, s = 0.6)
                    [0.1, 0.1, 0.8]])   # label 1, predicted 2: wrong, class 2 has no correct prediction
    labels = torch.tensor([0, 0, 1, 1, 1])
    T, n = A.class_thresholds(probs, labels, 3, fallback=1.0)
    assert T.tolist() == pytest.approx([0.8, 0.6, 1.0])
    assert n.tolist() == [2, 1, 0]
    # the fallback is what a class with no correct prediction gets, nothing else
    T0, _ = A.class_thresholds(probs, labels, 3, fallback=0.25)
    assert T0.tolist() == pytest.approx([0.8, 0.6, 0.25])
    # a mean over all predictions of a class (the rule Eq. 1 replaces) would have given T_0 = (0.9+0.7+0.95)/3
    assert T[0] != pytest.approx((0.9 + 0.7 + 0.95) / 3)


def test_adaptive_margins_and_the_authors_code_rules():
    probs = _probs([[0.99, 0.01, 0.0], [0.9, 0.1, 0.0], [0.3, 0.5, 0.2], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 0, 1, 2])         # class 2 never predicted correctly
    t = 3
    out = A.adaptive_margins(probs, labels, 3, t)                       # Eq. 1 + Eq. 2, B = 0.97, gamma = e
    growth = 0.97 / (1 + math.exp(-t))
    assert out["margins"].tolist() == pytest.approx([0.945 * growth, 0.5 * growth, 1.0 * growth])
    assert out["labeled_accuracy"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    # the authors' code: mean * 0.97 / (1 + e^-epoch), floored at 0.8, 0.8 for a class with no correct prediction
    code = A.adaptive_margins(probs, labels, 3, t, **{k: v for k, v in A.CODE_VARIANT.items() if k != "initial"})
    expected = [max(0.8, 0.945 * growth), 0.8, 0.8]
    assert code["margins"].tolist() == pytest.approx(expected)
    assert expected[0] > 0.8                                            # the floor is not everything


# ---- Eq. 2 and the report's Eq. 6-8 -------------------------------------------------------------------------------
def test_schedule_values():
    T = 0.9
    assert A.margin_schedule(T, 0, "eq2", B=0.97, gamma=math.e) == pytest.approx(0.97 * 0.9 / 2)
    assert A.margin_schedule(T, 2, "eq2", B=1.0, gamma=2.0) == pytest.approx(0.9 / (1 + 0.25))
    assert A.margin_schedule(T, 1, "eq6", B=1.0) == pytest.approx(0.9 / 3)
    assert A.margin_schedule(T, 4, "eq6", B=1.0) == pytest.approx(0.9 / (1 + 5 / 4))
    assert A.margin_schedule(T, 1, "eq7", B=1.0) == pytest.approx(0.9 / 2)
    assert A.margin_schedule(T, 4, "eq7", B=1.0) == pytest.approx(0.9 / (1 + 5 / 8))
    assert A.margin_schedule(T, 0, "eq8", B=1.0) == pytest.approx(0.9 / 2)               # e^{log2 1} = 1
    assert A.margin_schedule(T, 1, "eq8", B=1.0) == pytest.approx(0.9 / (1 + math.e))
    assert A.margin_schedule(T, 3, "eq8", B=1.0) == pytest.approx(0.9 / (1 + math.exp(2.0)))
    assert A.margin_schedule(T, 7, "fixed") == T
    tensor = A.margin_schedule(torch.tensor([0.5, 1.0]), 1, "eq2")
    assert tensor.tolist() == pytest.approx([0.97 * 0.5 / (1 + math.exp(-1)), 0.97 / (1 + math.exp(-1))])
    with pytest.raises(ValueError, match="t >= 1"):
        A.margin_schedule(T, 0, "eq6")
    with pytest.raises(ValueError, match="schedule"):
        A.margin_schedule(T, 1, "eq9")


def test_schedule_monotonicity_in_t():
    ts = range(1, 25)
    for name in ("eq2", "eq6", "eq7"):                 # the margin grows as training goes on ...
        values = [A.margin_schedule(0.95, t, name) for t in ts]
        assert all(b > a for a, b in zip(values, values[1:])), name
    eq8 = [A.margin_schedule(0.95, t, "eq8") for t in ts]
    assert all(b < a for a, b in zip(eq8, eq8[1:]))    # ... except Eq. 8, whose denominator grows with t
    # limits: Eq. 2 -> B T, Eq. 6 -> B T / 2, Eq. 7 -> B T / 1.5
    assert A.margin_schedule(0.95, 60, "eq2") == pytest.approx(0.97 * 0.95)
    assert A.margin_schedule(0.95, 10 ** 6, "eq6") == pytest.approx(0.97 * 0.95 / 2, rel=1e-5)
    assert A.margin_schedule(0.95, 10 ** 6, "eq7") == pytest.approx(0.97 * 0.95 / 1.5, rel=1e-5)
    # under the code's 0.8 floor the report's schedules are the constant 0.8 at every t (T <= 1)
    for name in ("eq6", "eq7", "eq8"):
        assert max(A.margin_schedule(1.0, t, name) for t in ts) < 0.8


# ---- subsets I and II ---------------------------------------------------------------------------------------------
def test_subset_split_at_the_boundary():
    margins = torch.tensor([0.5, 0.75, 0.25])
    probs = _probs([[0.5, 0.25, 0.25],      # confidence == margin of its class: subset I (not below the margin)
                    [0.25, 0.75, 0.0],      # == 0.75: subset I
                    [0.0, 0.74, 0.26],      # just below 0.75: subset II
                    [0.375, 0.25, 0.375],   # tie 0 / 2 -> argmax 0 (margin 0.5): subset II
                    [0.25, 0.375, 0.375]])  # tie 1 / 2 -> argmax 1 (margin 0.75): subset II
    confidence, pseudo, subset1 = A.split_subsets(probs, margins)
    assert pseudo.tolist() == [0, 1, 1, 0, 1]
    assert subset1.tolist() == [True, True, False, False, False]
    assert confidence.tolist() == pytest.approx([0.5, 0.75, 0.74, 0.375, 0.375])


def test_average_probs_of_two_and_three_views():
    a, b, c = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    assert A.average_probs([a, b]).tolist()[0] == pytest.approx([(0.5 + 0.75) / 2, (0.5 + 0.25) / 2])
    assert A.average_probs([a, b, c]).tolist()[0] == pytest.approx([0.5, 0.5])


def test_fixmatch_mask():
    probs = _probs([[0.95, 0.05], [0.96, 0.04], [0.5, 0.5], [0.02, 0.98]])
    assert A.fixed_threshold_mask(probs, 0.95).tolist() == [False, True, False, True]
    # the same rule the shared trainer's FixMatch applies (SSFER Eq. 4: strictly greater)
    assert ss.confidence_mask(probs, 0.95).tolist() == A.fixed_threshold_mask(probs, 0.95).tolist()


# ---- L_c: InfoNCE over subset II ----------------------------------------------------------------------------------
def test_infonce_by_hand():
    tau = 0.5
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    z2 = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    member = torch.tensor([True, True, False])          # the third row is in subset I: not contrasted
    # by hand on rows 0 and 1: anchors r in {a0, a1, b0, b1}, positive = the other view, denominator over a != r
    rows = [z1[0], z1[1], z2[0], z2[1]]
    positive = {0: 2, 1: 3, 2: 0, 3: 1}
    total = 0.0
    for r in range(4):
        sims = {a: float(rows[r] @ rows[a]) / tau for a in range(4) if a != r}
        total += -(sims[positive[r]] - math.log(sum(math.exp(s) for s in sims.values())))
    expected = total / 4
    got = A.subset_contrastive_loss([z1 * 3.0, z2 * 0.5], member, temperature=tau)   # normalized inside
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(nt_xent_loss(z1[:2], z2[:2], temperature=tau)) == pytest.approx(expected, rel=1e-5)
    empty = A.subset_contrastive_loss([z1.requires_grad_(), z2], torch.zeros(3, dtype=torch.bool))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


# ---- MixMatch and ReMixMatch building blocks ----------------------------------------------------------------------
def test_sharpen_by_hand():
    p = _probs([[0.6, 0.3, 0.1], [0.25, 0.25, 0.5]])
    out = sb.sharpen(p, 0.5)
    assert out[0].tolist() == pytest.approx([0.36 / 0.46, 0.09 / 0.46, 0.01 / 0.46])
    assert out[1].tolist() == pytest.approx([0.0625 / 0.375, 0.0625 / 0.375, 0.25 / 0.375])
    assert torch.allclose(sb.sharpen(p, 1.0), p)
    assert sb.sharpen(p, 0.01)[0].argmax() == 0 and float(sb.sharpen(p, 0.01)[0, 0]) > 0.999
    with pytest.raises(ValueError):
        sb.sharpen(p, 0.0)


def test_mixup_on_crafted_inputs():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    perm = torch.tensor([1, 2, 0])
    xm, ym = sb.mixup(x, y, 0.3, perm)                 # lambda' = max(0.3, 0.7) = 0.7
    assert torch.allclose(xm, torch.tensor([[0.7, 0.3], [0.6, 1.3], [1.7, 1.4]]))
    assert torch.allclose(ym, torch.tensor([[0.7, 0.3], [0.15, 0.85], [0.65, 0.35]]))
    assert torch.allclose(sb.mixup(x, y, 0.7, perm)[0], xm)  # lambda and 1 - lambda give the same mix
    assert torch.allclose(ym.sum(1), torch.ones(3))          # mixed targets stay distributions


def test_remixmatch_distribution_alignment_on_a_crafted_batch():
    probs = _probs([[0.8, 0.2], [0.6, 0.4]])
    p_labeled = torch.tensor([0.5, 0.5])
    p_model = torch.tensor([0.7, 0.3])                 # the model over-predicts class 0 on unlabeled data
    q = sb.distribution_alignment(probs, p_labeled, p_model)
    r0 = torch.tensor([0.8 / 0.7, 0.2 / 0.3])
    r1 = torch.tensor([0.6 / 0.7, 0.4 / 0.3])
    assert q[0].tolist() == pytest.approx((r0 / r0.sum()).tolist())
    assert q[1].tolist() == pytest.approx((r1 / r1.sum()).tolist())
    assert float(q[:, 0].mean()) < float(probs[:, 0].mean())     # mass moves towards the labeled marginal
    # aligned with its own mean, a batch whose marginal equals p(y) is unchanged
    same = sb.distribution_alignment(probs, probs.mean(0), probs.mean(0))
    assert torch.allclose(same, probs)
    # the ring buffer: p~ is the mean of the recent batch means
    method = sb.ReMixMatch(history=2)
    method.p_model(_probs([[1.0, 0.0]]))
    method.p_model(_probs([[0.0, 1.0]]))
    assert method.p_model(_probs([[0.5, 0.5]])).tolist() == pytest.approx([0.25, 0.75])


def test_linear_rampup():
    assert [sb.linear_rampup(s, 100, 0.4) for s in (0, 20, 40, 90)] == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert sb.linear_rampup(0, 100, 0.0) == 1.0


# ---- the methods inside the shared trainer ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    ds = S.synthfer("train", 64, size=48, cache=False, seed=11)
    labels = ds.labels.clone()
    labels[24:] = UNLABELED
    return ds.with_labels(labels)        # 24 labeled rows, 40 unlabeled (clean labels kept for the audit)


@pytest.fixture(scope="module")
def initial():
    torch.manual_seed(0)
    return models.create("vit_mini", 7, img_size=48)


KW = dict(batch_size=8, uratio=1, lr=1e-3, device="cpu", seed=2, progress=False, ema_momentum=0.9)


def _trainer(initial, data, method, **kw):
    return ss.SemiSupervisedTrainer(copy.deepcopy(initial), data, None, method, **{**KW, **kw})


def test_adacm_loss_is_eq5_and_its_terms_see_their_subsets(initial, data):
    method = A.AdaCM()
    trainer = _trainer(initial, data, method, steps=1)
    ctx = trainer.context(torch.arange(8), torch.arange(8))
    method.margins = torch.tensor([0.0, 0.0, 0.0, 1.1, 1.1, 1.1, 1.1])   # classes 0-2 in subset I, 3-6 never
    loss, stats = method.loss(ctx)
    probs = A.average_probs([o.logits for o in ctx.student_weak])
    conf, pseudo = probs.max(1)
    subset1 = pseudo <= 2
    assert torch.equal(stats["mask"], subset1) and torch.equal(stats["pseudo_labels"], pseudo)
    ce = F.cross_entropy(ctx.student_strong[0].logits, pseudo, reduction="none")
    L_u = float((ce * subset1).sum().detach() / 8)
    L_s = float(F.cross_entropy(ctx.student_l.logits, ctx.y_l).detach())
    L_c = float(A.subset_contrastive_loss([o.features for o in ctx.student_weak], ~subset1).detach())
    assert float(stats["unsup_loss"]) == pytest.approx(L_u, rel=1e-5)
    assert float(stats["contrastive_loss"]) == pytest.approx(L_c, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.5 * L_s + 1.0 * L_u + 0.1 * L_c, rel=1e-5)
    # the control: no contrastive term
    ctrl = A.AdaCM(contrastive=False)
    ctrl.margins = method.margins
    ctx.method = ctrl
    loss_ctrl, stats_ctrl = ctrl.loss(ctx)
    assert float(stats_ctrl["contrastive_loss"]) == 0.0
    assert float(loss_ctrl.detach()) == pytest.approx(0.5 * L_s + L_u, rel=1e-5)


def test_adacm_in_the_trainer_the_ema_model_gets_no_gradients_and_is_evaluated(initial, data):
    method = A.AdaCM(track_val=True)
    trainer = _trainer(initial, data, method, steps=4, steps_per_epoch=2, val=data.subset(torch.arange(16)))
    ctx = trainer.context(torch.arange(8), torch.arange(8))
    loss, _ = method.loss(ctx)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    trainer.student.zero_grad(set_to_none=True)
    result = trainer.run()
    assert result.history.evaluated == "ema" and result.model is result.teacher
    assert all(p.grad is None for p in result.teacher.parameters())
    # epoch 0 uses the initial margin, epoch 1 the margin measured from the EMA model on the labeled rows
    assert method.log["epoch"] == [0, 1] and method.log["margins"][0] == pytest.approx([0.8] * 7)
    assert len(method.log["val_per_class_accuracy"]) == 2
    h = result.history
    assert h.audit == "clean labels" and len(h.extra["subset1_rate"]) == 2
    # the trainer's audit and the method's own shares agree: subset I + subset II = all pseudo-labels
    for e in range(2):
        if h.mask_rate[e]:
            assert h.extra["subset1_correct_rate"][e] == pytest.approx(h.pseudo_acc[e] * h.mask_rate[e], abs=1e-6)
        assert h.extra["subset1_correct_rate"][e] + h.extra["subset2_correct_rate"][e] == \
            pytest.approx(h.pseudo_acc_all[e], abs=1e-6)


def test_adacm_resume_equals_an_uninterrupted_run(initial, data, tmp_path):
    def kill(epoch, history):
        if epoch == 0:
            raise RuntimeError("killed")

    kw = dict(steps=4, steps_per_epoch=2)
    a_method = A.AdaCM()
    a = _trainer(initial, data, a_method, checkpoint=tmp_path / "a.pt", **kw).run()
    with pytest.raises(RuntimeError):
        _trainer(initial, data, A.AdaCM(), checkpoint=tmp_path / "b.pt", callbacks=(kill,), **kw).run()
    c_method = A.AdaCM()
    c = _trainer(initial, data, c_method, checkpoint=tmp_path / "b.pt", **kw).run()
    assert c.history.step_loss == a.history.step_loss
    assert c_method.log["margins"] == a_method.log["margins"]
    for va, vc in zip(a.student.state_dict().values(), c.student.state_dict().values()):
        assert torch.equal(va, vc)


@pytest.mark.parametrize("method", [sb.SupervisedOnly(), sb.PseudoLabeling(tau=None), sb.MixMatch(),
                                    sb.MixMatch(**sb.MIXMATCH_SETTINGS["finetune"]), sb.ReMixMatch(),
                                    sb.ReMixMatch(**sb.REMIXMATCH_SETTINGS["finetune"]), A.AdaCM(weak_views=3, strong_views=2),
                                    A.AdaCM(**A.CODE_VARIANT)], ids=lambda m: m.describe())
def test_every_method_trains_in_the_shared_trainer(initial, data, method):
    res = _trainer(initial, data, copy.deepcopy(method), steps=2, steps_per_epoch=2).run()
    h = res.history
    assert len(h.step_loss) == 2 and all(math.isfinite(v) for v in h.step_loss)
    if isinstance(method, sb.SupervisedOnly):
        assert h.mask_rate == [None] and h.unsup_loss == [0.0]
    else:
        assert 0.0 <= h.mask_rate[0] <= 1.0 and h.pseudo_acc_all[0] is not None
    assert all(p.grad is None for p in res.teacher.parameters())


def test_remixmatch_layouts_choose_the_labeled_view_and_the_mixed_rows(initial, data, monkeypatch):
    seen = {}

    def spy(x, y, lam, perm):              # record what enters mixup; mix with lambda' = 1 (rows unchanged)
        seen["x"], seen["y"] = x, y
        return x, y

    monkeypatch.setattr(sb, "mixup", spy)
    for layout, n_rows in (("paper", 8 + 2 * 8), ("finetune", 8 + 3 * 8)):
        method = sb.ReMixMatch(**sb.REMIXMATCH_SETTINGS[layout])
        trainer = _trainer(initial, data, method, steps=1)
        ctx = trainer.context(torch.arange(8), torch.arange(8))
        loss, stats = method.loss(ctx)
        assert math.isfinite(float(loss.detach())) and len(seen["x"]) == n_rows
        if layout == "finetune":             # USB: the trainer's weak labeled view, and the weak anchor mixed last
            assert torch.equal(seen["x"][:8], ctx.x_l) and torch.equal(seen["x"][-8:], ctx.weak[0])
        else:                                # Algorithm 1: a fresh strong view of the labeled rows
            assert not torch.equal(seen["x"][:8], ctx.x_l)
        assert torch.allclose(seen["y"][8:].sum(1), torch.ones(n_rows - 8))
    with pytest.raises(ValueError, match="labeled_view"):
        sb.ReMixMatch(labeled_view="none")


def test_pseudo_labeling_targets_its_own_weak_view(initial, data):
    method = sb.PseudoLabeling(tau=None, rampup=0.0)
    trainer = _trainer(initial, data, method, steps=1)
    ctx = trainer.context(torch.arange(8), torch.arange(8))
    loss, stats = method.unsup_loss(ctx)
    logits = ctx.student_weak[0].logits
    assert torch.equal(stats["pseudo_labels"], logits.argmax(1)) and stats["mask"].all()
    assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(logits, logits.argmax(1)).detach()), rel=1e-5)


# ---- the experiment runner of notebook 05 ---------------------------------------------------------------------------
def test_create_model_keeps_the_backbone_and_seeds_the_classifier():
    source = models.create("resnet_mini", 30)
    a = A.create_model("resnet_mini", 7, 3, 48, seed=1, pretrained=source.state_dict())
    b = A.create_model("resnet_mini", 7, 3, 48, seed=1, pretrained=source.state_dict())
    c = A.create_model("resnet_mini", 7, 3, 48, seed=2, pretrained=source.state_dict())
    assert A.classifier_prefix(a) == "fc."
    assert torch.equal(a.conv1.weight, source.conv1.weight) and torch.equal(a.layer4[0].conv2.weight,
                                                                            source.layer4[0].conv2.weight)
    assert a.fc.weight.shape == (7, 256) and torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_run_evaluates_the_ema_model_and_reloads_a_finished_run(tmp_path):
    pool = S.synthfer("train", 70, size=48, cache=False, seed=4)
    test = S.synthfer("test", 30, size=48, cache=False, seed=4)
    kw = dict(model="resnet_mini", steps=4, steps_per_epoch=2, batch_size=8, uratio=1, lr=1e-3, ema_momentum=0.9,
              device="cpu", checkpoint_dir=tmp_path)
    spec = A.Spec("Ada-CM", "adacm", dict(A.CODE_VARIANT))
    first = A.run(spec, pool, 21, 3, {"default": test}, **kw)
    assert first.tests["default"]["correct"].shape == (30,) and first.history["evaluated"] == "ema"
    assert first.n_labeled == 21 and len(first.log["margins"]) == 2
    assert list(tmp_path.glob("adacm-3-*.pt"))
    again = A.run(spec, pool, 21, 3, {"default": test}, **kw)             # reloaded from the finished checkpoint
    assert again.tests["default"]["accuracy"] == first.tests["default"]["accuracy"]
    assert again.history["step_loss"] == first.history["step_loss"]
    assert again.log["margins"] == first.log["margins"] and again.log["n_correct"] == first.log["n_correct"]
    assert first.seconds > 0 and again.seconds == first.seconds       # the training time, not the reload time
    sup = A.run(A.Spec("supervised only", "supervised"), pool, 21, 3, {"default": test}, **kw)
    ev = A.compare([first, sup], "Ada-CM", "supervised only", "default")
    assert ev.kind == "bootstrap paired" and ev.seeds == [3]          # one shared seed: bootstrap over test images
    rank = A.ranking([first, sup], ["Ada-CM", "supervised only"], "default")
    assert rank.verdict == "inconclusive"                              # one seed cannot separate methods


def test_collapsed_runs_are_counted_per_row():
    """A run whose predictions pile into one class is flagged; a run that uses every class is not; the share is
    read from the prediction columns of the confusion matrix, not from the true-class rows."""
    spread = np.eye(3, dtype=int) * 10 + 1                            # predicts every class
    one_class = np.zeros((3, 3), dtype=int)
    one_class[:, 1] = [10, 10, 10]                                    # predicts class 1 for every image
    assert A.top_class_share(spread) == pytest.approx(11 / 33)
    assert A.top_class_share(one_class) == 1.0
    skewed_rows = np.diag([28, 1, 1])                                 # unbalanced truth, honest predictions
    assert A.top_class_share(skewed_rows) == pytest.approx(28 / 30)   # 0.93: truth this skewed also trips it
    with pytest.raises(ValueError, match="empty"):
        A.top_class_share(np.zeros((3, 3)))

    def result(name, seed, confusion):
        acc = float(np.trace(confusion) / np.sum(confusion))
        return A.RunResult(name=name, method=name, seed=seed, n_labeled=10, source="t", history={}, log={},
                           tests={"t": {"accuracy": acc, "confusion": confusion.tolist()}}, seconds=0.0)

    rows = [result("MixMatch", 0, one_class), result("MixMatch", 1, spread), result("Ada-CM", 0, spread)]
    table = A.summary(rows, "t")
    assert table.loc["MixMatch", "collapsed"] == 1 and table.loc["Ada-CM", "collapsed"] == 0
    assert table.loc["MixMatch", "seeds"] == 2
    note = A.collapse_note(table)
    assert "MixMatch (1 of 2 seeds)" in note and "Ada-CM" not in note
    assert A.collapse_note(A.summary(rows[1:], "t")) == ""


def test_a_claim_against_a_collapsed_run_has_no_verdict():
    """Ada-CM beating a run that collapsed onto one class is the failure of that run, not a fact about its method:
    compare keeps the numbers and the interval, withholds the verdict and names the failed seed."""
    spread = np.eye(3, dtype=int) * 10 + 1
    one_class = np.zeros((3, 3), dtype=int)
    one_class[:, 1] = [10, 10, 10]

    def result(name, seed, acc, confusion):
        return A.RunResult(name=name, method=name, seed=seed, n_labeled=10, source="t", history={}, log={},
                           tests={"t": {"accuracy": acc, "confusion": confusion.tolist(),
                                        "correct": np.ones(33)}}, seconds=0.0)

    ada = [result("Ada-CM", 0, 0.90, spread), result("Ada-CM", 1, 0.91, spread)]
    healthy = ada + [result("MixMatch", 0, 0.30, spread), result("MixMatch", 1, 0.32, spread)]
    failed = ada + [result("MixMatch", 0, 0.30, spread), result("MixMatch", 1, 0.32, one_class)]
    ok = A.compare(healthy, "Ada-CM", "MixMatch", "t")
    assert ok.verdict == "holds" and "withheld" not in ok.rule
    ev = A.compare(failed, "Ada-CM", "MixMatch", "t")
    assert ev.verdict == "inconclusive"
    assert (ev.low, ev.high, ev.estimate) == (ok.low, ok.high, ok.estimate)     # the numbers stay on the card
    assert ev.rule.startswith(ok.rule) and "withheld" in ev.rule and "MixMatch collapsed" in ev.rule
    assert "seed(s) [1]" in ev.rule and "Ada-CM collapsed" not in ev.rule


def test_mixmatch_settings_paper_and_finetune():
    """"paper" is Berthelot et al.'s schedule (the class defaults); "finetune" is USB's for a pretrained backbone:
    a consistency weight of 10 reached after 40 % of the run instead of 75 after 16/1024 of it."""
    paper, tuned = sb.MixMatch(**sb.MIXMATCH_SETTINGS["paper"]), sb.MixMatch(**sb.MIXMATCH_SETTINGS["finetune"])
    assert (paper.weight, paper.rampup, paper.alpha) == (75.0, 16 / 1024, 0.75)
    assert (tuned.weight, tuned.rampup, tuned.alpha) == (10.0, 0.4, 0.5)
    steps = 210                                   # notebook 05's cpu run
    assert paper.weight * sb.linear_rampup(4, steps, paper.rampup) == 75.0          # full weight by step 4
    assert tuned.weight * sb.linear_rampup(42, steps, tuned.rampup) == pytest.approx(5.0)   # half way at 20 %
    assert tuned.weight * sb.linear_rampup(84, steps, tuned.rampup) == 10.0
