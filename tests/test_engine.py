"""fernb.engine (fit / evaluate / checkpoint + resume / metrics) and fernb.data.augment on tiny data."""
import copy

import numpy as np
import pytest
import torch

from fernb import engine, models
from fernb.data import augment as aug
from fernb.data import synthfer as S
from fernb.data.dataset import UNLABELED


@pytest.fixture(scope="module")
def tiny():
    return S.synthfer("train", 256, size=48, cache=False, seed=3)


@pytest.fixture(scope="module")
def initial_model():
    torch.manual_seed(0)
    return models.create("resnet_mini", 7)


class Killed(RuntimeError):
    pass


def _kill_after(epoch_index):
    def callback(epoch, history):
        if epoch == epoch_index:
            raise Killed(f"simulated kill after epoch {epoch}")
    return callback


FIT = dict(epochs=4, batch_size=64, lr=3e-3, augment="weak", device="cpu", seed=7, progress=False)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny, initial_model, tmp_path):
    ckpt_a, ckpt_b = tmp_path / "a.pt", tmp_path / "b.pt"
    model_a = copy.deepcopy(initial_model)
    hist_a = engine.fit(model_a, tiny, checkpoint=ckpt_a, **FIT)

    model_b = copy.deepcopy(initial_model)
    with pytest.raises(Killed):
        engine.fit(model_b, tiny, checkpoint=ckpt_b, callbacks=(_kill_after(1),), **FIT)
    state = torch.load(ckpt_b, weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]["train_loss"]) == 2
    # a restarted process builds a fresh model; everything else comes from the checkpoint
    model_c = copy.deepcopy(initial_model)
    hist_c = engine.fit(model_c, tiny, checkpoint=ckpt_b, resume=True, **FIT)

    assert hist_c.epoch == hist_a.epoch == [1, 2, 3, 4]
    assert hist_c.train_loss == hist_a.train_loss
    assert hist_c.train_acc == hist_a.train_acc
    assert hist_c.lr == hist_a.lr
    sd_a, sd_c = model_a.state_dict(), model_c.state_dict()
    assert sd_a.keys() == sd_c.keys()
    for key in sd_a:
        assert torch.equal(sd_a[key], sd_c[key]), key
    # and training did something: weights moved away from the initialization
    assert not torch.equal(sd_a["fc.weight"], initial_model.state_dict()["fc.weight"])

    # the checkpoint is plain tensors and containers: loadable with weights_only=True, and by models.create
    final = torch.load(ckpt_a, weights_only=True)
    assert final["epoch"] == 3
    assert set(final) >= {"model", "optimizer", "scheduler", "history", "epoch"}
    reloaded = models.create("resnet_mini", 7, checkpoint=ckpt_a)
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, sd_a[key]), key

    # resuming a finished run trains no further
    model_d = copy.deepcopy(initial_model)
    hist_d = engine.fit(model_d, tiny, checkpoint=ckpt_a, resume=True, **FIT)
    assert hist_d.train_loss == hist_a.train_loss
    assert torch.equal(model_d.state_dict()["fc.weight"], sd_a["fc.weight"])


def test_metrics_from_predictions_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 2, 2, 0, 3])
    target = torch.tensor([0, 1, 2, 2, 2, 0, UNLABELED, UNLABELED])
    m = engine.metrics_from_predictions(pred, target, num_classes=4)
    # rows kept: (0,0) (1,1) (2->1) (2,2) (2,2) (0->2): 4 of 6 correct
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per class: neutral 1/2, happiness 1/1, sadness 2/3; class 3 has no support and is left out of the mean
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    expected = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(m["confusion"], expected)
    assert m["per_class_accuracy"][:3] == pytest.approx([0.5, 1.0, 2 / 3])


