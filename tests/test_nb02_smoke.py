"""Notebook 02 (SSFER) end to end in the smoke profile: every section runs, the scorecard's metrics clear the
regression floors in tests/floors.json, and nothing is written over the committed notebook or figures."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "02_ssfer_mae_facemix.ipynb"


@pytest.mark.notebook
def test_smoke_run_of_ssfer_passes_its_floors(tmp_path):
    env = dict(os.environ)
    env.pop("FERNB_FIGURES", None)
    env["FERNB_CACHE"] = str(tmp_path / "cache")          # render afresh into tmp; never write into data/cache
    env.setdefault("MPLBACKEND", "Agg")
    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fernb", "run", "02", "--profile", "smoke", "--output-dir", str(out),
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
    assert {"ssfer_accuracy", "baseline_accuracy", "facemix_accuracy", "vit_mae_accuracy"} <= set(card["metrics"])
    assert len(card["claims"]) >= 18
    assert all(c["verdict"] in ("holds", "does not hold", "inconclusive") for c in card["claims"])
    for c in card["claims"]:                               # every verdict comes with its rule and the numbers
        assert c["rule"] and c["measured"], c["claim"]
    for name in ("patch_grid", "mae_loss", "fig3_reconstructions", "facemix_pairs", "kappa_loss", "ablation",
                 "pseudo_labels", "fig7_confusions", "fig8_gradcam_vit", "table7_fgsm", "fig9_attack_examples"):
        assert (figures / f"{name}.png").is_file(), name
    assert list((out / "checkpoints").rglob("*.pt"))       # MAE checkpoints stay in the output folder
