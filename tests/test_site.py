"""What readers see of an executed notebook, without a browser: `fernb.nbclean` (no machine paths, no reprs),
`fernb.widgets`' text fallback and image sizing, and the site builder's pages (`fernb.site`) on crafted notebooks and
scorecards. The browser checks are in test_browser.py."""
import io
import json

import nbformat
import pandas as pd
import pytest

from fernb import nbclean, site, widgets
from fernb.paths import REPO

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _executed_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": str(REPO / "notebooks" / "00_x.ipynb"),
                                "output_path": "/tmp/fernb-smoke-abc/00_x.ipynb", "duration": 125.0,
                                "end_time": "2026-12-05T08:17:01+00:00", "exception": None,
                                "parameters": {"profile": "cpu"}}
    save = nbformat.v4.new_code_cell('viz.save(fig, NB, "prototypes")')
    save.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": f"PosixPath('{REPO}/figures/00_x/a.png')"},
                                           execution_count=1),
                    nbformat.v4.new_output("display_data", {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]
    explorer = nbformat.v4.new_code_cell("widgets.au_explorer()")
    explorer.outputs = [nbformat.v4.new_output("display_data", {
        WIDGET_VIEW: {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "HBox(children=(VBox(children=(Dropdown(description='prototype', options=('(custom)', …"})]
    log = nbformat.v4.new_code_cell("print(cache)")
    log.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"cache at {REPO}/data/cache/x.pt\n"),
                   nbformat.v4.new_output("stream", name="stderr",
                                          text="/tmp/ipykernel_4242/123456.py:3: UserWarning: careful\n")]
    table = nbformat.v4.new_code_cell("card.show()")
    styled = pd.DataFrame({"claim": ["A > B"], "measured": ["0.616 vs 0.628"]}).style.set_caption("Scorecard")
    table.outputs = [nbformat.v4.new_output("execute_result", {"text/html": styled.to_html(),
                                                               "text/plain": repr(styled)}, execution_count=2)]
    title = nbformat.v4.new_markdown_cell("# 00 · A title\n\nThe intro.\n\n| a | b |\n|---|---|")
    nb.cells = [title, save, explorer, log, table]
    return nb


# ---- nbclean -------------------------------------------------------------------------------------------------------
def test_tidy_removes_every_machine_path_and_repr():
    nb = _executed_notebook()
    assert len(nbclean.machine_paths(nb)) >= 4
    counts = nbclean.tidy(nb)
    assert counts == {"papermill_paths": 2, "path_reprs": 1, "widget_texts": 1, "styler_texts": 1, "relativised": 2}
    assert nb.metadata.papermill["input_path"] == "notebooks/00_x.ipynb"   # inside the repository: relative
    assert nb.metadata.papermill["output_path"] == "00_x.ipynb"            # outside it: the name only
    save, explorer, log, table = nb.cells[1:]
    assert [o.output_type for o in save.outputs] == ["display_data"]       # the figure stays, the path repr goes
    data = explorer.outputs[0]["data"]
    assert data[WIDGET_VIEW]["model_id"] == "abc"                          # still drawn live / from saved state
    assert data["text/plain"] == widgets.fallback_text("au_explorer")
    assert "needs a live Jupyter kernel" in data["text/plain"] and data["text/plain"].startswith("AU explorer")
    assert log.outputs[0]["text"] == "cache at data/cache/x.pt\n"
    assert log.outputs[1]["text"] == "<cell>:3: UserWarning: careful\n"
    assert table.outputs[0]["data"]["text/plain"].splitlines() == [   # the table itself, not '<...Styler at 0x..>'
        "Scorecard", "   claim  measured", "0  A > B  0.616 vs 0.628"]
    assert nbclean.machine_paths(nb) == []
    assert nbclean.tidy(nb) == dict.fromkeys(counts, 0)                    # idempotent


