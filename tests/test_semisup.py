"""fernb.methods.semisup: the shared semi-supervised trainer (SSFER Eq. 1-5; FixMatch; the method interface that
notebook 05's Ada-CM / MixMatch plug into)."""
import copy

import pytest
import torch
from torch.nn import functional as F

from fernb import models
from fernb.data import synthfer as S
from fernb.data.dataset import UNLABELED
from fernb.methods import semisup as ss


@pytest.fixture(scope="module")
def data():
    ds = S.synthfer("train", 96, size=48, cache=False, seed=5)
    labels = ds.labels.clone()
    labels[40:] = UNLABELED
    return ds.with_labels(labels)        # 40 labeled rows, 56 unlabeled (clean labels kept)


@pytest.fixture(scope="module")
def initial():
    torch.manual_seed(0)
    return models.create("vit_mini", 7, img_size=48)


KW = dict(batch_size=8, uratio=2, lr=1e-3, device="cpu", seed=3, progress=False)


def _trainer(initial, data, method, **kw):
    return ss.SemiSupervisedTrainer(copy.deepcopy(initial), data, None, method, **{**KW, **kw})


def test_teacher_unsup_loss_is_nonzero_and_only_the_student_gets_gradients(initial, data):
    trainer = _trainer(initial, data, ss.EMATeacher(tau=0.0), steps=1)
    ctx = trainer.context(torch.arange(8), torch.arange(16))
    loss, stats = ctx.method.unsup_loss(ctx)
    # the target comes from the teacher on weak views, the prediction from the student on strong views: not 0
    assert float(loss.detach()) > 0.1
    assert stats["mask"].all() and stats["pseudo_labels"].shape == (16,)
    total, _ = ctx.method.loss(ctx)
    total.backward()
    student_grads = [p.grad for p in trainer.student.parameters()]
    assert all(g is not None for g in student_grads) and any(g.abs().sum() > 0 for g in student_grads)
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())


def test_pseudo_labels_come_from_the_teacher_not_the_student(initial, data):
    trainer = _trainer(initial, data, ss.EMATeacher(tau=0.5), steps=1)
    with torch.no_grad():
        trainer.teacher.head.bias.zero_()
        trainer.teacher.head.bias[3] = 50.0        # the teacher is sure every face is class 3
    ctx = trainer.context(torch.arange(8), torch.arange(16))
    _, stats = ctx.method.unsup_loss(ctx)
    assert (stats["pseudo_labels"] == 3).all() and stats["mask"].all()
    assert not (ctx.student_strong[0].logits.argmax(1) == 3).all()
    # FixMatch labels itself: the teacher's bias is ignored
    fix = _trainer(initial, data, ss.FixMatch(tau=0.0), steps=1, ema_momentum=None)
    ctx = fix.context(torch.arange(8), torch.arange(16))
    _, stats = fix.method.unsup_loss(ctx)
    assert torch.equal(stats["pseudo_labels"], ctx.student_weak[0].logits.argmax(1))


def test_eq4_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.3, 0.1], [1.0, 1.0, 5.0]])
    pseudo = torch.tensor([0, 1, 2])
    mask = torch.tensor([True, False, True])
    ce = -torch.log_softmax(logits, 1)[torch.arange(3), pseudo]
    assert float(ss.pseudo_label_loss(logits, pseudo, mask)) == pytest.approx(float((ce[0] + ce[2]) / 3))


def test_threshold_mask_at_the_boundary():
    tau = 0.5
    probs = torch.tensor([[0.5, 0.5], [0.5000001, 0.4999999], [0.4, 0.6], [0.3, 0.3]])
    assert ss.confidence_mask(probs, tau).tolist() == [False, True, True, False]   # strictly greater (Eq. 4)
    assert ss.confidence_mask(torch.zeros(1, 2).softmax(1), 0.5).tolist() == [False]
    assert ss.confidence_mask(torch.tensor([[0.95, 0.05]]), 0.95).tolist() == [False]


def test_ema_update_by_hand(initial, data):
    m = 0.9
    trainer = _trainer(initial, data, ss.EMATeacher(tau=0.7), steps=1, ema_momentum=m)
    theta_t0 = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    result = trainer.run()
    theta_s = result.student.state_dict()
    moved = False
    for key, t1 in result.teacher.state_dict().items():
        expected = m * theta_t0[key] + (1 - m) * theta_s[key]
        assert torch.allclose(t1, expected, atol=1e-6), key
        moved |= not torch.equal(theta_s[key], theta_t0[key])
    assert moved                                       # the student did take a step
    assert result.model is result.teacher and result.history.evaluated == "ema"


