"""Helpers shared by the benchmark scripts: machine description, number/table formatting, and waiting for a quiet
CPU before each measurement. A plain module, not a package: each script puts its own folder on sys.path and imports
it, so every script still runs as `python benchmarks/<name>.py` from the repository root.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"CPU: {cpu}, {cores} usable cores ({os.cpu_count()} online); torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op threads; "
            f"Python {platform.python_version()}; load average (1/5/15 min) {load}")


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def spread(values: list[float]) -> str:
    return f"{fmt(min(values))}..{fmt(max(values))}"


def table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def cpu_busy(window: float = 0.5) -> float:
    """Fraction of all cores busy over `window` seconds (from /proc/stat); called while this process is idle, it
    is the load other processes put on the machine. NaN where /proc/stat is missing."""
    def snap():
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(v), v[3] + v[4]
    try:
        t1, i1 = snap()
        time.sleep(window)
        t2, i2 = snap()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return 1 - (i2 - i1) / max(1, t2 - t1)


QUIET: list[float] = []  # others' CPU use seen just before each timed measurement


def wait_quiet(max_wait: float, threshold: float = 0.2) -> None:
    """Wait up to `max_wait` s for the machine to be quiet (others use < threshold of the cores): on a shared
    machine, torch's threads stall whenever another process takes a core, so a busy spell can slow a side 5-10x."""
    t0 = time.perf_counter()
    busy = cpu_busy()
    while not busy < threshold and time.perf_counter() - t0 < max_wait:
        busy = cpu_busy(1.0)
    QUIET.append(busy)


def quiet_note() -> str:
    seen = [b for b in QUIET if b == b]
    if not seen:
        return "other processes' CPU use before each measurement: not measured"
    busy = sum(b >= 0.2 for b in seen)
    return (f"other processes' CPU use just before each measurement: median {statistics.median(seen):.0%}, max "
            f"{max(seen):.0%} of the cores; {busy} of {len(seen)} measurements started on a busy machine")