def test_tidy_keeps_what_is_not_a_path_or_a_widget_repr():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "'PosixPath is a class'"},
                                           execution_count=1),
                    nbformat.v4.new_output("execute_result", {"text/plain": "PosixPath('a.png')",
                                                              "text/html": "<b>a</b>"}, execution_count=2),
                    nbformat.v4.new_output("display_data", {WIDGET_VIEW: {"model_id": "m"},
                                                            "text/plain": "A sentence someone wrote."})]
    nb.cells = [cell]
    assert nbclean.tidy(nb) == {"papermill_paths": 0, "path_reprs": 0, "widget_texts": 0, "styler_texts": 0,
                                 "relativised": 0}
    assert len(cell.outputs) == 3


def test_machine_paths_ignores_the_saved_widget_images():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"m": {
        "state": {"description": "identity"}, "buffers": [{"data": "/work/abc+/tmp/xyz==", "path": ["value"]}]}}}}
    assert nbclean.machine_paths(nb) == []
    nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]["m"]["state"]["tooltip"] = "/home/me/x"
    assert nbclean.machine_paths(nb) == ["metadata.widgets: /home/me/x"]


def test_tidy_file_rewrites_only_when_something_changed(tmp_path):
    path = tmp_path / "nb.ipynb"
    nbformat.write(_executed_notebook(), path)
    assert nbclean.tidy_file(path)["path_reprs"] == 1
    mtime = path.stat().st_mtime_ns
    assert not any(nbclean.tidy_file(path).values())
    assert path.stat().st_mtime_ns == mtime
    assert nbclean.machine_paths(nbformat.read(path, as_version=4)) == []


# ---- widgets -------------------------------------------------------------------------------------------------------
def test_every_explorer_has_a_description_and_displays_through_explorer():
    import inspect

    explorers = [n for n, f in inspect.getmembers(widgets, inspect.isfunction) if n.endswith("_explorer")]
    assert sorted(explorers) == sorted(widgets.EXPLORERS)
    for name in explorers:
        assert "_show(" in inspect.getsource(getattr(widgets, name)), name
        assert "display(" not in inspect.getsource(getattr(widgets, name)), name


def test_explorer_bundle_keeps_the_widget_view_and_says_what_it_is():
    import ipywidgets as W

    slider = W.FloatSlider(0.5)
    bundle = widgets.Explorer(W.VBox([slider]), "margin_schedule_explorer")._repr_mimebundle_()
    assert set(bundle) == {"text/plain", WIDGET_VIEW}
    assert bundle[WIDGET_VIEW]["version_major"] == 2
    assert bundle["text/plain"].startswith("Margin-schedule explorer (interactive widget")
    assert "VBox(" not in bundle["text/plain"] and "needs a live Jupyter kernel" in bundle["text/plain"]


def test_widget_image_takes_the_png_size_and_is_never_stretched():
    import matplotlib.pyplot as plt
    from PIL import Image

    image = widgets._image()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1])
    widgets._draw_png(image, fig)
    w, h = Image.open(io.BytesIO(image.value)).size
    assert widgets.png_size(image.value) == (w, h)
    assert image.layout.width == f"{w}px" and image.layout.height == "auto"
    assert image.layout.align_self == "flex-start" and image.layout.max_width == "100%"
    with pytest.raises(ValueError):
        widgets.png_size(b"GIF89a....")


def test_au_explorer_displays_its_fallback_outside_a_kernel(capsys):
    widgets.au_explorer(size=48)
    out = capsys.readouterr().out
    assert out.strip() == widgets.fallback_text("au_explorer")


# ---- site pages ----------------------------------------------------------------------------------------------------
def _card(tmp_path, stem="00_x", claims=(("A > B", "holds"), ("C | D", "inconclusive"))):
    folder = tmp_path / "figures" / stem
    folder.mkdir(parents=True)
    card = {"notebook": stem, "profile": "cpu", "dataset": "synthfer", "context": {},
            "counts": {"holds": 1, "does not hold": 0, "inconclusive": 1},
            "claims": [{"claim": c, "paper": "> 0.2", "measured": "0.3\nvs 0.1", "verdict": v} for c, v in claims],
            "metrics": {"acc": 0.3}}
    (folder / "scorecard.json").write_text(json.dumps(card))
    return tmp_path / "figures"


