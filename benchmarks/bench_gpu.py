"""GPU throughput: `fernb.engine.fit` vs the best plain PyTorch loop, and independent fits run side by side.

    .venv/bin/python benchmarks/bench_gpu.py             # needs CUDA; prints a message and exits 0 without it
    .venv/bin/python benchmarks/bench_gpu.py --quick     # smaller, to check the script runs (~2 min on an H100)
    .venv/bin/python benchmarks/bench_gpu.py --allow-cpu --quick --no-compile   # the code path on a CPU (no timing)

Issue 7's setting: resnet18 (timm, 7 classes) on 8,192 SynthFER images at 64 px, RGB, no augmentation, data as a
uint8 tensor on the GPU, bf16 autocast where the GPU has it (fp16 + GradScaler otherwise), channels_last.

(1) engine.fit vs the best plain loop, at batch 256 and 1,024, same model, initial weights and batches:
    plain loop  `torch.compile(model, mode="reduce-overhead")` (Inductor kernels replayed as CUDA graphs), fused
                AdamW, the same seeded permutation as fit, uint8 -> float -> normalize on the GPU, nothing else;
    fernb       `engine.fit(..., augment=None, scheduler=None)` with its default compile mode on CUDA.
    Throughput is images per second over `--epochs` epochs after one warm-up epoch that pays the compilation
    (compile time is reported on its own row: fit's first fit includes it, later fits of the same architecture
    reuse the graph). Also fit with compile off (eager), for context. Target: fit >= 0.8x the plain loop.
(2) run_many: `--jobs` independent fits (resnet18, 2,048 images, 3 epochs, batch 256: a short AL-cycle-sized fit)
    one after another in this process vs `fernb.parallel.run_many` with 2, 4 and 8 worker processes on the GPU.
    Reported: wall time, speed-up, and mean GPU utilization (torch.cuda.utilization, i.e. NVML, sampled every
    0.5 s; "n/a" without pynvml).
(3) DeepFool query (AdversarialDeepFool, 2,400 candidates, max_iter 50): batch 64 vs the batch sized to free
    memory (`fernb.methods.active.deepfool_batch_size`).
The script never asserts; it prints PASS/FAIL against the targets. Put its output in benchmarks/results.md with the
machine line it prints.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from fernb import engine, models, parallel  # noqa: E402
from fernb.data import augment as aug  # noqa: E402
from fernb.data.synthfer import synthfer  # noqa: E402

from _common import table  # noqa: E402

TARGET = 0.8
SEED = 0


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        gpu = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs"
    else:
        gpu = "no GPU (code-path check only, timings meaningless)"
    return (f"GPU: {gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; precision "
            f"{engine.precision_name(device)}; {torch.get_num_threads()} CPU threads")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Utilization:
    """Mean GPU utilization (NVML through torch.cuda.utilization) sampled every `interval` s in a thread."""

    def __init__(self, device, interval=0.5):
        self.device, self.interval, self.samples = device, interval, []
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            try:
                torch.cuda.utilization(self.device)
            except Exception:               # no pynvml / NVML: utilization is not reported
                return self
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.samples.append(torch.cuda.utilization(self.device))

    def __exit__(self, *exc):
        self._stop.set()

    @property
    def mean(self) -> str:
        return f"{statistics.mean(self.samples):.0f} %" if self.samples else "n/a"


# ---- (1) the plain loop and fit ---------------------------------------------------------------------------------
def plain_loop(init, data, epochs, bs, device, compile_model=True):
    """The best plain loop: compiled model (CUDA graphs), fused AdamW, autocast, batches indexed on the GPU.
    Returns (seconds per epoch for each epoch, model); epoch 0 includes compilation."""
    model = copy.deepcopy(init).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, fused=device.type == "cuda")
    step_model = torch.compile(model, mode="reduce-overhead") if compile_model else model
    scaler = torch.amp.GradScaler(device.type, enabled=engine.amp_dtype(device) == torch.float16)
    images, labels = data.images.to(device), data.labels.to(device)
    n = len(labels)
    steps = n // bs
    times = []
    for epoch in range(epochs):
        torch.manual_seed(SEED * 100_003 + epoch)                 # fit's permutation for this epoch
        order = torch.randperm(n)[: steps * bs].view(steps, bs).to(device)
        sync(device)
        t0 = time.perf_counter()
        for index in order:
            x = ((images[index].float().div_(255.0) - aug.MEAN) / aug.STD).contiguous(
                memory_format=torch.channels_last)
            if compile_model and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            with engine.autocast(device):
                loss = F.cross_entropy(step_model(x), labels[index])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times, model


def fernb_fit(init, data, epochs, bs, device, compile=None):
    model = copy.deepcopy(init)
    times = []
    t_last = [time.perf_counter()]

    def lap(epoch, history):
        sync(device)
        now = time.perf_counter()
        times.append(now - t_last[0])
        t_last[0] = now

    sync(device)
    t_last[0] = time.perf_counter()
    hist = engine.fit(model, data, epochs=epochs, batch_size=bs, lr=1e-3, augment=None, scheduler=None,
                      device=device, seed=SEED, progress=False, compile=compile, callbacks=(lap,))
    return times, hist


def throughput_rows(init, data, device, batches, epochs, compile_ok):
    rows = []
    n = len(data)
    for bs in batches:
        images_per_epoch = (n // bs) * bs
        plain_t, _ = plain_loop(init, data, epochs + 1, bs, device, compile_model=compile_ok)
        first_fit, _ = fernb_fit(init, data, epochs + 1, bs, device, compile=None if compile_ok else False)
        warm_fit, hist = fernb_fit(init, data, epochs + 1, bs, device, compile=None if compile_ok else False)
        eager_fit, _ = fernb_fit(init, data, epochs + 1, bs, device, compile=False)
        plain = images_per_epoch / statistics.median(plain_t[1:])
        fit = images_per_epoch / statistics.median(warm_fit[1:])
        eager = images_per_epoch / statistics.median(eager_fit[1:])
        ratio = fit / plain
        rows.append({"measurement": f"resnet18 64 px, batch {bs}: images/s (steady state)",
                     "fernb": f"{fit:,.0f}", "baseline": f"{plain:,.0f}", "ratio": f"{ratio:.2f}x",
                     "target": f">= {TARGET}x", "verdict": "PASS" if ratio >= TARGET else "FAIL",
                     "note": f"fit compile={hist.compile}; eager fit {eager:,.0f} img/s ({eager / plain:.2f}x)"})
        rows.append({"measurement": f"  batch {bs}: first epoch incl. compilation (s)",
                     "fernb": f"{first_fit[0]:.1f} (first fit), {warm_fit[0]:.1f} (next fit)",
                     "baseline": f"{plain_t[0]:.1f}", "ratio": "-", "target": "(context)", "verdict": "-",
                     "note": f"fit's first step {hist.first_step_seconds:.2f} s in the next fit"})
    return rows


# ---- (2) run_many ------------------------------------------------------------------------------------------------
def short_fit(n_images: int, epochs: int, batch_size: int, seed: int, device=None) -> float:
    """One AL-cycle-sized fit (module level: run_many's workers import it). Returns its final train loss."""
    data = synthfer("train", n_images, size=64, channels=3, seed=seed)
    torch.manual_seed(seed)
    model = models.create("resnet18", 7)
    hist = engine.fit(model, data, epochs=epochs, batch_size=batch_size, device=device, seed=seed, progress=False)
    return hist.train_loss[-1]


def run_many_rows(device, jobs, worker_counts, n_images):
    specs = [dict(n_images=n_images, epochs=3, batch_size=256, seed=s) for s in range(jobs)]
    synthfer("train", n_images, size=64, channels=3, seed=0)          # render + cache once, outside the timing
    for s in range(jobs):
        synthfer("train", n_images, size=64, channels=3, seed=s)
    rows = []
    with Utilization(device) as util:
        t0 = time.perf_counter()
        sequential = parallel.run_many(short_fit, specs, device=device, workers=1)
        base = time.perf_counter() - t0
    rows.append({"measurement": f"{jobs} fits one after another (s)", "fernb": f"{base:.1f}", "baseline": "-",
                 "ratio": "1.00x", "target": "(reference)", "verdict": "-", "note": f"GPU busy {util.mean}"})
    for w in worker_counts:
        with Utilization(device) as util:
            t0 = time.perf_counter()
            out = parallel.run_many(short_fit, specs, device=device, workers=w)
            took = time.perf_counter() - t0
        rows.append({"measurement": f"{jobs} fits, run_many with {w} workers (s)", "fernb": f"{took:.1f}",
                     "baseline": f"{base:.1f}", "ratio": f"{base / took:.2f}x", "target": "(> 1x: pays)",
                     "verdict": "-", "note": f"GPU busy {util.mean}; same losses as sequential: "
                                             f"{'yes' if out == sequential else 'no (GPU kernels are not bitwise deterministic)'}"})
    return rows


# ---- (3) DeepFool batch ------------------------------------------------------------------------------------------
def deepfool_rows(init, data, device, candidates):
    from fernb.methods import active
    model = copy.deepcopy(init).to(device).eval()
    rows_idx = torch.arange(min(candidates, len(data)))
    out = {}
    for label, batch in (("64", 64), ("sized", None)):
        strategy = active.AdversarialDeepFool(seed=0, deepfool_batch_size=batch)
        mask = torch.zeros(len(data), dtype=torch.bool)
        mask[rows_idx[-1] + 1:] = True                                # only the candidates are unlabeled
        sync(device)
        t0 = time.perf_counter()
        strategy.query(model, data, mask, 100, device=device)
        sync(device)
        out[label] = time.perf_counter() - t0
    sized = active.deepfool_batch_size(model, data, rows_idx, device)
    return [{"measurement": f"DeepFool query, {len(rows_idx)} candidates (s)", "fernb": f"{out['sized']:.1f}",
             "baseline": f"{out['64']:.1f}", "ratio": f"{out['64'] / out['sized']:.2f}x", "target": "(context)",
             "verdict": "-", "note": f"sized batch {sized} vs 64"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=None, help="default 8192 (quick 2048)")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs after the warm-up (default 3)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 256 1024")
    parser.add_argument("--jobs", type=int, default=None, help="independent fits for run_many (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="default 2 4 8")
    parser.add_argument("--skip", nargs="*", default=(), choices=("throughput", "run_many", "deepfool"))
    parser.add_argument("--allow-cpu", action="store_true", help="run the code path on a CPU (tiny, untimed)")
    parser.add_argument("--no-compile", action="store_true", help="plain loop and fit without torch.compile")
    args = parser.parse_args()
    device = engine.resolve_device("auto")
    if device.type != "cuda" and not args.allow_cpu:
        print("bench_gpu: no CUDA device here; nothing to measure (run it on a GPU machine). Skipped.")
        return
    quick = args.quick or device.type != "cuda"
    n = args.images or (256 if device.type != "cuda" else 2048 if quick else 8192)
    epochs = args.epochs or (1 if quick else 3)
    batches = args.batches or ([64] if device.type != "cuda" else [256] if quick else [256, 1024])
    jobs = args.jobs or (2 if device.type != "cuda" else 4 if quick else 8)
    workers = args.workers or ([2] if device.type != "cuda" else [4] if quick else [2, 4, 8])
    compile_ok = not args.no_compile and device.type == "cuda"

    print("# GPU throughput: engine.fit vs the best plain loop; run_many\n")
    print(machine(device))
    data = synthfer("train", n, size=64, channels=3, seed=0)
    torch.manual_seed(0)
    init = models.create("resnet18", 7)
    rows = []
    t0 = time.perf_counter()
    if "throughput" not in args.skip:
        rows += throughput_rows(init, data, device, batches, epochs, compile_ok)
    if "run_many" not in args.skip:
        rows += run_many_rows(device, jobs, workers, 256 if device.type != "cuda" else 2048)
    if "deepfool" not in args.skip:
        rows += deepfool_rows(init, data, device, 64 if device.type != "cuda" else 2400)
    print(table(rows, ["measurement", "fernb", "baseline", "ratio", "target", "verdict", "note"]))
    print(f"\n{n} SynthFER images, 64 px; {epochs} timed epochs after one warm-up epoch; medians of per-epoch "
          f"times. Timed part: {time.perf_counter() - t0:.0f} s.")


if __name__ == "__main__":
    main()
