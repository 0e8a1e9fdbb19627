"""Notebook 04 (Xu et al.: DAL-Net, Softmax-MSE, two-stage transfer, active incremental learning) end to end in the
smoke profile: every section runs, the scorecard's metrics clear the regression floors in tests/floors.json, and
nothing is written over the committed notebook or figures."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_dalnet_active_incremental.ipynb"


@pytest.mark.notebook
def test_smoke_run_of_dalnet_notebook_passes_its_floors(tmp_path):
    env = dict(os.environ)
    env.pop("FERNB_FIGURES", None)
    env["FERNB_CACHE"] = str(tmp_path / "cache")          # render afresh into tmp; never write into data/cache
    env.setdefault("MPLBACKEND", "Agg")
    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fernb", "run", "04", "--profile", "smoke", "--output-dir", str(out),
                           "--check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "check: passed" in proc.stdout
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == before
    executed = nbformat.read(out / NOTEBOOK.name, as_version=4)
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]
    figures = out / "figures" / NOTEBOOK.stem
    card = json.loads((figures / "scorecard.json").read_text())
    assert card["profile"] == "smoke"
    assert {"dalnet_accuracy", "scratch_accuracy", "ail_final_accuracy", "identity_accuracy"} <= set(card["metrics"])
    assert len(card["claims"]) >= 12
    assert all(c["verdict"] in ("holds", "does not hold", "inconclusive") for c in card["claims"])
    exact = [c for c in card["claims"] if c["kind"] == "exact"]
    assert exact and all(c["verdict"] == "holds" for c in exact)   # Eq. 6 equals the cross-entropy gradient
    for name in ("double_activation", "softmax_mse_gradients", "mfm_vs_relu_maps", "k_sweep", "confusion_stages",
                 "table9_ablation", "loss_curves", "worthiness_ranking", "cost_curves", "gradcam_candidates"):
        assert (figures / f"{name}.png").is_file(), name
