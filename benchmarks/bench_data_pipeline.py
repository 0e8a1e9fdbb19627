"""fernb's data path (uint8 tensor cache + batched augmentation) vs torchvision ImageFolder + PIL + DataLoader, on the
same SynthFER images, on the CPU.

    .venv/bin/python benchmarks/bench_data_pipeline.py            # full (~3-4 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_data_pipeline.py --quick    # smoke check (< 60 s)

The images: `--n` SynthFER train images at 64 px RGB, rendered once; for the baseline they are written to a temporary
folder as PNG (lossless, so both sides see the same pixels) and again as JPEG (quality 95), one folder per class
(`0_neutral/00012.png` ...), which is what `torchvision.datasets.ImageFolder` reads.

fernb side      indices of a batch of 128 into the uint8 (N, 3, 64, 64) tensor -> `fernb.engine.batch_input(...,
                augment=fernb.data.augment.weak)`: float, per-sample random resized crop + flip as one batched
                `grid_sample`, normalize; labels indexed alongside. No worker processes.
baseline        `ImageFolder(root, transform)` with RandomResizedCrop(64, scale=(0.75, 1), ratio=(0.9, 1.1)) +
                RandomHorizontalFlip + ToTensor + Normalize(0.5, 0.5) per sample in PIL, through
                `DataLoader(batch_size=128, shuffle=True, num_workers=2)`; each epoch starts its workers (the
                default, persistent_workers=False), and that start-up is part of the epoch a user waits for.

(a) data side alone: augmented batches delivered per second, as images/s (drop_last on both sides, so the same
    number of images); target fernb >= 5x the baseline.
(b) end to end: one epoch of resnet_mini training at 64 px on the first `--e2e-n` images, same initial weights,
    AdamW(lr 1e-3, weight_decay 5e-4 -- fit's default), batch 128, drop_last. fernb side: `fernb.engine.fit(epochs=1,
    augment="weak", scheduler=None, progress=False)`; baseline: a plain PyTorch loop over the DataLoader.
    Target fernb >= 1.5x. A context row, "ceiling", times the same training steps on batches made before the
    clock starts: its ratio to the baseline is the most that any data path could gain end to end on this machine.
Threads are left at their defaults (what a user gets) and printed: the main process uses torch.get_num_threads()
threads for the model while the DataLoader's workers use 1 thread each (DataLoader sets that).

Rounds alternate the sides in a rotated order; the tables give medians, the per-round ratio range, and the script
never asserts (PASS/FAIL is printed).
"""
from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common, the helpers shared by the benchmarks

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from fernb import engine, models  # noqa: E402
from fernb.data import augment as aug  # noqa: E402
from fernb.data.synthfer import synthfer  # noqa: E402

from _common import fmt, machine, quiet_note, table, wait_quiet  # noqa: E402

TARGET_DATA = 5.0
TARGET_E2E = 1.5
CPU = torch.device("cpu")


# ---- comparison rows ------------------------------------------------------------------------------------------------
def compare(name: str, ours: list[float], base: list[float], target: float, unit: str = "images/s") -> dict:
    """Medians of both sides, the median of the per-round ratios (rounds are paired) and its range."""
    ratios = [a / b for a, b in zip(ours, base)]
    r = statistics.median(ratios)
    return {"measurement": f"{name} ({unit})", "fernb": fmt(statistics.median(ours)),
            "baseline": fmt(statistics.median(base)), "ratio": f"{r:.2f}x",
            "ratio range (rounds)": f"{min(ratios):.2f}..{max(ratios):.2f}", "target": f">= {target:g}x",
            "verdict": "PASS" if r >= target else "FAIL"}


