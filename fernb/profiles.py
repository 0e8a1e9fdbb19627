"""Profiles: how much work a notebook does. `smoke` (CI, <= 3 min on 2 CPU cores), `cpu` (a laptop, <= 15 min),
`gpu` (one modern GPU, <= 8 min on one H100: a lent GPU's command runs 10 min at most), `paper` (a real dataset on
GPUs, hours).

`compile` is the profile's default for `fernb.engine.fit(compile=...)`: the notebook runner exports it as
`FERNB_COMPILE` for the kernel (CUDA graphs through torch.compile on the GPU profiles, eager on the CPU ones). The
gpu profile trains with larger batches than the CPU ones (512: at 64 px a GPU step is launch-bound, so a larger
batch costs little more time than a small one) and pairs its comparisons over 5 seeds.

`get(notebook, profile)` merges the shared preset with the notebook's own overrides, so a notebook's parameters cell
holds only the profile name and the knobs a user turns.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch

NAMES = ("smoke", "cpu", "gpu", "paper")

BASE = {
    "smoke": dict(n_train=1400, n_val=300, n_test=700, image_size=48, channels=3, model="resnet_mini",
                  epochs=3, batch_size=64, lr=3e-3, seeds=(0,), progress=False, compile=False),
    "cpu": dict(n_train=6000, n_val=1000, n_test=2000, image_size=64, channels=3, model="resnet_mini",
                epochs=10, batch_size=128, lr=3e-3, seeds=(0, 1), progress=True, compile=False),
    "gpu": dict(n_train=20000, n_val=2000, n_test=4000, image_size=64, channels=3, model="resnet18",
                epochs=30, batch_size=512, lr=3e-3, seeds=(0, 1, 2, 3, 4), progress=True,
                compile="reduce-overhead"),
    "paper": dict(n_train=None, n_val=None, n_test=None, image_size=112, channels=3, model="resnet18",
                  epochs=60, batch_size=128, lr=1e-3, seeds=(0, 1, 2), progress=True, compile="reduce-overhead"),
}

# Per-notebook overrides (only what differs from BASE).
NOTEBOOKS = {
    "00_synthfer_tour": {
        "smoke": dict(epochs=4),
        "cpu": dict(epochs=12),
    },
    "01_fucle_active_learning": {
        "smoke": dict(n_train=1000, n_val=300, n_test=600, epochs=8, pretrain_epochs=4, drm_epochs=4, cycles=2,
                      initial_fraction=0.1, budget_fraction=0.1, strategies=("random", "least_confidence"),
                      sweep_values=(0.0, 0.15, 0.3), seeds=(0,), sensitivity=False, noise_rate=0.3,
                      deepfool_candidates=300),
        "cpu": dict(n_train=3000, n_val=500, n_test=1500, image_size=48, epochs=10, pretrain_epochs=12,
                    drm_epochs=10, cycles=4, initial_fraction=0.05, budget_fraction=0.05,
                    strategies=("random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge",
                                "glister", "deepfool"),
                    sweep_values=(0.0, 0.1, 0.15, 0.2, 0.3), seeds=(0,), sensitivity=True, noise_rate=0.3,
                    deepfool_candidates=1000),
        "gpu": dict(n_train=12000, n_test=3000, epochs=15, pretrain_epochs=30, drm_epochs=20, cycles=7,
                    initial_fraction=0.05, budget_fraction=0.05,
                    strategies=("random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge",
                                "glister", "deepfool"),
                    sweep_values=(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35), seeds=(0, 1, 2),
                    sensitivity=True, noise_rate=0.3, deepfool_candidates=None),
        "paper": dict(epochs=40, pretrain_epochs=100, drm_epochs=40, cycles=7, initial_fraction=0.05,
                      budget_fraction=0.05,
                      strategies=("random", "least_confidence", "margin", "entropy", "bald", "coreset", "badge",
                                  "glister", "deepfool"),
                      sweep_values=(0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35), seeds=(0, 1, 2),
                      sensitivity=True, noise_rate=0.0, deepfool_candidates=None),
    },
}


def default_profile() -> str:
    return "gpu" if torch.cuda.is_available() else "cpu"


def get(notebook: str, profile: str | None = None) -> SimpleNamespace:
    """The settings for `notebook` under `profile` (default: gpu when CUDA is available, else cpu)."""
    profile = profile or default_profile()
    if profile not in NAMES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(NAMES)}")
    settings = dict(BASE[profile])
    settings.update(NOTEBOOKS.get(notebook, {}).get(profile, {}))
    settings["name"] = profile
    if os.environ.get("FERNB_HEADLESS") == "1":  # set by `python -m fernb run`: no one watches the bars
        settings["progress"] = False
    return SimpleNamespace(**settings)
