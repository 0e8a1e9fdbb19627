"""fernb.parallel.run_many: worker processes give the numbers one process gives, for the same seeds."""
from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch

from fernb import engine, models, parallel
from fernb.data import synthfer as S
from fernb.methods import active


def _draw(n: int) -> list[float]:
    return torch.rand(n).tolist() + [float(np.random.rand()), random.random()]


def test_in_process_jobs_start_from_one_random_state_and_leave_the_callers_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    out = parallel.run_many(_draw, [{"n": 2}, {"n": 2}, {"n": 3}], device="cpu")
    assert out[0] == out[1] and out[2][:2] == out[0][:2]       # every job starts from JOB_SEED
    assert torch.equal(torch.rand(1), expected_next)             # the caller's stream is where it was
    assert parallel.default_workers("cpu", 10) == 1


def test_run_many_needs_an_importable_function_for_workers():
    with pytest.raises(ValueError, match="importable module-level function"):
        parallel.run_many(lambda x: x, [{"x": 1}, {"x": 2}], device="cpu", workers=2)


def test_worker_processes_give_the_sequential_numbers_and_report_failures():
    """Two active-learning runs (two strategies, a pool shared through shared memory) in 2 spawned processes on
    the CPU: the same accuracies and the same queried rows, in job order, as in-process; a failing job is named."""
    pool = S.synthfer("train", 96, size=48, cache=False, seed=11)
    test = S.synthfer("test", 48, size=48, cache=False, seed=12)
    model_fn = functools.partial(models.create, "resnet_mini", 7)      # picklable, unlike a closure
    jobs = [dict(strategy=name, pool=pool, test=test, model_fn=model_fn, initial_size=24, budget=12, cycles=1,
                 fit_kwargs=dict(steps=3, batch_size=16), seed=seed)
            for name, seed in (("least_confidence", 0), ("coreset", 1))]
    sequential = parallel.run_many(active.run_active_learning, jobs, device="cpu", workers=1)
    in_workers = parallel.run_many(active.run_active_learning, jobs, device="cpu", workers=2)
    for a, b in zip(sequential, in_workers):
        assert a.strategy == b.strategy
        assert [c["accuracy"] for c in a.cycles] == [c["accuracy"] for c in b.cycles]
        assert [s.tolist() for s in a.selected] == [s.tolist() for s in b.selected]
        assert a.config["device"] == b.config["device"] == "cpu"    # the device was handed to each job
    assert [r.strategy for r in in_workers] == ["least_confidence", "coreset"]

    with pytest.raises(RuntimeError, match=r"job 1 \(device='gpu0'\) failed in a worker"):
        parallel.run_many(engine.resolve_device, [{"device": "cpu"}, {"device": "gpu0"}], device="cpu", workers=2)


def test_workers_that_die_before_taking_their_jobs_give_an_error_not_a_hang(tmp_path):
    """A script without the __main__ guard: each spawned worker re-runs it and dies at start-up, leaving jobs too
    large for the queue's pipe unread. The script must end with run_many's error (the guard named), not wait at
    exit for the unread jobs to be written (it did: the error printed, then the interpreter hung)."""
    import os
    import pathlib
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text("from fernb import engine, parallel\n"
                      "jobs = [dict(device='cpu' + ' ' * 1_000_000)] * 3      # ~1 MB each: more than a pipe holds\n"
                      "parallel.run_many(engine.resolve_device, jobs, device='cpu', workers=2)\n")
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=150,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode != 0
    assert "a worker process died" in done.stderr and '__name__ == "__main__"' in done.stderr
