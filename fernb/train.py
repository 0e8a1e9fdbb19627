"""`python -m fernb train`: the long training jobs, on one GPU or many (DistributedDataParallel under torchrun).

A notebook kernel is one process and cannot be `torchrun`; the jobs that need several GPUs at paper scale (the
contrastive and MAE pre-training of a backbone, a supervised baseline on a full real dataset) run here instead,
write their weights, and the notebooks load them (`fernb.models.create(name, ..., checkpoint=WEIGHTS)`).

    python -m fernb train --task supcon --profile gpu --out data/checkpoints/supcon.pt              # one GPU
    python -m fernb train --task supcon --profile paper --nproc 8 --out supcon.pt                  # 8 GPUs, one node
    torchrun --nproc-per-node 8 -m fernb train --task supervised --dataset rafdb --data-root /data/RAF-DB ...
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m fernb train --task supcon --profile paper --checkpoint /shared/supcon-state.pt --out /shared/supcon.pt

Every rank builds the same data (rank 0 first, so the SynthFER cache is written once), trains its shard of every
global batch (`--batch-size` is the global batch), and rank 0 writes the resumable training state
(`--checkpoint`, after every epoch: rerun the same command to resume) and the final weights (`--out`). With
`--nproc N` this command starts `torchrun --standalone --nproc-per-node N` on itself. Tasks: `TASKS`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import distributed, engine, models
from .paths import atomic_save


def _supervised(model, splits, args, device):
    history = engine.fit(model, splits.train, val=splits.val, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, augment=args.augment, device=device, seed=args.seed, checkpoint=args.checkpoint,
                         resume=not args.no_resume, progress=args.progress and distributed.is_main(),
                         compile=args.compile, desc="train")
    return history, {"test_accuracy": engine.evaluate(model, splits.test, device=device)["accuracy"]}


def _contrastive(use_labels: bool):
    def task(model, splits, args, device):
        from .methods.pretrain import contrastive_pretrain
        result = contrastive_pretrain(model, splits.train, epochs=args.epochs, batch_size=args.batch_size,
                                      lr=args.lr, temperature=args.temperature, use_labels=use_labels, device=device,
                                      seed=args.seed, checkpoint=args.checkpoint,
                                      progress=args.progress and distributed.is_main())
        return result.history, {}
    return task


def _mae(model, splits, args, device):
    from .methods.ssfer import mae_train_task
    return mae_train_task(model, splits, args, device)


# name -> fn(model, splits, args, device) -> (History, extra metrics). Other pre-training jobs register here.
TASKS = {
    "supervised": _supervised,          # cross-entropy on the labeled train split, evaluated on test
    "supcon": _contrastive(True),       # FUCLE Eq. 1: supervised contrastive pre-training of the backbone
    "simclr": _contrastive(False),      # NT-Xent, labels unused
    "mae": _mae,                        # SSFER stage (a): MAE pre-training of a ViT (fernb.methods.ssfer)
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fernb train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=sorted(TASKS), default="supervised")
    p.add_argument("--profile", choices=("smoke", "cpu", "gpu", "paper"), default=None,
                   help="sizes, model, epochs, batch and lr (fernb.profiles BASE; default gpu with CUDA, else cpu)")
    p.add_argument("--dataset", default="synthfer", help="synthfer or a real dataset name (fernb.data.readers)")
    p.add_argument("--data-root", default=None, help="the real dataset's folder (default: $FERNB_DATA/<name>)")
    p.add_argument("--model", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="the global batch, split over the ranks")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--augment", default="weak")
    p.add_argument("--temperature", type=float, default=0.1, help="contrastive tasks: tau of Eq. 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", default=None, help="torch.compile mode or off (default: engine.compile_mode)")
    p.add_argument("--checkpoint", type=Path, default=None, help="resumable training state, written every epoch")
    p.add_argument("--no-resume", action="store_true", help="start over even if --checkpoint exists")
    p.add_argument("--out", type=Path, default=None, help="final model weights (rank 0)")
    p.add_argument("--json", type=Path, default=None, help="write the run summary here too (rank 0)")
    p.add_argument("--no-cache", action="store_true", help="render SynthFER without the data/cache files")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--nproc", type=int, default=1, help="processes on this node: runs torchrun on this command")
    return p


def _relaunch_under_torchrun(argv: list[str], nproc: int) -> int:
    """`torchrun --standalone --nproc-per-node N -m fernb train <argv without --nproc>`, as a child process."""
    rest, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "fernb", "train", *rest]
    print("launching:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        argv = argv[1:]
    args = parser().parse_args(argv)
    if args.nproc > 1 and not distributed.launched_by_torchrun():
        return _relaunch_under_torchrun(argv, args.nproc)

    from .data.sources import load_splits
    from .profiles import BASE, default_profile

    profile = args.profile or default_profile()
    base = BASE[profile]
    for key in ("model", "epochs", "batch_size", "lr", "image_size", "n_train", "n_val", "n_test"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    device = distributed.init(args.device)
    main_rank = distributed.is_main()
    t0 = time.perf_counter()

    def build():
        return load_splits(args.dataset, args.data_root, size=args.image_size, channels=base["channels"],
                           seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                           cache=not args.no_cache)

    if main_rank:                 # rank 0 renders / decodes (and caches) first; the others then read the cache
        splits = build()
    distributed.barrier()
    if not main_rank:
        splits = build()
    torch.manual_seed(args.seed)
    model = models.create(args.model, splits.train.num_classes, in_chans=splits.train.channels,
                          img_size=splits.train.image_size)
    history, extra = TASKS[args.task](model, splits, args, device)
    summary = {"task": args.task, "profile": profile, "dataset": args.dataset, "model": args.model,
               "world_size": distributed.world_size(), "device": str(device), "epochs": args.epochs,
               "global_batch": args.batch_size, "samples_per_epoch": history.samples,
               "train_loss": history.train_loss, "val_acc": history.val_acc, "precision": history.precision,
               "compile": history.compile, "seconds": round(time.perf_counter() - t0, 1), **extra}
    if main_rank:
        if args.out is not None:
            atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, args.out)
            summary["weights"] = str(args.out)
        text = json.dumps(summary)
        print(text, flush=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n")
    distributed.barrier()
    distributed.shutdown()
    return 0
