"""`python -m fernb site`: a browsable static site of the committed executed notebooks (`make site`).

Sphinx with MyST-NB renders the outputs the notebooks carry; nothing is re-executed. The site needs no network when it
is built or read: Sphinx and its theme serve their own JavaScript and CSS, and the two libraries the notebooks need
from outside, MathJax (TeX) and @jupyter-widgets/html-manager (it draws a widget from the state saved in the
notebook), are copied into the site from npm tarballs pinned here by version and integrity hash. Those tarballs are
fetched once, with `npm pack` from the npm registry, into the environment (`<sys.prefix>/share/fernb-site/`, or
`$FERNB_SITE_ASSETS`): `make bootstrap` does it, and a build that finds them missing does it first.

What the builder adds to the copies it renders (the notebooks in the repository are never written):
- the index page: each notebook with its paper, the profile it was executed in, when, its wall time (papermill's
  record in the notebook; "not recorded" where there is none) and its scorecard counts, from
  figures/<notebook>/scorecard.json;
- on each notebook page, under its title, the same run card, and at its end the scorecard table from that file;
- `fernb.nbclean.tidy`: no absolute path of the executing machine, no path reprs, widget outputs whose text fallback
  says what the widget is (for notebooks executed before those rules).
A widget cell shows the widget drawn from its saved state (its controls do nothing without a kernel, which the run
card says), after the static figure the notebook shows first.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from .paths import REPO

NOTEBOOK_DIR = REPO / "notebooks"
DEFAULT_OUT = REPO / "build" / "site"

# npm package -> (version, the registry's integrity hash, files of the tarball the site serves, under package/)
NPM_ASSETS = {
    "mathjax": ("3.2.2",
                "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
                ("LICENSE", "es5/tex-mml-chtml.js", "es5/input/", "es5/output/chtml/", "es5/a11y/", "es5/ui/",
                 "es5/adaptors/")),
    # embed.js: the html-manager bundle that needs no RequireJS (the notebooks use only ipywidgets' own controls);
    # the font files are Font Awesome's, loaded by its CSS from beside the script
    "@jupyter-widgets/html-manager": ("1.0.15",
                                      "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//"
                                      "SABeNz1yp47bCrJ3CQA==",
                                      ("dist/embed.js", "dist/embed.js.LICENSE.txt", "dist/*.woff2", "dist/*.woff",
                                       "dist/*.ttf")),
}
VENDOR = {"mathjax": "mathjax", "@jupyter-widgets/html-manager": "html-manager"}

# notebook -> (the paper it teaches, short for the index; in full for its page)
PAPERS = {
    "00_synthfer_tour": ("SynthFER, the project's own dataset (no paper)",
                         "none: SynthFER is the project's own dataset; its scorecard holds design claims"),
    "01_fucle_active_learning": ("Wang, Zhang, Sun 2024 (FUCLE)",
                                 "Wang, Zhang, Sun 2024, A Facial Expression Recognition Method Integrating "
                                 "Uncertainty Estimation and Active Learning (FUCLE)"),
    "02_ssfer_mae_facemix": ("Song et al. (SSFER)",
                             "Song et al., Bridging the Gaps: Utilizing Unlabeled Face Recognition Datasets to Boost "
                             "Semi-Supervised Facial Expression Recognition (SSFER)"),
    "03_scl_cuem_arm": ("Hu et al. (SCL + CUEM)",
                        "Hu et al., Facial Expression Recognition with Supervised Contrastive Learning and "
                        "Uncertainty Estimation"),
    "04_dalnet_active_incremental": ("Xu et al. (DAL-CNN)",
                                     "Xu et al., Weakly Supervised Facial Expression Recognition via Transferred "
                                     "DAL-CNN and Active Incremental Learning"),
    "05_adacm_semi_supervised": ("Li et al., CVPR 2022 (Ada-CM)",
                                 "Li et al., CVPR 2022, Towards Semi-Supervised Deep Facial Expression Recognition "
                                 "with an Adaptive Confidence Margin (Ada-CM), as reproduced by a course report"),
}
VERDICTS = ("holds", "does not hold", "inconclusive")

# what a reader must never see on a page: a repr where a figure or a sentence belongs
REPR_PATTERNS = (r"PosixPath\(", r"WindowsPath\(", r"\b[HV]Box\(children=", r"<Figure size \d+x\d+",
                 r" object at 0x[0-9a-f]+>")


# ---- assets --------------------------------------------------------------------------------------------------------
def assets_dir() -> Path:
    return Path(os.environ.get("FERNB_SITE_ASSETS") or Path(sys.prefix) / "share" / "fernb-site")


def _tarball(name: str, version: str) -> Path:
    return assets_dir() / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def missing_assets() -> list[str]:
    """The pinned npm tarballs that are absent or differ from their pinned hash ('name@version')."""
    return [f"{name}@{version}" for name, (version, integrity, _) in NPM_ASSETS.items()
            if not _tarball(name, version).is_file() or _integrity(_tarball(name, version)) != integrity]


def fetch_assets(quiet: bool = False) -> Path:
    """Fetch the pinned tarballs that are missing with `npm pack` (the npm registry) and check their hashes."""
    missing = missing_assets()
    if not missing:
        return assets_dir()
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("fernb site: the site serves MathJax and the widget renderer itself, from npm tarballs "
                         f"({', '.join(missing)}) that are not in {assets_dir()} yet, and `npm` is not installed "
                         "to fetch them (Debian: apt-get install npm; or run `make bootstrap` where npm exists "
                         "and copy that folder here).")
    folder = assets_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for spec in missing:
        name, version = spec.rsplit("@", 1)
        if not quiet:
            print(f"fetching {spec} from the npm registry (npm pack) ...", flush=True)
        proc = subprocess.run([npm, "pack", "--silent", "--pack-destination", str(folder), spec],
                              capture_output=True, text=True, timeout=600)
        path = _tarball(name, version)
        if proc.returncode != 0 or not path.is_file():
            raise SystemExit(f"fernb site: `npm pack {spec}` failed: {proc.stderr.strip()[-2000:]}")
        got, want = _integrity(path), NPM_ASSETS[name][1]
        if got != want:
            path.unlink()
            raise SystemExit(f"fernb site: {spec} has integrity {got}, not the pinned {want}; removed it")
    return folder


def _member_wanted(member: str, patterns) -> bool:
    import fnmatch

    rel = member[len("package/"):] if member.startswith("package/") else None
    if rel is None:
        return False
    return any(rel.startswith(p) if p.endswith("/") else fnmatch.fnmatch(rel, p) for p in patterns)


def install_assets(static: Path) -> dict:
    """Unpack the files the site serves from each pinned tarball into `static`/vendor/<name>/; returns bytes per
    library."""
    sizes = {}
    for name, (version, _, patterns) in NPM_ASSETS.items():
        target = static / "vendor" / VENDOR[name]
        target.mkdir(parents=True, exist_ok=True)
        total = 0
        with tarfile.open(_tarball(name, version)) as tar:
            for member in tar.getmembers():
                if not member.isfile() or not _member_wanted(member.name, patterns):
                    continue
                rel = member.name[len("package/"):]
                if rel.startswith(("es5/", "dist/")):
                    rel = rel.split("/", 1)[1]
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(member).read())
                total += member.size
        (target / "VERSION").write_text(f"{name} {version} (npm)\n")
        sizes[name] = total
    return sizes


# ---- what the pages say ---------------------------------------------------------------------------------------------
def _title(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _scorecard(stem: str, figures: Path) -> dict | None:
    path = figures / stem / "scorecard.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _counts(card: dict | None) -> dict | None:
    if card is None:
        return None
    counts = card.get("counts")
    if not counts:
        counts = {v: sum(c.get("verdict") == v for c in card.get("claims", [])) for v in VERDICTS}
    return {v: int(counts.get(v, 0)) for v in VERDICTS}


def run_info(nb, stem: str, figures: Path) -> dict:
    """What the index and the run card say about one executed notebook."""
    papermill = nb.metadata.get("papermill", {}) or {}
    card = _scorecard(stem, figures)
    duration = papermill.get("duration")
    profile = (papermill.get("parameters") or {}).get("profile") or (card or {}).get("profile")
    end = papermill.get("end_time") or ""
    return {
        "stem": stem, "title": _title(nb, stem), "paper": PAPERS.get(stem, ("-", "-"))[0],
        "paper_full": PAPERS.get(stem, ("-", "-"))[1],
        "profile": profile or "not recorded",
        "card_profile": (card or {}).get("profile"),
        "dataset": (card or {}).get("dataset"),
        "executed": end[:10] if end else "not recorded",
        "wall": f"{duration / 60:.1f} min" if isinstance(duration, (int, float)) else "not recorded",
        "counts": _counts(card), "card": card,
        "complete": papermill.get("exception") in (None, False) and bool(end),
    }


def _cell_text(value) -> str:
    text = "" if value is None else str(value)
    return re.sub(r"\s+", " ", text).replace("|", "\\|").strip()


def _counts_text(counts: dict | None) -> str:
    if counts is None:
        return "no scorecard recorded"
    return " · ".join(f"{counts[v]} {v}" for v in VERDICTS)


def run_card(info: dict) -> str:
    lines = [f"**Paper:** {info['paper_full']}.",
             f"**Executed copy.** Profile `{info['profile']}`, executed {info['executed']}, wall time {info['wall']} "
             f"(papermill's record in the notebook). Scorecard: {_counts_text(info['counts'])}"
             + (" ([the table](#scorecard-file))." if info["counts"] else ".")]
    if info["card_profile"] and info["card_profile"] != info["profile"]:
        lines.append(f"The scorecard file was written by a `{info['card_profile']}` run, not by this copy's.")
    if not info["complete"]:
        lines.append("This copy did not record a finished run (its papermill record has no end time or an error).")
    lines.append("SynthFER numbers illustrate a method; they are not the paper's numbers. The widgets on this page "
                 "are drawn from the state saved when the notebook ran: their controls need a live Jupyter kernel "
                 "(open the notebook in JupyterLab and run it).")
    return "\n".join(f"> {line}\n>" for line in lines).rstrip(">\n") + "\n"


def scorecard_markdown(info: dict) -> str:
    card = info["card"]
    path = f"figures/{info['stem']}/scorecard.json"
    if card is None:
        return f"## Scorecard file\n\nNo `{path}` was found when this site was built.\n"
    out = [f"## Scorecard file\n", f"`{path}`: profile `{card.get('profile')}`, dataset `{card.get('dataset')}`; "
           f"**{_counts_text(info['counts'])}** of {len(card.get('claims', []))} claims. Each verdict comes from "
           f"the interval and rule stored with it (see the README's *How to read a scorecard*).\n",
           "| # | claim | paper | measured | verdict |", "|---|---|---|---|---|"]
    for i, claim in enumerate(card.get("claims", []), 1):
        out.append(f"| {i} | {_cell_text(claim.get('claim'))} | {_cell_text(claim.get('paper'))} | "
                   f"{_cell_text(claim.get('measured'))} | **{_cell_text(claim.get('verdict'))}** |")
    metrics = card.get("metrics") or {}
    if metrics:
        out.append("\nMetrics: " + ", ".join(f"`{k}` = {v}" for k, v in metrics.items()) + ".")
    return "\n".join(out) + "\n"


def index_markdown(infos: list[dict]) -> str:
    rows = ["| notebook | paper | profile | executed | wall time | holds | does not hold | inconclusive |",
            "|---|---|---|---|---|---|---|---|"]
    for info in infos:
        c = info["counts"] or {}
        rows.append(f"| [{_cell_text(info['title'])}](notebooks/{info['stem']}.ipynb) | {_cell_text(info['paper'])} "
                    f"| `{info['profile']}` | <span class=\"nowrap\">{info['executed']}</span> | "
                    f"<span class=\"nowrap\">{info['wall']}</span> | "
                    + " | ".join(str(c[v]) if c else "-" for v in VERDICTS) + " |")
    toc = "\n".join(f"notebooks/{info['stem']}" for info in infos)
    return f"""# fernb: facial-expression recognition, notebook by notebook

