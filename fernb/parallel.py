"""Independent runs side by side: `run_many(fn, jobs, device=..., workers=...)`.

The notebooks' experiments are many independent runs (seeds x strategies x sweep values) of small models on
small images. One such run leaves a big GPU mostly idle (kernel launches, not arithmetic, bound it), so on CUDA
`run_many` runs several at once, in worker processes that share the GPU; on the CPU it runs them one after another
in this process, since every run already uses all cores.

    from fernb import parallel
    from fernb.methods import active
    jobs = [dict(strategy=name, pool=pool, test=test, model_fn=make_model, seed=seed, fit_kwargs=fit)
            for name in strategies for seed in seeds]
    results = parallel.run_many(active.run_active_learning, jobs, device="auto")   # in the order of `jobs`

Rules, because workers are fresh processes (torch.multiprocessing, "spawn"):

* `fn` and everything in the jobs must pickle: `fn` a module-level function (or a `functools.partial` of one)
  that the workers import by name, not a lambda or a function defined in a notebook cell. Model factories likewise
  (`functools.partial(fernb.models.create, "resnet18", 7)`). A script that calls `run_many` with workers needs
  Python's `if __name__ == "__main__":` guard (spawned workers import the script); a notebook does not.
* Tensors travel through shared memory, not copies: a `FERDataset` in a job is sent as CPU tensors (moved off the
  GPU first) and each worker moves it to its device.
* If `fn` takes a `device` argument and a job leaves it unset (or "auto"), the job gets its worker's device.
* Every job starts from the same global random state (torch, numpy and Python seeded with 0) in either mode, so
  a job's result depends on its arguments only: `run_many` with workers gives the numbers a sequential `run_many`
  gives, for the same seeds (tests/test_parallel.py checks it on the CPU with two processes).

Workers on CUDA: by default `FERNB_WORKERS_PER_GPU` (4) per visible GPU, at most one per job and per CPU core,
each with an equal share of the CPU threads; workers are spread over the GPUs when `device` names no index.
On the CPU, `workers=2` (or more) starts processes too, each with this process's thread count (the same thread
count keeps float results identical; on 2 cores two workers only contend, hence the default of 1).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import pickle
import queue
import random
import traceback
from typing import Any, Callable

import numpy as np
import torch

from .data.dataset import FERDataset
from .engine import resolve_device

__all__ = ["run_many", "default_workers", "JOB_SEED"]

JOB_SEED = 0          # every job starts from torch / numpy / random seeded with this


def default_workers(device, n_jobs: int) -> int:
    """Worker processes `run_many` uses when not told: 1 off CUDA; on CUDA `FERNB_WORKERS_PER_GPU` (default 4)
    per GPU in use, at most `n_jobs` and the number of CPU cores."""
    device = resolve_device(device)
    if device.type != "cuda" or n_jobs <= 1:
        return 1
    gpus = 1 if device.index is not None else max(1, torch.cuda.device_count())
    per_gpu = int(os.environ.get("FERNB_WORKERS_PER_GPU", 4))
    return max(1, min(n_jobs, per_gpu * gpus, os.cpu_count() or 1))


def run_many(fn: Callable, jobs, *, device="auto", workers: int | None = None, progress: bool = False,
             desc: str = "runs", threads: int | None = None) -> list:
    """[fn(**job) for job in jobs], run side by side on `device` where that pays (module docstring).

    device: "auto", "cpu", "cuda", "cuda:N" (`fernb.engine.resolve_device`); workers: processes (None: 
    `default_workers`; 1: in this process, one job after another); threads: torch CPU threads per worker (default:
    an equal share of the usable cores). Returns the results in job order; a job
    that raises stops the batch with a RuntimeError naming the job and carrying the worker's traceback.
    """
    device = resolve_device(device)
    jobs = [dict(job) for job in jobs]
    takes_device = _takes_device(fn)
    n = default_workers(device, len(jobs)) if workers is None else max(1, int(workers))
    n = min(n, len(jobs))
    from tqdm.auto import tqdm

    if n <= 1:
        return [_run_job(fn, job, device, takes_device) for job in tqdm(jobs, desc=desc, disable=not progress)]

    try:
        pickle.dumps(fn)
    except Exception as err:
        raise ValueError(f"run_many with worker processes needs `fn` to be an importable module-level function "
                         f"(or a functools.partial of one), got {fn!r}: {err}") from err
    if threads is None:  # an equal share of the cores: n workers of all this process's threads would oversubscribe
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // n)
    devices = _worker_devices(device, n)
    ctx = torch.multiprocessing.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(fn, str(d), threads, tasks, results), daemon=True) for d in devices]
    for p in procs:
        p.start()
    out: list[Any] = [None] * len(jobs)
    done = False
    try:
        for i, job in enumerate(jobs):
            tasks.put((i, _to_cpu(job)))
        bar = tqdm(total=len(jobs), desc=desc, disable=not progress)
        for _ in range(len(jobs)):
            i, ok, value = _next_result(results, procs)
            if not ok:
                raise RuntimeError(f"run_many: job {i} ({_describe(jobs[i])}) failed in a worker:\n{value}")
            out[i] = value
            bar.update(1)
        bar.close()
        done = True
    finally:
        if not done:
            # Jobs no worker will take may still sit in the queue's pipe; by default the interpreter waits for them
            # to be written at exit, i.e. forever once the workers are gone: the error would be followed by a hang.
            tasks.cancel_join_thread()
        # Sentinels only now: a worker must outlive the parent's reading of its results (shared-memory handles).
        for _ in procs:
            tasks.put(None)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    return out


# ---- internals -------------------------------------------------------------------------------------------------
def _takes_device(fn) -> bool:
    try:
        return "device" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _fresh_random_state(device: torch.device):
    """Seed torch (CPU and `device`), numpy and random with JOB_SEED for the block; restore them afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(JOB_SEED)
        np.random.seed(JOB_SEED)
        random.seed(JOB_SEED)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _run_job(fn, job: dict, device: torch.device, takes_device: bool):
    kwargs = dict(job)
    if takes_device and kwargs.get("device") in (None, "auto"):
        kwargs["device"] = device
    with _fresh_random_state(device):
        return fn(**kwargs)