def test_evaluate_returns_probabilities(tiny, initial_model):
    data = tiny.subset(torch.arange(40))
    out = engine.evaluate(copy.deepcopy(initial_model), data, batch_size=16, device="cpu")
    probs = out["probs"]
    assert probs.shape == (40, 7)
    assert torch.allclose(probs.sum(1), torch.ones(40), atol=1e-5)
    assert (probs >= 0).all()
    assert torch.equal(out["predictions"], probs.argmax(1))
    assert out["accuracy"] == pytest.approx(float((out["predictions"] == data.labels).float().mean()))
    assert out["confusion"].sum() == 40


def test_fit_without_labeled_rows_raises(tiny, initial_model):
    hidden = tiny.with_labels(torch.full_like(tiny.labels, UNLABELED))
    with pytest.raises(ValueError, match="no labeled rows"):
        engine.fit(copy.deepcopy(initial_model), hidden, epochs=1, device="cpu", progress=False)


def test_fit_with_a_fixed_number_of_steps(tiny, initial_model):
    """steps=10 on 100 labeled rows at batch 32 (3 batches a pass): 4 passes, the last cut to 1 batch, exactly 10
    optimizer steps, and the schedule spans them (annealed at the end)."""
    labels = torch.full_like(tiny.labels, UNLABELED)
    labels[:100] = tiny.labels[:100]
    calls = []

    def counting_loss(model, x, y, index):
        calls.append(len(index))
        return engine.cross_entropy_step(model, x, y, index)

    hist = engine.fit(copy.deepcopy(initial_model), tiny.with_labels(labels), steps=10, batch_size=32, lr=1e-3,
                      device="cpu", progress=False, loss_fn=counting_loss)
    assert calls == [32] * 10
    assert hist.epoch == [1, 2, 3, 4]
    assert hist.lr[-1] < 0.05 * 1e-3           # annealed to the end of the one-cycle schedule
    with pytest.raises(ValueError, match="steps"):
        engine.fit(copy.deepcopy(initial_model), tiny, steps=0, device="cpu", progress=False)