Executed Jupyter notebooks that teach and re-run five facial-expression-recognition papers on **SynthFER**, a
dataset rendered from facial action units, with the thin tested package `fernb`. These pages show the outputs
committed with each notebook; nothing was re-executed to build them. SynthFER numbers illustrate a method; they are
not the paper's numbers.

{chr(10).join(rows)}

The profile is the preset a notebook was executed in (`smoke`, `cpu`, `gpu`, `paper`); the wall time is papermill's
record of that execution. The counts are the verdicts of the notebook's scorecard (`figures/<notebook>/scorecard.json`):
each claim of the paper, measured here and judged by code from a 95 % interval, shown in full at the end of each
page. Widgets are drawn from the state saved with the notebook; to move them, open the notebook in JupyterLab with
the `fernb` kernel and run it.

```{{toctree}}
:hidden:
:maxdepth: 1

{toc}
```
"""


CONF = '''# generated by fernb.site; edit fernb/site.py instead
project = "fernb"
author = "fernb"
html_title = "fernb notebooks"
extensions = ["myst_nb"]
nb_execution_mode = "off"                 # render the committed outputs; never execute
nb_merge_streams = True
nb_render_markdown_format = "myst"        # display(Markdown(...)) outputs with $...$ become math
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 2
nb_ipywidgets_js = {"vendor/html-manager/embed.js": {}}   # served by the site itself (no CDN, no RequireJS)
mathjax_path = "vendor/mathjax/tex-mml-chtml.js"
html_theme = "sphinx_book_theme"
html_theme_options = {"show_toc_level": 1, "use_download_button": False, "use_fullscreen_button": False}
html_context = {"default_mode": "light"}  # the theme logs an error on a first visit without a stored mode
html_static_path = ["_static"]
html_css_files = ["fernb.css"]
html_favicon = "_static/favicon.png"


def setup(app):
    # after Sphinx's inline MathJax configuration, before MathJax itself (deferred) runs
    app.add_js_file("mathjax-hub.js", priority=600)
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header", "misc.highlighting_failure"]
exclude_patterns = ["_build"]
'''

CSS = """/* fernb site: figures keep their own size and aspect ratio; wide outputs scroll instead of overflowing */
div.cell_output img { max-width: 100%; height: auto; }
/* a widget image drawn from a state saved before fernb.widgets sized it: never stretched by its flex row */
div.cell_output img.widget-image { height: auto !important; align-self: flex-start !important; max-width: 100%; }
div.cell_output { overflow-x: auto; }
/* notebooks carry wide figures and tables: give the article the room between the sidebars */
.bd-page-width { max-width: 110rem; }
.nowrap { white-space: nowrap; }
.bd-main .bd-content .bd-article-container { max-width: 100%; }
"""

# ipywidgets' html-manager typesets widget labels with MathJax 2's API (MathJax.Hub.Queue); the site loads MathJax 3,
# which has no Hub: without this every widget logs "Cannot read properties of undefined (reading 'Queue')".
MATHJAX_HUB = """(function () {
  var config = window.MathJax || {};
  config.startup = config.startup || {};
  var ready = config.startup.ready;
  config.startup.ready = function () {
    if (ready) { ready(); } else { MathJax.startup.defaultReady(); }
    MathJax.Hub = MathJax.Hub || {Queue: function (job) {
      var element = job && job[2];
      if (element && MathJax.typesetPromise) { MathJax.typesetPromise([element]).catch(function () {}); }
    }};
  };
  window.MathJax = config;
})();
"""


def favicon_png() -> bytes:
    """A 32-pixel SynthFER face (happiness), so browsers find an icon instead of asking for a missing one."""
    import io

    from PIL import Image

    from .data import synthfer

    face = synthfer.render_face({au: 1.0 for au in synthfer.PROTOTYPES["happiness"]}, identity=3, size=32)
    buf = io.BytesIO()
    Image.fromarray((face.permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()).save(buf, format="PNG")
    return buf.getvalue()


# ---- build ---------------------------------------------------------------------------------------------------------
def _insert_after_title(nb, cell) -> None:
    """Put `cell` right under the notebook's '# title' line (splitting the first markdown cell there)."""
    import nbformat

    for i, c in enumerate(nb.cells):
        if c.cell_type != "markdown":
            continue
        lines = c.source.splitlines()
        if lines and lines[0].startswith("# "):
            rest = "\n".join(lines[1:]).strip("\n")
            c.source = lines[0]
            nb.cells[i + 1:i + 1] = [cell] + ([nbformat.v4.new_markdown_cell(rest)] if rest else [])
        else:
            nb.cells.insert(i, cell)
        return
    nb.cells.insert(0, cell)