def _worker_devices(device: torch.device, n: int) -> list[torch.device]:
    if device.type == "cuda" and device.index is None:
        gpus = max(1, torch.cuda.device_count())
        return [torch.device("cuda", k % gpus) for k in range(n)]
    return [device] * n


def _to_cpu(value):
    """FERDatasets and tensors on a GPU, moved to the CPU (they reach the workers through shared memory)."""
    if isinstance(value, FERDataset):
        return value.to("cpu") if value.device.type != "cpu" else value
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _describe(job: dict) -> str:
    short = {k: v for k, v in job.items() if isinstance(v, (int, float, str, bool, type(None)))}
    return ", ".join(f"{k}={v!r}" for k, v in short.items()) or "no scalar arguments"


def _next_result(results, procs):
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"run_many: a worker process died (exit code {dead[0].exitcode}; a negative code "
                                   f"is the signal, -9 often the out-of-memory killer; 1 at start-up often a script "
                                   f"without the `if __name__ == \"__main__\":` guard, see fernb.parallel)") from None


def _worker(fn, device_name: str, threads: int, tasks, results) -> None:
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 - registers the shared-memory reductions of tensors

    os.environ["FERNB_DEVICE"] = device_name        # "auto" inside the jobs means this worker's device
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    takes_device = _takes_device(fn)
    while True:
        item = tasks.get()
        if item is None:
            return
        i, job = item
        try:
            value = _run_job(fn, job, device, takes_device)
            ForkingPickler.dumps(value)                  # fail here, with a message, rather than in the feeder
            results.put((i, True, value))
        except BaseException as err:  # noqa: BLE001 - reported to the parent with the traceback
            results.put((i, False, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
