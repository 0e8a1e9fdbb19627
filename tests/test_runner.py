"""The notebook runner (`python -m fernb run`): a smoke run of notebook 00 against the regression floors (and with no
path of the executing machine in the executed copy), a failing notebook that must leave its partial output and name
the failing cell, and `check_floors` on crafted scorecards.

The two subprocess tests are marked `notebook` (deselect with `-m "not notebook"`).
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fernb import profiles, run

REPO = Path(__file__).resolve().parents[1]
TOUR = REPO / "notebooks" / "00_synthfer_tour.ipynb"


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.pop("FERNB_FIGURES", None)
    env["FERNB_CACHE"] = str(tmp_path / "cache")  # render afresh into tmp; never write into data/cache
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _fernb_run(args, tmp_path, timeout):
    return subprocess.run([sys.executable, "-m", "fernb", "run", *args], cwd=REPO, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)


def _snapshot(folder: Path) -> dict:
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.notebook
def test_smoke_run_of_the_tour_passes_its_floors(tmp_path):
    out = tmp_path / "out"
    before = (TOUR.stat().st_mtime_ns, hashlib.sha256(TOUR.read_bytes()).hexdigest())
    committed_figures = _snapshot(REPO / "figures" / TOUR.stem)

    proc = _fernb_run(["00", "--profile", "smoke", "--output-dir", str(out), "--check"], tmp_path, timeout=1500)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "check: passed" in proc.stdout

    executed = out / TOUR.name
    assert executed.is_file()
    nb = nbformat.read(executed, as_version=4)
    assert not [c for c in nb.cells if c.cell_type == "code"
                for o in c.get("outputs", []) if o.get("output_type") == "error"]
    # no path of this machine in what a reader sees (fernb.nbclean), and the widget says what it is
    from fernb.nbclean import machine_paths
    assert machine_paths(nb) == []
    assert nb.metadata.papermill["input_path"] == "notebooks/00_synthfer_tour.ipynb"
    assert nb.metadata.papermill["output_path"] == TOUR.name
    widget_texts = [o["data"]["text/plain"] for c in nb.cells for o in c.get("outputs", [])
                    if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widget_texts and all("needs a live Jupyter kernel" in t for t in widget_texts), widget_texts
    # figures reach the notebook although this test's environment sets MPLBACKEND=Agg (the runner sets the inline one)
    assert sum("image/png" in o.get("data", {}) or "image/jpeg" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", [])) >= 5
    # the committed notebook and its committed figures are untouched by a smoke run
    assert (TOUR.stat().st_mtime_ns, hashlib.sha256(TOUR.read_bytes()).hexdigest()) == before
    assert _snapshot(REPO / "figures" / TOUR.stem) == committed_figures

    card_path = out / "figures" / TOUR.stem / "scorecard.json"
    assert card_path.is_file()
    card = json.loads(card_path.read_text())
    assert card["profile"] == "smoke"
    metrics = card["metrics"]
    assert set(metrics) >= {"baseline_accuracy", "baseline_mean_class_accuracy", "accuracy_over_chance"}
    assert 0 <= metrics["baseline_accuracy"] <= 1
    assert metrics["accuracy_over_chance"] == pytest.approx(metrics["baseline_accuracy"] - 1 / 7, abs=2e-4)
    assert card["claims"] and all(c["verdict"] in ("holds", "does not hold", "inconclusive") for c in card["claims"])
    assert (out / "figures" / "summary-smoke.md").is_file()
    assert list((out / "figures" / TOUR.stem).glob("*.png"))


@pytest.mark.notebook
def test_smoke_run_of_fucle_passes_its_floors(tmp_path):
    """Notebook 01 end to end in the smoke profile (2 seeds): every section runs, the scorecard's metrics clear the
    floors, and every claim carries its seeds, interval and rule, with the verdict the rule gives."""
    nb_path = REPO / "notebooks" / "01_fucle_active_learning.ipynb"
    out = tmp_path / "out"
    proc = _fernb_run(["01", "--profile", "smoke", "--output-dir", str(out), "--check"], tmp_path, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "check: passed" in proc.stdout
    card = json.loads((out / "figures" / nb_path.stem / "scorecard.json").read_text())
    assert {"fucle_final_accuracy", "lc_final_accuracy", "full_pool_accuracy",
            "knn_accuracy_after_supcon"} <= set(card["metrics"])
    assert len(card["claims"]) >= 15
    from fernb.scorecard import verdict_from_interval
    paired = [c for c in card["claims"] if c["kind"] == "paired seeds"]
    assert len(paired) >= 10
    for c in paired:
        if c["seeds"] == [0]:                                   # sweep rows run at one seed: never a verdict
            assert c["verdict"] == "inconclusive" and "no interval" in c["rule"], c
            continue
        assert c["seeds"] == [0, 1] and c["rule"].startswith("paired t over 2 seeds")   # n_test: None for timings
        low, high = c["interval"]
        if low is None or min(abs(low), abs(high)) < 1e-4:      # stored rounded to 4 digits
            continue
        assert c["verdict"] == verdict_from_interval(low, high, c["direction"]), c
    assert all(c["rule"] for c in card["claims"])
    # checkpoints of a smoke run stay in its output folder
    assert list((out / "checkpoints").rglob("*.pt"))


@pytest.mark.notebook
def test_failing_notebook_keeps_partial_output_and_names_the_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1\nprint('before the failure', profile)"),
        nbformat.v4.new_code_cell("# the cell that fails\nraise ValueError('boom')"),
        nbformat.v4.new_code_cell("y = 2"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "broken.ipynb"
    nbformat.write(nb, source)
    out = tmp_path / "out"

    proc = _fernb_run([str(source), "--profile", "smoke", "--output-dir", str(out)], tmp_path, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-4000:]
    assert "FAILED" in proc.stdout
    assert "the cell that fails" in proc.stdout  # names the failing cell ...
    assert "ValueError: boom" in proc.stdout      # ... and the error
    partial = out / "broken.ipynb"
    assert partial.is_file()
    assert str(partial) in proc.stdout
    executed = nbformat.read(partial, as_version=4)
    errors = [c for c in executed.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and "raise ValueError('boom')" in errors[0].source
    ran = [c for c in executed.cells if c.cell_type == "code" and "before the failure" in c.source][0]
    assert any("before the failure smoke" in o.get("text", "") for o in ran.outputs)  # the profile was injected
    # the source notebook was not overwritten
    assert not [c for c in nbformat.read(source, as_version=4).cells if c.get("outputs")]


# ---- check_floors on crafted scorecards ------------------------------------------------------------------------
@pytest.fixture
def crafted(tmp_path, monkeypatch):
    figures = tmp_path / "figures"
    monkeypatch.setenv("FERNB_FIGURES", str(figures))
    card_dir = figures / "99_fake"
    card_dir.mkdir(parents=True)
    (card_dir / "scorecard.json").write_text(json.dumps(
        {"notebook": "99_fake", "profile": "smoke", "claims": [], "metrics": {"acc": 0.30, "gain": 0.10}}))
    floors = tmp_path / "floors.json"

    def check(floor_values, ok=True, notebook="99_fake", profile="smoke"):
        floors.write_text(json.dumps({"99_fake": {"smoke": floor_values}}))
        status = {"notebook": notebook, "profile": profile, "ok": ok, "error": "cell 3: ValueError: boom"}
        return run.check_floors([status], floors)

    return check


def test_check_floors_passes_at_or_above_the_floor(crafted):
    assert crafted({"acc": 0.25, "gain": 0.05}) == []
    assert crafted({"acc": 0.30, "gain": 0.10}) == []  # equal to the floor is not a regression
    assert crafted({}) == []


def test_check_floors_lists_each_metric_below_its_floor(crafted):
    failures = crafted({"acc": 0.31, "gain": 0.05})
    assert len(failures) == 1
    assert "acc" in failures[0] and "0.31" in failures[0] and "99_fake" in failures[0]
    assert len(crafted({"acc": 0.5, "gain": 0.5})) == 2


def test_check_floors_flags_a_missing_metric_a_failed_run_and_a_missing_scorecard(crafted):
    assert "missing_metric" in crafted({"missing_metric": 0.1})[0]
    assert "run failed" in crafted({"acc": 0.1}, ok=False)[0]
    assert "no scorecard" in crafted({}, notebook="98_other")[0]
    assert crafted({"acc": 0.9}, profile="cpu") == []  # floors are per profile


def test_floors_file_is_well_formed():
    floors = json.loads((REPO / "tests" / "floors.json").read_text())
    stems = {p.stem for p in run.notebooks()}
    assert floors
    for notebook, by_profile in floors.items():
        assert notebook in stems, f"floors for a notebook that does not exist: {notebook}"
        for profile, metrics in by_profile.items():
            assert profile in profiles.NAMES
            for name, value in metrics.items():
                assert isinstance(value, (int, float)), (notebook, profile, name)


def test_summary_keeps_the_rows_of_notebooks_not_run_this_time():
    head = "| notebook | profile | status | minutes | claims holding | key metrics |\n|---|---|---|---|---|---|"
    old = head + "\n| 01_a | cpu | ok | 9.2 | 4/23 | x=1 |\n| 03_c | cpu | ok | 9.5 | 2/16 | y=2 |"
    new = head + "\n| 03_c | cpu | FAILED | 1.0 | 0/0 |  |\n| 00_z | cpu | ok | 1.4 | 8/8 | z=3 |"
    lines = run.merge_summary(old, new).splitlines()
    assert lines[:2] == head.splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["00_z", "01_a", "03_c"]
    assert "FAILED" in lines[4] and "9.5" not in lines[4]          # a re-run replaces its old row
    assert run.merge_summary("", new).splitlines()[2:] == sorted(new.splitlines()[2:])