def stage(src: Path, notebooks: list[Path], figures: Path) -> list[dict]:
    """Write the Sphinx source tree: cleaned notebook copies with run card and scorecard, index, conf, CSS."""
    import nbformat

    from .nbclean import tidy

    (src / "notebooks").mkdir(parents=True, exist_ok=True)
    (src / "_static").mkdir(parents=True, exist_ok=True)
    infos = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        tidy(nb, REPO)
        info = run_info(nb, path.stem, figures)
        _insert_after_title(nb, nbformat.v4.new_markdown_cell(run_card(info)))
        nb.cells.append(nbformat.v4.new_markdown_cell(scorecard_markdown(info)))
        nbformat.write(nb, src / "notebooks" / path.name)
        infos.append(info)
    (src / "index.md").write_text(index_markdown(infos))
    (src / "conf.py").write_text(CONF)
    (src / "_static" / "fernb.css").write_text(CSS)
    (src / "_static" / "mathjax-hub.js").write_text(MATHJAX_HUB)
    (src / "_static" / "favicon.png").write_bytes(favicon_png())
    return infos


def audit(out: Path) -> list[str]:
    """Problems a reader would see, found in the built HTML: reprs, machine paths, links to other hosts."""
    from .nbclean import MACHINE_PATH

    problems = []
    for page in sorted(out.rglob("*.html")):
        text = page.read_text(errors="replace")
        body = re.sub(r"<script\b[^>]*>.*?</script>", "", text, flags=re.S)   # saved widget state is not shown
        rel = page.relative_to(out).as_posix()
        for pattern in REPR_PATTERNS:
            for m in re.finditer(pattern, html.unescape(body)):
                problems.append(f"{rel}: repr {m.group(0)!r}")
        for m in MACHINE_PATH.finditer(html.unescape(body)):
            problems.append(f"{rel}: machine path {m.group(0)!r}")
        for m in re.finditer(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)=["'](https?:)?//""", text):
            problems.append(f"{rel}: loads from another host: {m.group(0)[:120]!r}")
    return problems


