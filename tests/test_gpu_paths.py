"""GPU-facing code paths that run on a CPU-only machine (issue 7, items 3-4): what the runner tells the kernel
about torch.compile, the compiled-step cache, how run_many spreads workers over GPUs, what an active-learning run
records about compilation, and the GPU benchmark's clean skip without CUDA."""
from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fernb import engine, models, parallel
from fernb.data import synthfer as S
from fernb.methods import active
from fernb.paths import REPO
from fernb.run import _profile_compile


def test_runner_exports_each_profiles_compile_setting_for_the_kernel():
    """`python -m fernb run` sets FERNB_COMPILE per notebook from the profile: CUDA graphs in gpu / paper, eager in
    smoke / cpu (the CPU benchmarks' behaviour is unchanged); `engine.compile_mode` reads it."""
    for nb in ("00_synthfer_tour", "01_fucle_active_learning"):
        path = Path(nb)
        assert _profile_compile(path, "gpu") == "reduce-overhead" == _profile_compile(path, "paper")
        assert _profile_compile(path, "cpu") == "off" == _profile_compile(path, "smoke")
    os.environ["FERNB_COMPILE"] = _profile_compile(Path("00_synthfer_tour"), "gpu")
    try:
        assert engine.compile_mode(None, torch.device("cuda")) == "reduce-overhead"
        assert engine.compile_mode(None, "cpu") == "default"        # a gpu-profile run on a CPU: no CUDA graphs
        os.environ["FERNB_COMPILE"] = "off"                           # the user's off switch
        assert engine.compile_mode(None, torch.device("cuda")) is None
    finally:
        del os.environ["FERNB_COMPILE"]


def _loss(model, x, y, index):
    return torch.nn.functional.cross_entropy(model(x), y), None


class _Holder:
    def loss(self, model, x, y, index):
        return _loss(model, x, y, index)


def test_compiled_keeps_one_wrapper_per_function_and_mode():
    """The many short fits of an AL run ask for the same compiled step: one torch.compile wrapper per (function,
    mode), so Dynamo's cache on the function's code is hit; a bound method is a new object at each access and is
    not cached by identity (its code object still is, by Dynamo)."""
    a = engine.compiled(_loss, "default")
    assert engine.compiled(_loss, "default") is a
    assert engine.compiled(_loss, "max-autotune-no-cudagraphs") is not a
    holder = _Holder()
    assert engine.compiled(holder.loss, "default") is not engine.compiled(holder.loss, "default")


def test_run_many_spreads_workers_over_the_visible_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("FERNB_DEVICE", raising=False)
    monkeypatch.delenv("FERNB_WORKERS_PER_GPU", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert parallel.default_workers("auto", 20) == 8                  # 4 per GPU x 2 GPUs
    assert parallel.default_workers("cuda:1", 20) == 4                # one named GPU
    assert parallel.default_workers("cuda", 3) == 3                   # never more workers than jobs
    assert parallel.default_workers("cuda", 1) == 1
    monkeypatch.setenv("FERNB_WORKERS_PER_GPU", "6")
    assert parallel.default_workers("cuda", 20) == 12
    monkeypatch.setattr(os, "cpu_count", lambda: 5)
    assert parallel.default_workers("cuda", 20) == 5                  # nor more than CPU cores
    assert parallel._worker_devices(torch.device("cuda"), 5) == [torch.device("cuda", k % 2) for k in range(5)]
    assert parallel._worker_devices(torch.device("cuda", 1), 3) == [torch.device("cuda", 1)] * 3


def test_active_learning_cycles_record_each_fits_compile_mode_and_first_step_time(monkeypatch):
    """Compile time is counted where it is paid: every cycle's fit reports its compile mode and its first step's
    time (compilation included); here with Dynamo's eager backend standing in for Inductor."""
    monkeypatch.setattr(engine, "compiled", lambda fn, mode: torch.compile(fn, backend="eager"))
    pool = S.synthfer("train", 96, size=48, cache=False, seed=11)
    test = S.synthfer("test", 32, size=48, cache=False, seed=12)
    model_fn = functools.partial(models.create, "resnet_mini", 7)
    kw = dict(initial_size=24, budget=12, cycles=1, seed=0, device="cpu")
    on = active.run_active_learning("least_confidence", pool, test, model_fn=model_fn,
                                    fit_kwargs=dict(steps=2, batch_size=16, compile=True), **kw)
    off = active.run_active_learning("least_confidence", pool, test, model_fn=model_fn,
                                     fit_kwargs=dict(steps=2, batch_size=16, compile=False), **kw)
    assert [c["compile"] for c in on.cycles] == ["default", "default"]
    assert [c["compile"] for c in off.cycles] == ["off", "off"]
    assert all(c["train_first_step_seconds"] > 0 for c in on.cycles + off.cycles)
    assert [c["accuracy"] for c in on.cycles] == [c["accuracy"] for c in off.cycles]
    assert "train_first_step_seconds" in on.as_frame().columns


def test_bench_gpu_skips_cleanly_without_cuda():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("FERNB_DEVICE", None)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device here" in done.stdout and "Skipped" in done.stdout


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_make_optimizer_is_fused_on_cuda_and_default_on_the_cpu(name):
    """One kernel launch for all parameters on a GPU (the step of a launch-bound fit); the CPU keeps torch's
    default implementation (its float32 results unchanged). torch builds fused optimizers over CPU tensors too,
    which lets this run without a GPU."""
    model = torch.nn.Linear(3, 2)
    assert engine.make_optimizer(model.parameters(), name=name, device=torch.device("cuda")).defaults["fused"]
    assert not engine.make_optimizer(model.parameters(), name=name, device="cpu").defaults.get("fused")


def test_default_profile_follows_the_device_auto_resolves_to(monkeypatch):
    from fernb import profiles
    monkeypatch.delenv("FERNB_DEVICE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.default_profile() == "gpu"
    monkeypatch.setenv("FERNB_DEVICE", "cpu")                # a GPU machine kept off its GPU: the cpu profile
    assert profiles.default_profile() == "cpu"
    monkeypatch.delenv("FERNB_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiles.default_profile() == "cpu"
