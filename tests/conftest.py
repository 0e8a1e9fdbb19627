"""Shared test setup: a headless matplotlib backend and one torch thread.

Tests that render SynthFER pass `cache=False` (or a `tmp_path` cache_dir) themselves, so nothing here touches the
global cache location.
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# The test tensors are tiny; on a shared 2-core runner a second OpenMP thread mostly waits (and can stall).
torch.set_num_threads(1)
