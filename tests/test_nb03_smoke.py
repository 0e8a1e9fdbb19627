"""Notebook 03 (Hu et al.: ARM, SCL with a labeled queue, CUEM) end to end in the smoke profile: every section runs,
the scorecard carries its claims with evidence, and its metrics clear the regression floors in tests/floors.json.
Marked `notebook` (deselect with `-m "not notebook"`)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "03_scl_cuem_arm.ipynb"


@pytest.mark.notebook
def test_smoke_run_of_notebook_03_passes_its_floors(tmp_path):
    env = dict(os.environ)
    env.pop("FERNB_FIGURES", None)
    env["FERNB_CACHE"] = str(tmp_path / "cache")      # render afresh into tmp; never write into data/cache
    env.setdefault("MPLBACKEND", "Agg")
    before = hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest()
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fernb", "run", "03", "--profile", "smoke", "--output-dir", str(out),
                           "--check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "check: passed" in proc.stdout
    assert hashlib.sha256(NOTEBOOK.read_bytes()).hexdigest() == before      # the committed copy is untouched

    nb = nbformat.read(out / NOTEBOOK.name, as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]
    card = json.loads((out / "figures" / NOTEBOOK.stem / "scorecard.json").read_text())
    assert card["profile"] == "smoke"
    assert {"baseline_accuracy", "proposed_accuracy", "scl_accuracy", "plain_pooling_accuracy",
            "accuracy_over_chance", "knn_scl"} <= set(card["metrics"])
    claims = {c["claim"]: c for c in card["claims"]}
    assert len(claims) >= 12 and all(c["verdict"] in ("holds", "does not hold", "inconclusive")
                                     for c in claims.values())
    assert all(c["rule"] for c in claims.values())                      # every verdict carries its rule
    batch_one = [c for name, c in claims.items() if name.startswith("ARM with the running affinity")]
    assert batch_one and batch_one[0]["verdict"] == "holds"             # batch 1 == batch 256, exactly
    figures = {p.stem for p in (out / "figures" / NOTEBOOK.stem).glob("*.png")}
    assert {"padding_erosion", "arm_stages", "queue_fill", "tsne_ce_vs_scl", "similarity_matrix", "u_histogram",
            "relabel_vs_theta", "precision_vs_accuracy", "table2_ablation", "fig5_alpha_beta", "fig4_confusion",
            "gradcam_baseline", "gradcam_proposed"} <= figures
