"""FUCLE's two-step scheme (Wang, Zhang, Sun 2024, Fig. 2) assembled from fernb's pieces, plus the bookkeeping the
notebook's tables need.

Step 1 (pre-training on the whole labeled set I): contrastive pre-training (`methods.pretrain`, Eq. 1), then the
Dynamic Re-labeling Module (`methods.drm`, Eq. 2-7) fine-tunes that backbone and relabels low-importance samples.
Step 2 (active learning on I_s, grown cycle by cycle): least-confidence sampling (`methods.active`), every cycle
retrained from the step-1 checkpoint.

The paper pre-trains with the labels of the whole set I (Sec. 3.1) and then runs active learning on it, so its
active-learning phase is not label-starved the way the baselines are. `fucle` reproduces that protocol; the notebook
adds a label-free control (NT-Xent pre-training) to separate representation learning from label leakage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch import nn

from .. import engine, models
from ..data.dataset import FERDataset
from ..paths import atomic_save
from . import active
from .drm import DRMResult, train_drm
from .pretrain import PretrainResult, contrastive_pretrain


def model_factory(name: str, num_classes: int, in_chans: int, img_size: int,
                  checkpoint: str | Path | None = None) -> Callable[[], nn.Module]:
    """A `model_fn` for `active.run_active_learning`: a fresh model, from `checkpoint` when given (the stated
    initialization every cycle restarts from)."""

    def make() -> nn.Module:
        return models.create(name, num_classes, in_chans=in_chans, img_size=img_size, checkpoint=checkpoint)

    return make


def save_weights(model: nn.Module, path: str | Path) -> Path:
    return atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


@dataclass
class PretrainStages:
    """What step 1 produced: the pre-training run, the DRM run, checkpoints and costs per stage."""
    pretrain: PretrainResult | None
    drm: DRMResult | None
    checkpoints: dict = field(default_factory=dict)   # "pretrain", "drm" -> path
    seconds: dict = field(default_factory=dict)
    peak_mb: dict = field(default_factory=dict)


def pretrain_stages(pool: FERDataset, *, model_name: str, checkpoint_dir: Path, pretrain_epochs: int,
                    drm_epochs: int, batch_size: int, lr: float, use_labels: bool = True, with_drm: bool = True,
                    drm_kwargs: dict | None = None, val: FERDataset | None = None, device=None, seed: int = 0,
                    progress: bool = False, tag: str = "fucle") -> PretrainStages:
    """Step 1 of FUCLE on `pool` (whose given labels may be noisy): contrastive pre-training, then optionally DRM.

    DRM relabels a copy of the labels (`inplace=False`); its final label vector is in `stages.drm.labels`.
    """
    checkpoint_dir = Path(checkpoint_dir)
    torch.manual_seed(seed)
    model = models.create(model_name, pool.num_classes, in_chans=pool.channels, img_size=pool.image_size)
    stages = PretrainStages(None, None)
    with active.measure(device) as m:
        stages.pretrain = contrastive_pretrain(model, pool, epochs=pretrain_epochs, batch_size=batch_size, lr=lr,
                                               use_labels=use_labels, device=device, seed=seed, progress=progress)
    stages.seconds["pretrain"], stages.peak_mb["pretrain"] = m.seconds, _peak(m)
    stages.checkpoints["pretrain"] = save_weights(model, checkpoint_dir / f"{tag}-pretrain.pt")
    if with_drm:
        kw = dict(beta=0.7, delta1=0.15, delta2=0.2, gamma=0.5, relabel_start_epoch=max(1, drm_epochs // 3))
        kw.update(drm_kwargs or {})
        with active.measure(device) as m:
            stages.drm = train_drm(model, pool, val=val, epochs=drm_epochs, batch_size=batch_size, lr=lr,
                                   device=device, seed=seed, progress=progress, inplace=False, **kw)
        stages.seconds["drm"], stages.peak_mb["drm"] = m.seconds, _peak(m)
        stages.checkpoints["drm"] = save_weights(model, checkpoint_dir / f"{tag}-drm.pt")
    return stages


def run_strategies(strategies, pool: FERDataset, test: FERDataset, *, model_fn: Callable[[], nn.Module],
                   seeds=(0,), progress_bar: bool = False, strategy_kwargs: dict | None = None,
                   **al_kwargs) -> dict[str, list[active.ALResult]]:
    """`active.run_active_learning` for each strategy name and seed: {name: [ALResult per seed]}.

    Every strategy of a seed starts from the same initial labeled set (drawn from that seed), so the curves differ
    only by what each strategy queries. `strategy_kwargs` = {name: constructor options}, e.g.
    {"deepfool": {"candidates": 1000}}.
    """
    strategy_kwargs = strategy_kwargs or {}
    from tqdm.auto import tqdm

    results: dict[str, list[active.ALResult]] = {}
    jobs = [(name, seed) for name in strategies for seed in seeds]
    for name, seed in tqdm(jobs, desc="active learning", disable=not progress_bar):
        strategy = active.get(name, seed=seed, **strategy_kwargs.get(name, {}))
        results.setdefault(name, []).append(
            active.run_active_learning(strategy, pool, test, model_fn=model_fn, seed=seed, **al_kwargs))
    return results


def curves_frame(results: dict[str, list[active.ALResult]]) -> pd.DataFrame:
    """Long table: method, seed, cycle, n_labeled, accuracy, mean_class_accuracy."""
    rows = []
    for name, runs in results.items():
        for seed, run in enumerate(runs):
            frame = run.as_frame()
            for _, r in frame.iterrows():
                rows.append({"method": name, "seed": seed, "cycle": int(r["cycle"]), "n_labeled": int(r["n_labeled"]),
                             "accuracy": float(r["accuracy"]), "mean_class_accuracy": float(r["mean_class_accuracy"])})
    return pd.DataFrame(rows)


def final_table(results: dict[str, list[active.ALResult]]) -> pd.DataFrame:
    """Final accuracy per method: mean, std over seeds (NaN with one seed), seeds, wall time, peak memory."""
    rows = []
    for name, runs in results.items():
        acc = torch.tensor([r.final_accuracy for r in runs])
        rows.append({"method": name, "accuracy": float(acc.mean()),
                     "std": float(acc.std()) if len(acc) > 1 else float("nan"), "seeds": len(runs),
                     "seconds": float(sum(r.wall_seconds for r in runs) / len(runs)),
                     "peak_mb": float(max(_peak(r) for r in runs))})
    return pd.DataFrame(rows).set_index("method")


def _peak(m) -> float:
    """Peak memory increase of a Measurement or ALResult: GPU memory on CUDA, else process RSS (MiB)."""
    return m.peak_cuda_mb if m.peak_cuda_mb is not None else m.peak_rss_mb


def final_model(result: active.ALResult, pool: FERDataset, model_fn: Callable[[], nn.Module], fit_kwargs: dict,
                device=None) -> nn.Module:
    """The model of `result`'s last cycle, rebuilt deterministically: the same initialization (torch.manual_seed of
    the run's seed, then `model_fn`), the same final labeled set and the same fit arguments as
    `active.run_active_learning` used, so the confusion matrix shown is that of the reported accuracy."""
    seed = result.config["seed"]
    train = active.labeled_view(pool, result.labeled_mask)
    torch.manual_seed(seed)
    model = model_fn()
    kwargs = {"seed": seed, "progress": False, **fit_kwargs}
    engine.fit(model, train, device=engine.resolve_device(device), **kwargs)
    return model
