"""MAE pre-training throughput (SSFER stage a) and the encoder's share of its compute, CPU and (when present) GPU.

    .venv/bin/python benchmarks/bench_mae.py            # full (~2-3 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_mae.py --quick    # smoke check (< 60 s)

Three training steps on the same ViT, same batch, AdamW through `fernb.engine` (make_optimizer, autocast,
optimizer_step), timed back to back in rotating order per round (medians of rounds):

MAE r=0.75   `fernb.models.mae.MaskedAutoencoder` at SSFER's 75 % mask ratio: the encoder sees a quarter of the
             patches, the light decoder all of them.
MAE r=0      the same MAE with nothing masked (the encoder sees every patch): what masking saves.
supervised   the ViT classifier (`vit_classifier`) with cross-entropy on every patch: one fine-tuning step.

and, per image and forward pass, the FLOPs (torch.utils.flop_counter, on the meta device) of the encoder at r=0.75,
the encoder at r=0 and the decoder: the encoder's share of the MAE forward, and the encoder's cost at 75 % masking
relative to a full pass (patch tokens are 25 % of L; the class token and the quadratic attention move it a little).

Configurations: the cpu profile's vit_mini at 48 px and vit_tiny at 64 px on the CPU; vit_base at 224 px on a CUDA
GPU (bf16 autocast), skipped with a note when there is none. Target on CPU: an MAE r=0.75 step processes >= 1.5x
the images per second of an r=0 step. Prints PASS/FAIL, never asserts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from fernb import engine, models  # noqa: E402
from fernb.models import mae as M  # noqa: E402

from _common import fmt, machine, quiet_note, table, wait_quiet  # noqa: E402

TARGET_SPEEDUP = 1.5


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def flop_shares(name: str, size: int) -> dict:
    with torch.device("meta"):
        mae = M.MaskedAutoencoder(models.create(name, 0, img_size=size))
        x = torch.empty(1, 3, size, size)
    mae.eval()
    enc75 = flops(lambda: mae.forward_encoder(x, 0.75))
    enc0 = flops(lambda: mae.forward_encoder(x, 0.0))
    latent, _, ids = mae.forward_encoder(x, 0.75)
    dec = flops(lambda: mae.forward_decoder(latent, ids))
    return {"enc75": enc75, "enc0": enc0, "dec": dec}


def make_steps(name: str, size: int, batch: int, device: torch.device):
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    y = torch.randint(0, 7, (batch,), device=device)
    steps = {}
    for label, ratio in (("MAE r=0.75", 0.75), ("MAE r=0", 0.0)):
        mae = M.MaskedAutoencoder(models.create(name, 0, img_size=size), mask_ratio=ratio).to(device)
        opt = engine.make_optimizer(mae.parameters(), lr=1e-4, device=device)
        scaler = engine.make_scaler(device)

        def step(mae=mae, opt=opt, scaler=scaler):
            with engine.autocast(device):
                loss = mae(x).loss
            engine.optimizer_step(loss, opt, scaler)
        steps[label] = step
    clf = M.vit_classifier(name, 7, img_size=size).to(device)
    opt = engine.make_optimizer(clf.parameters(), lr=1e-4, device=device)
    scaler = engine.make_scaler(device)

    def sup_step():
        with engine.autocast(device):
            loss = F.cross_entropy(clf(x), y)
        engine.optimizer_step(loss, opt, scaler)
    steps["supervised"] = sup_step
    return steps


def time_steps(steps: dict, batch: int, iters: int, rounds: int, device: torch.device, max_wait: float) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():          # warm-up: allocator, oneDNN / cuDNN kernels
        for _ in range(2):
            step()
    sync()
    rates = {k: [] for k in steps}
    names = list(steps)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for k in order:
            if device.type == "cpu":
                wait_quiet(max_wait)
            t0 = time.perf_counter()
            for _ in range(iters):
                steps[k]()
            sync()
            rates[k].append(batch * iters / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--max-wait", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    print(machine())
    configs = [("cpu", "vit_mini", 48, 128, 2 if args.quick else 6)]
    if not args.quick:
        configs.append(("cpu", "vit_tiny", 64, 64, 3))
    if torch.cuda.is_available():
        configs.append(("cuda", "vit_base", 224, 64 if args.quick else 128, 5 if args.quick else 20))
    else:
        print("GPU part skipped: CUDA is not available on this machine")
    rows = []
    for dev_name, name, size, batch, iters in configs:
        device = engine.resolve_device(dev_name)
        rates = time_steps(make_steps(name, size, batch, device), batch, iters, rounds, device, args.max_wait)
        shares = flop_shares(name, size)
        speedup = rates["MAE r=0.75"] / rates["MAE r=0"]
        mae_fwd = shares["enc75"] + shares["dec"]
        ok = speedup >= TARGET_SPEEDUP if dev_name == "cpu" else None
        rows.append({
            "device": f"{dev_name} ({engine.precision_name(device)})", "model": f"{name} @ {size} px, batch {batch}",
            "MAE r=0.75 img/s": fmt(rates["MAE r=0.75"]), "MAE r=0 img/s": fmt(rates["MAE r=0"]),
            "supervised img/s": fmt(rates["supervised"]), "speed-up from masking": f"{speedup:.2f}x",
            "MAE vs supervised": f"{rates['MAE r=0.75'] / rates['supervised']:.2f}x",
            "encoder share of MAE FLOPs": f"{shares['enc75'] / mae_fwd:.0%}",
            "encoder FLOPs r=0.75 / r=0": f"{shares['enc75'] / shares['enc0']:.0%}",
            "target": f">= {TARGET_SPEEDUP}x: {'PASS' if ok else 'FAIL'}" if ok is not None else "-",
        })
    cols = ["device", "model", "MAE r=0.75 img/s", "MAE r=0 img/s", "supervised img/s", "speed-up from masking",
            "MAE vs supervised", "encoder share of MAE FLOPs", "encoder FLOPs r=0.75 / r=0", "target"]
    print(table(rows, cols))
    print(f"medians of {rounds} rounds; {quiet_note()}")


if __name__ == "__main__":
    main()