# ---- augmentation -----------------------------------------------------------------------------------------------
def test_weak_keeps_shape_and_range_and_differs_per_sample():
    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, 3, 48, 48, generator=g)
    x = one.repeat(6, 1, 1, 1)
    y = aug.weak(x, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    # identical inputs, different crops/flips out
    for i in range(1, 6):
        assert not torch.allclose(y[0], y[i], atol=1e-3)
    # seeded: the same generator state gives the same batch
    assert torch.equal(y, aug.weak(x, generator=torch.Generator().manual_seed(1)))


def test_weak_full_crop_flip_is_an_exact_mirror():
    x = torch.rand(4, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    flipped = aug.weak(x, scale=(1, 1), ratio=(1, 1), flip=1.0)
    assert torch.allclose(flipped, torch.flip(x, dims=[-1]), atol=1e-5)
    same = aug.weak(x, scale=(1, 1), ratio=(1, 1), flip=0.0)
    assert torch.allclose(same, x, atol=1e-5)


def test_strong_keeps_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(20, 3, 48, 48)
    y = aug.Strong(group_size=8)(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x, atol=1e-2)
    assert aug.strong(x).shape == x.shape


def test_to_input_round_trip():
    x8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    z = aug.to_input(x8)
    assert z.min() >= -1 and z.max() <= 1
    assert torch.allclose(aug.from_input(z), x8.float() / 255, atol=1e-6)
    assert aug.get(None) is None and aug.get("weak") is aug.weak


# ---- device names and precision by capability -----------------------------------------------------------------
def test_resolve_device_names_and_errors(monkeypatch):
    assert engine.resolve_device("cpu") == torch.device("cpu")
    assert engine.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert engine.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.resolve_device("auto") == engine.resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ValueError, match="'auto', 'cpu', 'cuda'"):
        engine.resolve_device("gpu0")


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_dtype_follows_the_gpu_capability(monkeypatch, bf16, expected):
    """bf16 where the GPU has it, fp16 (+ GradScaler) on a T4 / P100, float32 on the CPU."""
    import contextlib
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
    assert engine.amp_dtype("cuda") == expected
    assert engine.precision_name("cuda") == ("bf16 autocast" if bf16 else "fp16 autocast + GradScaler")
    assert engine.amp_dtype("cpu") is None and engine.precision_name("cpu") == "float32"
    assert not engine.make_scaler("cpu").is_enabled()


def test_optimizer_step_and_make_optimizer_on_cpu(tiny, initial_model):
    model = copy.deepcopy(initial_model)
    opt = engine.make_optimizer(model.parameters(), name="adamw", lr=1e-2, device="cpu")
    assert not opt.defaults.get("fused")
    x = engine.batch_input(tiny, torch.arange(8), torch.device("cpu"))
    before = model.fc.weight.detach().clone()
    engine.optimizer_step(torch.nn.functional.cross_entropy(model(x), tiny.labels[:8]), opt,
                          engine.make_scaler("cpu"))
    assert not torch.equal(before, model.fc.weight)
    with pytest.raises(ValueError, match="optimizer must be"):
        engine.make_optimizer(model.parameters(), name="lion")
    hist = engine.fit(copy.deepcopy(initial_model), tiny.subset(torch.arange(64)), epochs=1, device="cpu",
                      progress=False)
    assert hist.precision == "float32"


# ---- GPU-facing options that run on the CPU (issue 7) -----------------------------------------------------------
def test_resolve_device_reads_fernb_device_and_local_rank(monkeypatch):
    monkeypatch.setenv("FERNB_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.resolve_device("auto") == torch.device("cpu")         # the override wins over CUDA
    assert engine.resolve_device("cuda:1") == torch.device("cuda", 1)    # explicit names are untouched
    monkeypatch.delenv("FERNB_DEVICE")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert engine.resolve_device("auto") == torch.device("cuda", 3)     # under torchrun: this rank's GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.resolve_device(None) == torch.device("cpu")


def test_compile_mode_defaults_and_overrides(monkeypatch):
    monkeypatch.delenv("FERNB_COMPILE", raising=False)
    assert engine.compile_mode(None, "cpu") is None                     # CPU: eager (float32 results unchanged)
    assert engine.compile_mode(None, torch.device("cuda")) == "reduce-overhead"
    assert engine.compile_mode(False, "cuda") is None and engine.compile_mode("off", "cuda") is None
    assert engine.compile_mode(True, "cpu") == "default"
    assert engine.compile_mode("reduce-overhead", "cpu") == "default"   # no CUDA graphs without CUDA
    monkeypatch.setenv("FERNB_COMPILE", "off")
    assert engine.compile_mode(None, torch.device("cuda")) is None
    monkeypatch.setenv("FERNB_COMPILE", "max-autotune-no-cudagraphs")
    assert engine.compile_mode(None, "cpu") == "max-autotune-no-cudagraphs"
    with pytest.raises(ValueError, match="compile must be"):
        engine.compile_mode("fast", "cpu")


def test_compiled_fit_reuses_one_graph_across_fresh_models_and_matches_eager(tiny, initial_model, monkeypatch):
    """The compiled step of every fit of the same architecture is one graph (Dynamo guards on structure, not on
    the model object), and compiling changes nothing but speed: the "eager" backend stands in for Inductor here,
    which would spend minutes compiling on a 2-core CPU."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(engine, "compiled", lambda fn, mode: torch.compile(fn, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    data = tiny.subset(torch.arange(64))
    eager = engine.fit(copy.deepcopy(initial_model), data, epochs=2, batch_size=32, device="cpu", progress=False,
                       compile=False)
    runs = [engine.fit(copy.deepcopy(initial_model), data, epochs=2, batch_size=32, device="cpu", progress=False,
                       compile=True) for _ in range(3)]
    assert counters["stats"]["unique_graphs"] == 1
    for hist in runs:
        assert hist.compile == "default" and hist.train_loss == eager.train_loss
        assert hist.first_step_seconds is not None and hist.samples == [64, 64]
    assert eager.compile == "off"


def test_a_step_that_fails_to_compile_falls_back_to_eager(tiny, initial_model, monkeypatch):
    def broken(fn, mode):
        def step(*args):
            raise RuntimeError("inductor: no C++ compiler")
        return step

    monkeypatch.setattr(engine, "compiled", broken)
    data = tiny.subset(torch.arange(64))
    with pytest.warns(RuntimeWarning, match="continues eagerly"):
        hist = engine.fit(copy.deepcopy(initial_model), data, epochs=1, batch_size=32, device="cpu",
                          progress=False, compile=True)
    ref = engine.fit(copy.deepcopy(initial_model), data, epochs=1, batch_size=32, device="cpu", progress=False)
    assert hist.compile == "off" and hist.train_loss == ref.train_loss


# ---- fp16 + GradScaler on a GPU without bf16 (T4, P100), run on the CPU ---------------------------------------------
def _as_gpu_without_bf16(monkeypatch):
    """The engine as it behaves on a GPU without bf16: amp_dtype says float16, so precision_name reports it and
    make_scaler hands out an enabled GradScaler (on the CPU here, where torch has one). Autocast itself stays off:
    this checks the scaler's path through fit (scale, unscale, inf check, checkpoint, resume), not fp16 numerics."""
    import contextlib
    monkeypatch.setattr(engine, "amp_dtype", lambda device: torch.float16)
    monkeypatch.setattr(engine, "autocast", lambda device: contextlib.nullcontext())


def test_fit_on_a_gpu_without_bf16_uses_fp16_with_a_grad_scaler_and_records_it(tiny, initial_model, tmp_path,
                                                                                monkeypatch):
    data = tiny.subset(torch.arange(128))
    run = dict(epochs=3, batch_size=32, lr=3e-3, augment="weak", device="cpu", seed=4, progress=False)
    plain_model = copy.deepcopy(initial_model)
    plain = engine.fit(plain_model, data, **run)
    _as_gpu_without_bf16(monkeypatch)
    assert engine.precision_name("cpu") == "fp16 autocast + GradScaler" and engine.make_scaler("cpu").is_enabled()

    scaled_model = copy.deepcopy(initial_model)
    scaled = engine.fit(scaled_model, data, checkpoint=tmp_path / "a.pt", **run)
    assert scaled.precision == "fp16 autocast + GradScaler" and plain.precision == "float32"
    # loss x 2^16 on the way back, gradients x 2^-16 before the step: exact in float32, so the same weights
    assert scaled.train_loss == plain.train_loss
    for key, value in plain_model.state_dict().items():
        assert torch.equal(value, scaled_model.state_dict()[key]), key
    state = torch.load(tmp_path / "a.pt", weights_only=True)
    assert state["scaler"]["scale"] == 2.0 ** 16 and state["history"]["precision"] == "fp16 autocast + GradScaler"

    # a kill and a resume restore the scaler too, and end where the uninterrupted run ended
    with pytest.raises(Killed):
        engine.fit(copy.deepcopy(initial_model), data, checkpoint=tmp_path / "b.pt", callbacks=(_kill_after(0),),
                   **run)
    resumed_model = copy.deepcopy(initial_model)
    resumed = engine.fit(resumed_model, data, checkpoint=tmp_path / "b.pt", **run)
    assert resumed.train_loss == scaled.train_loss and resumed.precision == scaled.precision
    for key, value in scaled_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_optimizer_step_with_an_enabled_scaler_skips_a_step_whose_gradients_overflow(initial_model):
    model = copy.deepcopy(initial_model)
    opt = engine.make_optimizer(model.parameters(), lr=1e-2, device="cpu")
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0 ** 16)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3, 48, 48)
    engine.optimizer_step(model(x).sum() * float("inf"), opt, scaler)        # an fp16 overflow, say
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))   # step skipped
    assert scaler.get_scale() == 2.0 ** 15                                        # and the scale backed off
    engine.optimizer_step(model(x).logsumexp(1).mean(), opt, scaler)
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