def build(out: Path = DEFAULT_OUT, notebooks: list[Path] | None = None, figures: Path | None = None,
          jobs: int = 1, quiet: bool = False) -> dict:
    """Build the site into `out` (replaced); returns a report (pages, seconds, sizes, audit problems)."""
    from .paths import figures_root

    t0 = time.perf_counter()
    notebooks = sorted(notebooks or NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    figures = Path(figures or figures_root())
    fetch_assets(quiet=quiet)
    out = Path(out).resolve()
    work = out.parent / f".{out.name}-src"
    for folder in (work, out):
        if folder.exists():
            shutil.rmtree(folder)
    src = work / "src"
    infos = stage(src, notebooks, figures)
    sizes = install_assets(src / "_static")
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", str(jobs), "-d", str(work / "doctrees"),
           str(src), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    warnings = [line for line in (proc.stderr or "").splitlines() if line.strip()]
    if proc.returncode != 0:
        raise SystemExit(f"fernb site: sphinx-build failed ({proc.returncode}):\n" + "\n".join(warnings[-40:]))
    shutil.rmtree(work, ignore_errors=True)
    (out / ".nojekyll").write_text("")
    report = {
        "out": str(out), "pages": [f"notebooks/{p.stem}.html" for p in notebooks],
        "seconds": round(time.perf_counter() - t0, 1),
        "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "vendor_bytes": sizes, "warnings": warnings, "problems": audit(out), "notebooks": [
            {k: v for k, v in info.items() if k != "card"} for info in infos],
    }
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fernb site", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT.relative_to(REPO)}")
    parser.add_argument("--fetch-assets", action="store_true",
                        help="only fetch the pinned npm tarballs (MathJax, the widget renderer) if missing")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="sphinx-build processes")
    parser.add_argument("--serve", action="store_true", help="then serve the site on http://127.0.0.1:PORT/")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.fetch_assets:
        print(f"site assets in {fetch_assets()}")
        return 0
    report = build(args.out, jobs=args.jobs)
    out = Path(report["out"])
    print(f"built {len(report['pages'])} notebook pages + index in {report['seconds']:.0f} s: {out / 'index.html'} "
          f"({report['bytes'] / 1e6:.1f} MB)")
    for info in report["notebooks"]:
        print(f"  {info['stem']}: {info['profile']}, {info['executed']}, {info['wall']}, "
              f"{_counts_text(info['counts'])}")
    for line in report["warnings"]:
        print("  sphinx:", line)
    for line in report["problems"]:
        print("  PROBLEM", line)
    if args.serve:
        serve(out, args.port)
    return 1 if report["problems"] else 0


def serve(folder: Path, port: int = 8000) -> None:
    """Serve `folder` on 127.0.0.1 only (Ctrl-C stops)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"serving {folder} on http://127.0.0.1:{port}/ (Ctrl-C stops)", flush=True)
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