def test_resume_after_a_kill_equals_an_uninterrupted_run(initial, data, tmp_path):
    def kill_after(index):
        def cb(epoch, history):
            if epoch == index:
                raise RuntimeError("killed")
        return cb

    kw = dict(steps=6, steps_per_epoch=2, ema_momentum=0.9)
    a = _trainer(initial, data, ss.EMATeacher(tau=0.3), checkpoint=tmp_path / "a.pt", **kw).run()
    with pytest.raises(RuntimeError, match="killed"):
        _trainer(initial, data, ss.EMATeacher(tau=0.3), checkpoint=tmp_path / "b.pt", callbacks=(kill_after(1),),
                 **kw).run()
    assert torch.load(tmp_path / "b.pt", weights_only=True)["epoch"] == 1
    c = _trainer(initial, data, ss.EMATeacher(tau=0.3), checkpoint=tmp_path / "b.pt", **kw).run()
    assert c.history.epoch == a.history.epoch == [1, 2, 3]
    assert c.history.step_loss == a.history.step_loss and len(a.history.step_loss) == 6
    assert c.history.mask_rate == a.history.mask_rate
    for net_a, net_c in ((a.student, c.student), (a.teacher, c.teacher)):
        for (k, va), vc in zip(net_a.state_dict().items(), net_c.state_dict().values()):
            assert torch.equal(va, vc), k


def test_history_audits_pseudo_labels_against_clean_labels(initial, data):
    res = _trainer(initial, data, ss.EMATeacher(tau=0.0), steps=4, steps_per_epoch=2).run()
    h = res.history
    assert h.audit == "clean labels" and h.mask_rate == [1.0, 1.0]
    assert h.pseudo_acc == h.pseudo_acc_all and all(0 <= a <= 1 for a in h.pseudo_acc)
    assert len(h.step_mask_rate) == 4 and h.step == [2, 4]
    assert "confidence" in h.extra and len(h.as_frame()) == 2
    strict = _trainer(initial, data, ss.EMATeacher(tau=0.999), steps=2, steps_per_epoch=2).run().history
    assert strict.mask_rate == [0.0] and strict.pseudo_acc == [None]      # nothing accepted, nothing to score


class ToyMixMatch(ss.SemiSupMethod):
    """A method that owns the whole step (mixes labeled and unlabeled inputs) and uses the epoch hook: the kind of
    method notebook 05 adds without touching the trainer."""
    name = "toy mix"
    weak_views, strong_views = 2, 0

    def __init__(self):
        super().__init__()
        self.starts = []

    def on_epoch_start(self, trainer, epoch):
        pred = trainer.predict(trainer.labeled, which="teacher")
        self.starts.append(float((pred.labels == trainer.labeled.labels.cpu()).float().mean()))

    def loss(self, ctx):
        with torch.no_grad():
            q = torch.stack([ctx.teacher(v).logits.softmax(1) for v in ctx.weak]).mean(0)
        y_l = F.one_hot(ctx.y_l, ctx.num_classes).float()
        x = torch.cat([ctx.x_l, ctx.weak[0]])
        y = torch.cat([y_l, q])
        perm = torch.randperm(len(x))
        lam = 0.7
        out = ctx.student(lam * x + (1 - lam) * x[perm])
        loss = -(torch.log_softmax(out.logits, 1) * (lam * y + (1 - lam) * y[perm])).sum(1).mean()
        return loss, {"lam": torch.tensor(lam)}

    def state_dict(self):
        return {"starts": list(self.starts)}

    def load_state_dict(self, state):
        self.starts = list(state.get("starts", []))


def test_a_method_can_own_the_whole_step_and_use_hooks(initial, data, tmp_path):
    method = ToyMixMatch()
    res = _trainer(initial, data, method, steps=4, steps_per_epoch=2, checkpoint=tmp_path / "m.pt").run()
    assert len(method.starts) == 2 and res.history.extra["lam"] == pytest.approx([0.7, 0.7])
    assert res.history.mask_rate == [None, None]
    assert torch.load(tmp_path / "m.pt", weights_only=True)["method"]["starts"] == method.starts


def test_argument_checks(initial, data):
    with pytest.raises(ValueError, match="EMA teacher"):
        _trainer(initial, data, ss.EMATeacher(), steps=1, ema_momentum=None)
    fix = _trainer(initial, data, ss.FixMatch(), steps=1, ema_momentum=None)
    assert fix.teacher is None and fix.evaluate_with == "student"
    with pytest.raises(ValueError, match="tau"):
        ss.EMATeacher(tau=1.0)
    with pytest.raises(ValueError, match="no labeled rows"):
        _trainer(initial, data.with_labels(torch.full_like(data.labels, UNLABELED)), ss.FixMatch(), steps=1)
