"""Device correctness on a CPU-only machine (issue 7).

Both crashes of notebook 01 on an H100 were invisible here because everything lived on the CPU:
(1) `measure(device="auto")` called `torch.device("auto")` whenever CUDA was available; (2) `compute_alpha` took
the device from the DRM's first parameter (its backbone, already on the GPU) while the attention head stayed on
the CPU. `fernb.devicecheck.stand_in_gpu()` gives the CPU a second device with CUDA's rules (real values, one
device per operation, "auto" resolving to it, CUDA "available" to fernb's code). The tests below

* show that both old code paths fail under it (so the harness would have caught them),
* run every public function of the audited modules that takes `device` with device="auto" on it, from models
  and heads left on the CPU, and check that they move everything they use and compute what the CPU computes,
* keep the list honest: a new public function taking `device` in an audited module must be added here.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fernb
from fernb import engine, models
from fernb.data import synthfer as S
from fernb.devicecheck import DeviceMismatch, StandInTensor, stand_in_gpu
from fernb.methods import active, drm as drm_mod, pretrain

# Modules whose every public device-taking function must appear in CALLS (the coverage test enforces it). Other
# fernb modules get a warning listing theirs, until someone adds them here.
AUDITED = ("fernb.engine", "fernb.distributed", "fernb.parallel", "fernb.data.dataset", "fernb.methods.active",
           "fernb.methods.drm", "fernb.methods.pretrain", "fernb.methods.semisup")


@pytest.fixture(scope="module")
def data():
    return S.synthfer("train", 96, size=48, cache=False, seed=5)


@pytest.fixture(scope="module")
def test_data():
    return S.synthfer("test", 48, size=48, cache=False, seed=6)


@pytest.fixture(scope="module")
def init():
    torch.manual_seed(0)
    return models.create("resnet_mini", 7)


def on_stand_in(module: nn.Module) -> bool:
    return all(isinstance(t, StandInTensor) for t in [*module.parameters(), *module.buffers()])


def same(a, b) -> bool:
    return torch.equal(torch.as_tensor(a).cpu(), torch.as_tensor(b).cpu())


# ---- the harness itself ----------------------------------------------------------------------------------------
def test_stand_in_gpu_has_cuda_rules_and_cpu_values():
    with stand_in_gpu() as gpu:
        assert engine.resolve_device("auto") == engine.resolve_device(None) == gpu
        a = torch.arange(6.0).to(gpu)
        assert isinstance(a, StandInTensor) and a.device == gpu
        assert same((a * 2 + 1).cpu(), torch.arange(6.0) * 2 + 1)
        assert same(a[torch.tensor([0, 5])].cpu(), torch.tensor([0.0, 5.0]))   # CPU indices are fine, as on CUDA
        assert same((a * torch.tensor(3.0)).cpu(), torch.arange(6.0) * 3)     # so are 0-dim CPU scalars
        assert isinstance(torch.zeros(2, device=gpu), StandInTensor)
        assert isinstance(torch.tensor([1, 2], device=gpu), StandInTensor)
        assert a.sum().item() == 15.0 and a.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        with pytest.raises(DeviceMismatch, match="same device"):
            a + torch.ones(6)
        with pytest.raises(DeviceMismatch, match="same device"):
            nn.Linear(6, 2)(a)                                       # a module left on the CPU
        with pytest.raises(TypeError, match="numpy"):
            a.numpy()
    assert engine.resolve_device("auto") == torch.device("cpu")          # and everything is back to normal


def test_stand_in_gpu_tells_fernb_but_not_torch_that_cuda_is_there():
    with stand_in_gpu():
        namespace = {"__name__": "fernb.methods.example", "torch": torch}
        exec("def asks():\n    return torch.cuda.is_available()", namespace)
        assert namespace["asks"]() is True
        assert torch.cuda.is_available() is torch.cuda.is_available()  # this module is not fernb: the truth


# ---- the two crashes of issue 7, as the old code had them ------------------------------------------------------
OLD_MEASURE_START = '''
def measure_start(device=None):
    return torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
'''

OLD_COMPUTE_ALPHA = '''
@torch.no_grad()
def compute_alpha(drm, data, batch_size=256, device=None):
    device = resolve_device(device) if device is not None else next(drm.parameters()).device
    was_training = drm.training
    drm.eval()
    alphas, logits = [], []
    for index in torch.arange(len(data)).split(batch_size):
        x = batch_input(data, index, device)
        with autocast(device):
            a, z = drm(x)
        alphas.append(a.float().cpu())
        logits.append(z.float().cpu())
    drm.train(was_training)
    return torch.cat(alphas), torch.cat(logits)
'''


def _old(source: str, module: str, **names):
    namespace = {"__name__": module, "torch": torch, **names}
    exec(textwrap.dedent(source), namespace)
    return namespace


def test_the_two_crashes_of_issue_7_fail_under_the_stand_in_gpu_and_are_fixed(data, init):
    sub = data.subset(torch.arange(24))
    with stand_in_gpu() as gpu:
        # (1) measure("auto") with CUDA available
        old = _old(OLD_MEASURE_START, "fernb.methods.active")
        with pytest.raises(RuntimeError, match="auto"):
            old["measure_start"]("auto")
        with active.measure("auto") as m:
            torch.ones(1000, device=gpu).sum()
        assert m.seconds >= 0 and m.peak_cuda_mb is None        # the stand-in is not CUDA: no CUDA counters

        # (2) compute_alpha after an earlier predict moved the backbone but not the attention head
        torch.manual_seed(0)
        drm = drm_mod.DRM(copy.deepcopy(init))
        engine.predict(drm.backbone, sub, device="auto")
        assert on_stand_in(drm.backbone) and not on_stand_in(drm.head)
        old = _old(OLD_COMPUTE_ALPHA, "fernb.methods.drm", resolve_device=engine.resolve_device,
                   batch_input=engine.batch_input, autocast=engine.autocast)
        with pytest.raises(DeviceMismatch):
            old["compute_alpha"](drm, sub)
        alpha, logits = drm_mod.compute_alpha(drm, sub)          # device=None means "auto": everything moves
        assert on_stand_in(drm)
    torch.manual_seed(0)
    cpu_drm = drm_mod.DRM(copy.deepcopy(init))
    cpu_alpha, cpu_logits = drm_mod.compute_alpha(cpu_drm, sub, device="cpu")
    assert same(alpha, cpu_alpha) and same(logits, cpu_logits)


# ---- every public function that takes `device` ------------------------------------------------------------------
def _fit_with_a_head(model, data, device):
    """fit with a loss that uses an extra head, both left on the CPU."""
    torch.manual_seed(1)
    head = nn.Linear(7, 7)

    def loss_fn(model, x, y, index):
        logits = head(model(x))
        return F.cross_entropy(logits, y), logits

    hist = engine.fit(model, data, epochs=1, batch_size=32, device=device, progress=False, seed=3,
                      loss_fn=loss_fn, extra_modules=(head,), val=data.subset(torch.arange(16)))
    return hist, head


def check_fit(gpu, data, test_data, init):
    model = copy.deepcopy(init)
    hist, head = _fit_with_a_head(model, data, "auto")
    assert on_stand_in(model) and on_stand_in(head)
    ref, _ = _fit_with_a_head(copy.deepcopy(init), data, "cpu")
    assert hist.train_loss == ref.train_loss and hist.val_acc == ref.val_acc and hist.samples == ref.samples


def check_predict_evaluate(gpu, data, test_data, init):
    model = copy.deepcopy(init)
    pred = engine.predict(model, test_data, batch_size=20, device="auto", embeddings=True)
    assert on_stand_in(model) and pred.logits.device.type == "cpu"
    ref = engine.predict(copy.deepcopy(init), test_data, batch_size=20, device="cpu", embeddings=True)
    assert same(pred.logits, ref.logits) and same(pred.embeddings, ref.embeddings)
    out = engine.evaluate(copy.deepcopy(init), test_data, device="auto")
    assert out["accuracy"] == engine.evaluate(copy.deepcopy(init), test_data, device="cpu")["accuracy"]


def check_small_engine_helpers(gpu, data, test_data, init):
    assert engine.amp_dtype("auto") is None and engine.precision_name("auto") == "float32"
    assert not engine.make_scaler("auto").is_enabled() and engine.compile_mode(None, "auto") is None
    with engine.autocast("auto"):
        pass
    model = copy.deepcopy(init).to(gpu)
    opt = engine.make_optimizer(model.parameters(), lr=1e-2, device="auto")
    x = engine.batch_input(data, torch.arange(8), "auto", augment="weak")
    assert isinstance(x, StandInTensor)
    engine.optimizer_step(F.cross_entropy(model(x), data.labels[:8].to(gpu)), opt, engine.make_scaler("auto"))
    assert on_stand_in(model)


def check_dataset(gpu, data, test_data, init):
    moved = data.to(gpu)
    assert isinstance(moved.images, StandInTensor) and isinstance(moved.labels, StandInTensor)
    assert isinstance(data.float_images(torch.arange(4), device=gpu), StandInTensor)


def check_measure(gpu, data, test_data, init):
    with active.measure("auto") as m:
        torch.ones(10, device=gpu).sum()
    assert m.method.startswith("psutil") or m.method.startswith("resource")


def check_strategies(gpu, data, test_data, init):
    """Every strategy picks the same rows on the stand-in GPU as on the CPU, from a model left on the CPU."""
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[:20] = True
    pool = active.labeled_view(data, mask)
    for name in active.STRATEGIES:
        kwargs = {"max_iter": 3} if name == "deepfool" else {}
        picks = {}
        for device in ("auto", "cpu"):
            model = copy.deepcopy(init)
            strategy = active.get(name, seed=2, **kwargs)
            picks[device] = strategy.query(model, pool, mask, 10, device=device, val=test_data, batch_size=32)
            if device == "auto" and name != "random":           # random sampling uses no model
                assert on_stand_in(model), name
        assert same(picks["auto"], picks["cpu"]), name
    assert active.deepfool_batch_size(init, data, torch.arange(10), "auto") == 64


def _al(device, data, test_data, init):
    return active.run_active_learning(
        "least_confidence", data, test_data, model_fn=lambda: copy.deepcopy(init), initial_size=24, budget=16,
        cycles=1, fit_kwargs=dict(steps=2, batch_size=16), seed=4, device=device)


def check_run_active_learning(gpu, data, test_data, init):
    got, ref = _al("auto", data, test_data, init), _al("cpu", data, test_data, init)
    assert [c["accuracy"] for c in got.cycles] == [c["accuracy"] for c in ref.cycles]
    assert [s.tolist() for s in got.selected] == [s.tolist() for s in ref.selected]


def _drm(device, data, init):
    return drm_mod.train_drm(copy.deepcopy(init), data.with_labels(data.labels.clone()), val=data.subset(
        torch.arange(16)), epochs=2, batch_size=32, relabel_start_epoch=1, delta2=0.0, progress=False,
        device=device, seed=1)


def check_drm(gpu, data, test_data, init):
    got, ref = _drm("auto", data, init), _drm("cpu", data, init)
    assert on_stand_in(got.model)
    assert same(got.labels, ref.labels) and got.history == ref.history and same(got.alpha, ref.alpha)
    assert drm_mod.evaluate_drm(got.model, test_data, device="auto") == \
        drm_mod.evaluate_drm(ref.model, test_data, device="cpu")


def check_pretrain(gpu, data, test_data, init):
    results = {}
    for device in ("auto", "cpu"):
        model = copy.deepcopy(init)
        torch.manual_seed(9)
        results[device] = pretrain.contrastive_pretrain(model, data, epochs=1, batch_size=32, device=device,
                                                        progress=False, seed=2)
        if device == "auto":
            assert on_stand_in(model) and on_stand_in(results[device].head)
    assert results["auto"].history.train_loss == results["cpu"].history.train_loss


def check_semisup(gpu, data, test_data, init):
    from fernb.methods import semisup
    labels = data.labels.clone()
    labels[48:] = -1
    model = copy.deepcopy(init)
    result = semisup.SemiSupervisedTrainer(model, data.with_labels(labels), None, semisup.FixMatch(),
                                          steps=2, steps_per_epoch=1, batch_size=8, uratio=2, device="auto",
                                          progress=False, val=test_data).run()
    assert on_stand_in(result.student) and on_stand_in(result.teacher)


def check_distributed_init(gpu, data, test_data, init):
    from fernb import distributed
    assert distributed.init("auto") == gpu and distributed.world_size() == 1


def check_run_many(gpu, data, test_data, init):
    from fernb import parallel
    assert parallel.default_workers("auto", 5) == 1             # not CUDA: one job after another, in-process
    out = parallel.run_many(_device_of_job, [{"x": 1}, {"x": 2}], device="auto")
    assert out == [(1, "meta"), (2, "meta")]


def _device_of_job(x, device=None):
    return x, engine.resolve_device(device).type


CALLS = {
    "fernb.engine.resolve_device": check_small_engine_helpers,
    "fernb.engine.amp_dtype": check_small_engine_helpers,
    "fernb.engine.precision_name": check_small_engine_helpers,
    "fernb.engine.autocast": check_small_engine_helpers,
    "fernb.engine.make_scaler": check_small_engine_helpers,
    "fernb.engine.make_optimizer": check_small_engine_helpers,
    "fernb.engine.compile_mode": check_small_engine_helpers,
    "fernb.engine.batch_input": check_small_engine_helpers,
    "fernb.engine.fit": check_fit,
    "fernb.engine.predict": check_predict_evaluate,
    "fernb.engine.evaluate": check_predict_evaluate,
    "fernb.data.dataset.FERDataset.to": check_dataset,
    "fernb.data.dataset.FERDataset.float_images": check_dataset,
    "fernb.methods.active.measure": check_measure,
    "fernb.methods.active.Strategy.query": check_strategies,
    "fernb.methods.active.deepfool_batch_size": check_strategies,
    "fernb.methods.active.run_active_learning": check_run_active_learning,
    "fernb.methods.drm.train_drm": check_drm,
    "fernb.methods.drm.compute_alpha": check_drm,
    "fernb.methods.drm.evaluate_drm": check_drm,
    "fernb.methods.pretrain.contrastive_pretrain": check_pretrain,
    "fernb.methods.semisup.SemiSupervisedTrainer.__init__": check_semisup,
    "fernb.distributed.init": check_distributed_init,
    "fernb.parallel.run_many": check_run_many,
    "fernb.parallel.default_workers": check_run_many,
}


@pytest.mark.parametrize("check", sorted(set(CALLS.values()), key=lambda f: f.__name__), ids=lambda f: f.__name__)
def test_public_functions_taking_device_run_on_the_stand_in_gpu(check, data, test_data, init):
    with stand_in_gpu() as gpu:
        check(gpu, data, test_data, init)


def public_device_functions() -> dict[str, list[str]]:
    """{module: [qualified names of its public functions and methods with a `device` parameter]}."""
    found: dict[str, list[str]] = {}
    for info in pkgutil.walk_packages(fernb.__path__, "fernb."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            members = [(name, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                members = [(f"{name}.{m}", f) for m, f in vars(obj).items()
                           if inspect.isfunction(f) and (not m.startswith("_") or m == "__init__")]
            for qual, fn in members:
                unwrapped = inspect.unwrap(fn)
                if "device" in inspect.signature(unwrapped).parameters:
                    found.setdefault(module.__name__, []).append(f"{module.__name__}.{qual}")
    return found


def test_every_public_function_taking_device_is_checked():
    found = public_device_functions()
    audited = [f for m in AUDITED for f in found.get(m, [])]
    missing = sorted(set(audited) - set(CALLS))
    assert not missing, (f"public functions taking `device` without a stand-in-GPU check: {missing}; add each to "
                         f"CALLS in tests/test_device.py with a function that calls it with device='auto'")
    stale = sorted(set(CALLS) - set(audited))
    assert not stale, f"CALLS names functions that no longer take `device`: {stale}"
    others = sorted(f for m, fs in found.items() if m not in AUDITED for f in fs)
    if others:
        warnings.warn(f"not yet audited on the stand-in GPU (add their modules to AUDITED): {others}", UserWarning)


def test_no_module_reads_the_device_off_a_parameter():
    """The pattern behind crash (2), by source: `next(model.parameters()).device` decides nothing in fernb except
    in fernb.viz, whose Grad-CAM helpers take no `device` and use the model where it lies."""
    offenders = []
    for info in pkgutil.walk_packages(fernb.__path__, "fernb."):
        if info.name.endswith("__main__") or info.name in ("fernb.viz", "fernb.devicecheck"):
            continue
        source = Path(importlib.import_module(info.name).__file__).read_text()
        for pattern in ("parameters()).device", "torch.device(\"auto\")", "torch.device('auto')"):
            if pattern in source:
                offenders.append(f"{info.name}: {pattern}")
    assert not offenders, offenders


def test_measure_on_cuda_keeps_nested_peaks_and_starts_no_sampler_thread(monkeypatch):
    """The CUDA branch of `measure`, with torch.cuda's memory counters faked: no 10 ms RSS thread competes with
    training, and an inner block's reset of the peak counter does not erase the outer block's peak."""
    import threading

    mem = {"allocated": 100 * 2**20, "peak": 100 * 2**20}

    def allocate(mib):
        mem["allocated"] += mib * 2**20
        mem["peak"] = max(mem["peak"], mem["allocated"])

    def reset(device=None):
        mem["peak"] = mem["allocated"]

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: mem["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: mem["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    threads_before = threading.active_count()
    with active.measure("cuda") as outer:
        allocate(500)                      # outer peak: 600 MiB, then freed
        allocate(-500)
        with active.measure("cuda") as inner:
            assert threading.active_count() == threads_before
            allocate(50)
            allocate(-50)
    assert inner.peak_cuda_mb == 50 and outer.peak_cuda_mb == 500
    assert "no sampler thread" in outer.method and outer.peak_rss_mb >= 0
