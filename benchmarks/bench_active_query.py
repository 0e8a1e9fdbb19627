"""Query cost of CoreSet (k-center greedy) and BADGE (k-means++ on gradient embeddings) on a large pool, CPU.

    .venv/bin/python benchmarks/bench_active_query.py            # 50,000 x 512 pool, 7 classes, 5% labeled
    .venv/bin/python benchmarks/bench_active_query.py --threads 1

Selection runs on random embeddings and random softmax outputs, so only the selection itself is timed (no network).
For each method and n in {100, 1000} it prints wall time and peak memory: the peak resident set size above its
value when the query starts, sampled every 10 ms by `fernb.methods.active.measure` (tracemalloc cannot see torch's
allocations). Every case runs in a fresh subprocess, so one case's freed-but-cached memory cannot hide (or inflate)
the next one's. The requirement checked is peak memory < 2 GB per query (PASS/FAIL; the script never asserts).

A side-by-side on a 10,000-point subset compares the chunked k-center greedy with the naive version that
materializes the full N x N distance matrix (torch.cdist) and prints the memory and time ratios. GLISTER (greedy,
one validation-gradient update per pick) is timed too, for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import torch

LIMIT_MB = 2048


def make_pool(args):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(args.pool, args.dim, generator=g)
    probs = (2.0 * torch.randn(args.pool, args.classes, generator=g)).softmax(dim=1)
    labeled = torch.zeros(args.pool, dtype=torch.bool)
    labeled[torch.randperm(args.pool, generator=g)[:round(args.labeled * args.pool)]] = True
    return g, emb, probs, labeled


def naive_kcenter(x: torch.Tensor, labeled: torch.Tensor, n: int) -> torch.Tensor:
    """Textbook k-center greedy over a full N x N distance matrix (what the chunked version avoids)."""
    dist = torch.cdist(x, x)                                   # N x N
    delta = dist[:, labeled].min(dim=1).values
    delta[labeled] = -1.0
    picked = []
    for _ in range(n):
        u = int(delta.argmax())
        picked.append(u)
        delta = torch.minimum(delta, dist[u])
        delta[u] = -1.0
        delta[labeled] = -1.0
    return torch.tensor(picked)


def child(args) -> None:
    """Run one case and print one JSON line."""
    from fernb.methods import active
    g, emb, probs, labeled = make_pool(args)
    n, case = args.n_child, args.child
    if case == "coreset":
        fn = lambda: active.kcenter_greedy(emb, labeled, n)  # noqa: E731
    elif case == "badge":
        fn = lambda: active.badge_select(probs, emb, labeled, n, torch.Generator().manual_seed(0))  # noqa: E731
    elif case == "glister":
        val_emb = torch.randn(args.glister_val, args.dim, generator=g)
        val_logits = 2.0 * torch.randn(args.glister_val, args.classes, generator=g)
        val_labels = torch.randint(0, args.classes, (args.glister_val,), generator=g)
        fn = lambda: active.glister_select(probs, emb, labeled, n, val_logits, val_emb, val_labels)  # noqa: E731
    elif case in ("naive", "chunked"):
        emb, labeled = emb[:args.naive_pool].clone(), labeled[:args.naive_pool].clone()
        if case == "naive":
            fn = lambda: naive_kcenter(emb, labeled, n)  # noqa: E731
        else:
            fn = lambda: active.kcenter_greedy(emb, labeled, n)  # noqa: E731
    else:
        raise ValueError(case)
    # warm-up on a slice (kernel selection, thread pool), not measured
    active.kcenter_greedy(emb[:2000], labeled[:2000], 5)
    with active.measure() as m:
        out = fn()
    ok = len(out) == n and len(set(out.tolist())) == n and not bool(labeled[out].any())
    print(json.dumps({"seconds": m.seconds, "peak_mb": m.peak_rss_mb, "rss_start_mb": m.rss_start_mb,
                      "contract": ok, "picked": out.tolist()}))


def run_case(args, case: str, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, "--n-child", str(n),
           "--pool", str(args.pool), "--dim", str(args.dim), "--classes", str(args.classes),
           "--labeled", str(args.labeled), "--naive-pool", str(args.naive_pool),
           "--glister-val", str(args.glister_val)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} n={n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=7)
    parser.add_argument("--labeled", type=float, default=0.05)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--naive-pool", type=int, default=10_000)
    parser.add_argument("--naive-n", type=int, default=1000)
    parser.add_argument("--glister-val", type=int, default=2000, help="validation rows for GLISTER; 0 skips it")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return

    n_labeled = round(args.labeled * args.pool)
    print(f"pool {args.pool} x {args.dim} float32 ({args.pool * args.dim * 4 / 2**20:.0f} MB), {args.classes} "
          f"classes, {n_labeled} labeled; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.machine()}, load average {os.getloadavg()[0]:.2f}")
    print("peak MB = peak RSS above the query's start (psutil, 10 ms sampling), each case in a fresh process\n")

    cases = [("coreset", "coreset kcenter_greedy"), ("badge", "badge badge_select")]
    if args.glister_val:
        cases.append(("glister", f"glister glister_select (val {args.glister_val})"))
    rows = []
    for n in args.n:
        for case, label in cases:
            r = run_case(args, case, n)
            r["case"] = f"{label} n={n}"
            rows.append(r)

    print(f"{'case':<44} {'seconds':>9} {'ms/pick':>8} {'peak MB':>9}  < {LIMIT_MB} MB  contract")
    for r in rows:
        ok = "PASS" if r["peak_mb"] < LIMIT_MB else "FAIL"
        print(f"{r['case']:<44} {r['seconds']:9.2f} {1000 * r['seconds'] / len(r['picked']):8.2f} "
              f"{r['peak_mb']:9.1f}  {ok:>10}  {'ok' if r['contract'] else 'BROKEN'}")
    print(f"\nrequirement peak < {LIMIT_MB} MB for every query on the {args.pool}-point pool: "
          f"{'PASS' if all(r['peak_mb'] < LIMIT_MB for r in rows) else 'FAIL'}")

    # ---- chunked vs naive N x N on a subset ------------------------------------------------------------------
    m = args.naive_pool
    naive, chunked = run_case(args, "naive", args.naive_n), run_case(args, "chunked", args.naive_n)
    print(f"\nside by side on a {m}-point subset, n={args.naive_n} "
          f"(the {m} x {m} float32 distance matrix alone is {m * m * 4 / 2**20:.0f} MB)")
    print(f"{'case':<44} {'seconds':>9} {'peak MB':>9}")
    for label, r in (("naive: full cdist + greedy", naive), ("chunked kcenter_greedy", chunked)):
        print(f"{label:<44} {r['seconds']:9.2f} {r['peak_mb']:9.1f}")
    floor = 1.0  # below ~1 MB the RSS difference is allocator noise; do not divide by it
    same = naive["picked"] == chunked["picked"]
    overlap = len(set(naive["picked"]) & set(chunked["picked"])) / args.naive_n
    print(f"memory ratio naive / chunked: {'>=' if chunked['peak_mb'] < floor else ''}"
          f"{naive['peak_mb'] / max(chunked['peak_mb'], floor):.0f}x   "
          f"time ratio naive / chunked: {naive['seconds'] / chunked['seconds']:.2f}x   "
          f"same picks in the same order: {same} (same set: {overlap:.1%})")


if __name__ == "__main__":
    main()
