"""SynthFER render rate on the CPU: images per second at 48, 64, 112 and 224 px, RGB and grayscale.

    .venv/bin/python benchmarks/bench_synthfer.py            # full (~1-2 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_synthfer.py --quick    # smoke check (< 60 s)

What is timed: `fernb.data.synthfer.render_images(params, ident, size, channels)` -- the renderer alone, on
parameters from `sample_params` and identity rows from `identity_table` drawn outside the timer (no cache is read or
written). One extra row times the whole builder, `synthfer("train", n, cache=False)` (sampling + identities + render
+ FERDataset), at 64 px. Every round draws a new seed, so no round re-renders the pictures of another, and the
configurations are visited in a rotated order each round so drift on a shared machine hits all of them alike.

The target (DESIGN.md, SynthFER docstring): >= 1,000 images/s at 64 px RGB on 2 CPU cores. The "baseline" column
of the render rows is that target; one side-by-side row checks the renderer's claim that chunks of 64 images are
faster than chunks of 256 (working set in cache), as context. Medians over rounds are printed with the min..max
range, so the noise of the machine is visible. The script never asserts; it prints PASS/FAIL.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _common, the helpers shared by the benchmarks

import torch  # noqa: E402

from fernb.data import synthfer as S  # noqa: E402

from _common import fmt, machine, quiet_note, spread, table, wait_quiet  # noqa: E402

TARGET_64 = 1000.0  # images/s, 64 px RGB, 2 CPU cores


# ---- the measurement ------------------------------------------------------------------------------------------------
def inputs(n: int, seed: int):
    ids = torch.arange(n) % 200
    params = S.sample_params(n, num_classes=7, seed=seed, identities=ids)
    ident = S.identity_table(ids, seed)
    return params, ident


def render_rate(n: int, size: int, channels: int, seed: int, chunk: int = 64) -> float:
    params, ident = inputs(n, seed)
    t0 = time.perf_counter()
    images, _ = S.render_images(params, ident, size, channels, chunk=chunk)
    dt = time.perf_counter() - t0
    assert images.shape == (n, channels, size, size)
    return n / dt


def builder_rate(n: int, seed: int) -> float:
    t0 = time.perf_counter()
    ds = S.synthfer("train", n, size=64, channels=3, seed=seed, cache=False)
    dt = time.perf_counter() - t0
    assert len(ds) == n
    return n / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 rounds (< 60 s)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 5; quick 3)")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds to wait, before each measurement, for other processes to leave the CPU "
                             "(default 30; quick 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 5)
    max_wait = args.max_wait if args.max_wait is not None else (3 if args.quick else 30)
    # images per timed render: enough for >= ~1 s per measurement at the full size
    if args.quick:
        n_for = {48: 256, 64: 256, 112: 64, 224: 16}
    else:
        n_for = {48: 2048, 64: 2048, 112: 512, 224: 128}

    print("# SynthFER render rate\n")
    print(machine())
    print(f"mode: {'quick' if args.quick else 'full'}, {rounds} rounds; images per timed call: "
          + ", ".join(f"{s} px: {n}" for s, n in n_for.items()) + "\n")

    # First call in a fresh process (one-time kernel/allocator set-up), reported but not part of the rates.
    t0 = time.perf_counter()
    render_rate(64, 64, 3, seed=10_000)
    cold = time.perf_counter() - t0
    for size in n_for:                                   # warm-up of every size, not reported
        render_rate(16, size, 3, seed=10_001)

    configs = [("render 48 px RGB", 48, 3, 64), ("render 64 px RGB", 64, 3, 64), ("render 112 px RGB", 112, 3, 64),
               ("render 224 px RGB", 224, 3, 64), ("render 64 px grayscale", 64, 1, 64),
               ("render 64 px RGB, chunk=256", 64, 3, 256)]
    results: dict[str, list[float]] = {c[0]: [] for c in configs}
    results["synthfer(cache=False) 64 px RGB"] = []
    t_start = time.perf_counter()
    for r in range(rounds):
        order = configs[r % len(configs):] + configs[: r % len(configs)]
        for name, size, ch, chunk in order:
            wait_quiet(max_wait)
            results[name].append(render_rate(n_for[size], size, ch, seed=r, chunk=chunk))
        wait_quiet(max_wait)
        results["synthfer(cache=False) 64 px RGB"].append(builder_rate(n_for[64], seed=r))
    elapsed = time.perf_counter() - t_start

    rows = []
    med = {k: statistics.median(v) for k, v in results.items()}
    for name, size, ch, chunk in configs[:5]:
        row = {"measurement": f"{name} (images/s)", "fernb": fmt(med[name]), "range (rounds)": spread(results[name])}
        if size == 64 and ch == 3:
            row.update(baseline=f"{TARGET_64:,.0f} (target)", ratio=f"{med[name] / TARGET_64:.2f}x",
                       target=">= 1,000 images/s", verdict="PASS" if med[name] >= TARGET_64 else "FAIL")
        else:
            row.update(baseline="-", ratio="-", target="(context)", verdict="-")
        rows.append(row)
    b = results["synthfer(cache=False) 64 px RGB"]
    rows.append({"measurement": "synthfer('train', cache=False) 64 px RGB, whole builder (images/s)",
                 "fernb": fmt(med["synthfer(cache=False) 64 px RGB"]), "range (rounds)": spread(b),
                 "baseline": "-", "ratio": "-", "target": "(context)", "verdict": "-"})
    c64, c256 = results["render 64 px RGB"], results["render 64 px RGB, chunk=256"]
    paired = [a / c for a, c in zip(c64, c256)]
    rows.append({"measurement": "chunk=64 (default) vs chunk=256, 64 px RGB (images/s)",
                 "fernb": fmt(med["render 64 px RGB"]),
                 "baseline": fmt(med["render 64 px RGB, chunk=256"]), "ratio": f"{statistics.median(paired):.2f}x",
                 "range (rounds)": f"ratio {min(paired):.2f}..{max(paired):.2f}",
                 "target": "(context; render_images' docstring: ~1.3x)", "verdict": "-"})
    print(table(rows, ["measurement", "fernb", "baseline", "ratio", "range (rounds)", "target", "verdict"]))
    spreads = [(max(v) - min(v)) / statistics.median(v) for v in results.values()]
    print(f"\nnoise: max-min spread across rounds is {min(spreads):.0%}..{max(spreads):.0%} of the median "
          f"(per measurement); medians are reported. First render call in this process (64 images, 64 px): "
          f"{cold:.2f} s ({64 / cold:,.0f} images/s, one-time set-up, not in the rates). "
          f"Timed part: {elapsed:.0f} s.")
    print(quiet_note())
    print(machine().split("; ")[-1])


if __name__ == "__main__":
    main()