def test_run_info_reads_profile_date_wall_time_and_counts(tmp_path):
    figures = _card(tmp_path)
    info = site.run_info(_executed_notebook(), "00_x", figures)
    assert (info["profile"], info["executed"], info["wall"]) == ("cpu", "2026-12-05", "2.1 min")
    assert info["counts"] == {"holds": 1, "does not hold": 0, "inconclusive": 1} and info["complete"]
    assert info["title"] == "00 · A title"


def test_run_info_says_not_recorded_instead_of_inventing(tmp_path):
    nb = _executed_notebook()
    nb.metadata["papermill"].update(duration=None, end_time=None)
    info = site.run_info(nb, "00_x", tmp_path)                              # and no scorecard at all
    assert info["wall"] == "not recorded" and info["executed"] == "not recorded"
    assert info["counts"] is None and not info["complete"]
    assert "no scorecard recorded" in site.run_card(info)
    assert "No `figures/00_x/scorecard.json`" in site.scorecard_markdown(info)
    assert "| - | - | - |" in site.index_markdown([info])


def test_scorecard_table_escapes_cells_and_index_links_every_notebook(tmp_path):
    info = site.run_info(_executed_notebook(), "00_x", _card(tmp_path))
    table = site.scorecard_markdown(info)
    assert "| 2 | C \\| D | > 0.2 | 0.3 vs 0.1 | **inconclusive** |" in table
    assert table.startswith("## Scorecard file")
    index = site.index_markdown([info])
    assert "[00 · A title](notebooks/00_x.ipynb)" in index
    row = '| `cpu` | <span class="nowrap">2026-12-05</span> | <span class="nowrap">2.1 min</span> | 1 | 0 | 1 |'
    assert row in index
    assert "notebooks/00_x" in index.split("{toctree}")[1]


def test_stage_puts_the_run_card_under_the_title_and_the_scorecard_last(tmp_path):
    src = tmp_path / "src"
    notebook = tmp_path / "00_x.ipynb"
    nbformat.write(_executed_notebook(), notebook)
    figures = _card(tmp_path)
    site.stage(src, [notebook], figures)
    staged = nbformat.read(src / "notebooks" / "00_x.ipynb", as_version=4)
    assert staged.cells[0].source == "# 00 · A title"
    assert staged.cells[1].source.startswith("> **Paper:**") and "Profile `cpu`" in staged.cells[1].source
    assert staged.cells[2].source.startswith("The intro.")
    assert staged.cells[-1].source.startswith("## Scorecard file")
    assert nbclean.machine_paths(staged) == []
    assert (src / "index.md").is_file() and "myst_nb" in (src / "conf.py").read_text()
    assert (src / "_static" / "favicon.png").read_bytes()[:4] == b"\x89PNG"


def test_the_assets_are_pinned_by_version_and_integrity():
    for name, (version, integrity, files) in site.NPM_ASSETS.items():
        assert version.count(".") == 2 and integrity.startswith("sha512-") and files
    assert "html-manager" in site.VENDOR["@jupyter-widgets/html-manager"]
    conf = site.CONF
    assert "vendor/mathjax/" in conf and "vendor/html-manager/embed.js" in conf and "http" not in conf


@pytest.mark.skipif(bool(site.missing_assets()), reason="the site's npm tarballs are not fetched "
                                                         "(python -m fernb site --fetch-assets)")
def test_install_assets_serves_mathjax_and_the_widget_renderer_locally(tmp_path):
    sizes = site.install_assets(tmp_path)
    vendor = tmp_path / "vendor"
    assert (vendor / "mathjax" / "tex-mml-chtml.js").is_file()
    assert list((vendor / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert (vendor / "html-manager" / "embed.js").is_file()
    assert list((vendor / "html-manager").glob("*.woff2"))
    assert not list(vendor.rglob("*.map")) and not (vendor / "mathjax" / "sre").exists()
    assert sum(sizes.values()) < 12e6


def test_every_committed_notebook_shows_its_figures():
    """The committed executed notebooks carry their figures inline (notebook 02 was once executed under an inherited
    MPLBACKEND=Agg and came out with none: its site page showed no figure and the browser test compared 0 with 0)."""
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        images = sum(any(k.startswith("image/") for k in o.get("data", {}))
                     for c in nb.cells for o in c.get("outputs", []))
        assert images >= 5, f"{path.name}: {images} image outputs"