# ---- data -----------------------------------------------------------------------------------------------------------
def write_image_folder(ds, root: Path, ext: str, quality: int = 95) -> tuple[float, int]:
    """Write every image of `ds` as root/<label>_<class>/<index>.<ext>; returns (seconds, total bytes)."""
    t0 = time.perf_counter()
    arr = ds.images.permute(0, 2, 3, 1).numpy()
    for c, name in enumerate(ds.classes):
        (root / f"{c}_{name}").mkdir(parents=True, exist_ok=True)
    total = 0
    for i, (img, y) in enumerate(zip(arr, ds.labels.tolist())):
        path = root / f"{y}_{ds.classes[y]}" / f"{i:05d}.{ext}"
        im = Image.fromarray(np.ascontiguousarray(img))
        if ext == "png":
            im.save(path)
        else:
            im.save(path, quality=quality)
        total += path.stat().st_size
    return time.perf_counter() - t0, total


def baseline_transform():
    return transforms.Compose([
        transforms.RandomResizedCrop(64, scale=(0.75, 1.0), ratio=(0.9, 1.1)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([aug.MEAN] * 3, [aug.STD] * 3),
    ])


def image_folder(root: Path, keep: int | None = None):
    """ImageFolder over root, optionally restricted (Subset) to the images whose original index is < keep."""
    folder = datasets.ImageFolder(str(root), transform=baseline_transform())
    if keep is None:
        return folder
    idx = [i for i, (path, _) in enumerate(folder.samples) if int(Path(path).stem) < keep]
    return Subset(folder, idx)


def loader(dataset, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)


# ---- (a) data side --------------------------------------------------------------------------------------------------
def fernb_data_rate(ds, batch_size: int, epochs: int) -> float:
    seen = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(ds))
        for index in order[: len(ds) // batch_size * batch_size].view(-1, batch_size):
            x = engine.batch_input(ds, index, CPU, aug.weak)
            y = ds.labels[index]
            seen += x.shape[0]
    dt = time.perf_counter() - t0
    assert y.shape[0] == batch_size
    return seen / dt


def baseline_data_rate(dl: DataLoader, epochs: int = 1) -> float:
    seen = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in dl:
            seen += x.shape[0]
    return seen / (time.perf_counter() - t0)


# ---- (b) end to end -------------------------------------------------------------------------------------------------
def fernb_train_rate(init, ds, batch_size: int) -> float:
    model = copy.deepcopy(init)
    t0 = time.perf_counter()
    engine.fit(model, ds, epochs=1, batch_size=batch_size, lr=1e-3, augment="weak", scheduler=None,
               progress=False, device="cpu")
    dt = time.perf_counter() - t0
    return len(ds) // batch_size * batch_size / dt


def baseline_train_rate(init, dl) -> float:
    """A plain PyTorch loop over `dl` (a DataLoader, or a list of ready (x, y) batches for the ceiling)."""
    model = copy.deepcopy(init).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    seen = 0
    t0 = time.perf_counter()
    for x, y in dl:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += x.shape[0]
    return seen / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 2 rounds (< 60 s)")
    parser.add_argument("--n", type=int, default=None, help="images rendered (default 4000; quick 512)")
    parser.add_argument("--e2e-n", type=int, default=None,
                        help="images in the training epoch (default 2048; quick 256)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default 3; quick 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait, before each measurement, for other processes to leave the CPU "
                             "(default 30; quick 3)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--keep", type=str, default=None, help="write the image folders here and keep them")
    args = parser.parse_args()
    n = args.n or (512 if args.quick else 4000)
    e2e_n = min(n, args.e2e_n or (256 if args.quick else 2048))
    rounds = args.rounds or (2 if args.quick else 3)
    bs = args.batch_size
    max_wait = args.max_wait if args.max_wait is not None else (3 if args.quick else 30)

    print("# Data pipeline: fernb tensor cache + batched augmentation vs ImageFolder + PIL + DataLoader\n")
    print(machine())
    print(f"mode: {'quick' if args.quick else 'full'}, {rounds} rounds; {n} SynthFER images 64 px RGB; batch {bs}; "
          f"DataLoader num_workers={args.workers} (1 torch thread each), main process "
          f"{torch.get_num_threads()} torch threads; end-to-end epoch on {e2e_n} images\n")

    t0 = time.perf_counter()
    ds = synthfer("train", n, size=64, channels=3, seed=0, cache=False)
    t_render = time.perf_counter() - t0
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fernb-bench-pipeline-"))
    try:
        t_png, b_png = write_image_folder(ds, tmp / "png", "png")
        t_jpg, b_jpg = write_image_folder(ds, tmp / "jpeg", "jpg")
        print(f"rendered {n} images in {t_render:.1f} s (uint8 tensor {ds.images.numel() / 2**20:.1f} MiB); wrote PNG "
              f"({b_png / 2**20:.1f} MiB, {t_png:.1f} s) and JPEG q95 ({b_jpg / 2**20:.1f} MiB, {t_jpg:.1f} s) "
              f"to {tmp}\n")
        dl = {k: loader(image_folder(tmp / k), bs, args.workers) for k in ("png", "jpeg")}

        # warm-up, not reported: first calls of grid_sample, worker start, PIL codecs
        fernb_data_rate(ds, bs, 1)
        for k in dl:
            baseline_data_rate(dl[k])
        fernb_epochs = max(1, round(3 * 4000 / n)) if not args.quick else 4
        data = {"fernb": [], "png": [], "jpeg": []}
        sides = list(data)
        for r in range(rounds):
            for side in sides[r % 3:] + sides[: r % 3]:
                wait_quiet(max_wait)
                rate = fernb_data_rate(ds, bs, fernb_epochs) if side == "fernb" else baseline_data_rate(dl[side])
                data[side].append(rate)
        name = "(a) data side: augmented batches, vs ImageFolder"
        rows = [compare(f"{name} PNG", data["fernb"], data["png"], TARGET_DATA),
                compare(f"{name} JPEG", data["fernb"], data["jpeg"], TARGET_DATA)]

        if not args.skip_e2e:
            torch.manual_seed(0)
            init = models.create("resnet_mini", 7)
            sub = ds.subset(torch.arange(e2e_n))
            dl_e2e = {k: loader(image_folder(tmp / k, keep=e2e_n), bs, args.workers) for k in ("png", "jpeg")}
            assert len(dl_e2e["png"].dataset) == e2e_n
            # warm-up, not reported: a first optimizer step pays one-time set-up on either side
            warm = copy.deepcopy(init)
            engine.fit(warm, sub.subset(torch.arange(bs)), epochs=1, batch_size=bs, scheduler=None, progress=False,
                       device="cpu")
            # the ceiling: the same training steps on batches made before the clock starts (no data loading at all)
            premade = [(engine.batch_input(sub, index, CPU, aug.weak), sub.labels[index])
                       for index in torch.randperm(e2e_n)[: e2e_n // bs * bs].view(-1, bs)]
            e2e = {"fernb": [], "png": [], "jpeg": [], "compute": []}
            e2e_sides = list(e2e)
            for r in range(rounds):
                for side in e2e_sides[r % 4:] + e2e_sides[: r % 4]:
                    wait_quiet(max_wait)
                    if side == "fernb":
                        rate = fernb_train_rate(init, sub, bs)
                    elif side == "compute":
                        rate = baseline_train_rate(init, premade)
                    else:
                        rate = baseline_train_rate(init, dl_e2e[side])
                    e2e[side].append(rate)
            rows += [compare("(b) end to end: 1 epoch resnet_mini, vs ImageFolder PNG", e2e["fernb"], e2e["png"],
                             TARGET_E2E),
                     compare("(b) end to end: 1 epoch resnet_mini, vs ImageFolder JPEG", e2e["fernb"], e2e["jpeg"],
                             TARGET_E2E)]
            ceiling = compare("(b) ceiling: the training steps alone on pre-made batches, vs ImageFolder PNG",
                              e2e["compute"], e2e["png"], TARGET_E2E)
            ceiling.update(target="(context: the most any data path can gain)", verdict="-")
            rows.append(ceiling)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(table(rows, ["measurement", "fernb", "baseline", "ratio", "ratio range (rounds)", "target", "verdict"]))
    print("\nfernb / baseline are medians over rounds; ratio is the median of the per-round ratios (each round runs "
          "the sides back to back, in a rotated order); the range shows how noisy the machine was.")
    print(quiet_note())
    print(machine().split("; ")[-1])


if __name__ == "__main__":
    main()
