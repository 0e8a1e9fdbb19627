"""What an executed notebook must not carry: the executing machine's paths, and output reprs that tell a reader
nothing.

`tidy(nb)` is applied by the runner to every notebook it executes and by the site builder to the copies it renders
(so notebooks executed before these rules read cleanly on the site too):

- papermill's `input_path` / `output_path` become repository-relative (a path outside the repository keeps only its
  file name);
- an `execute_result` that is only the repr of a path (`PosixPath('/abs/figures/...png')`, what a cell ending in a
  call that returned a path printed) is dropped;
- an absolute path under the repository (or the home folder) inside a text output becomes relative (`~/...` for the
  home folder), and ipykernel's temporary cell file names (`/tmp/ipykernel_123/456.py`) become `<cell>`;
- a widget output whose text fallback is the widget tree's repr (`HBox(children=(VBox(...`) gets the explorer's
  `fernb.widgets.fallback_text`, as the explorers now display themselves;
- a styled table whose text fallback is the object's repr (`<pandas.io.formats.style.Styler at 0x7f...>`, which
  tells a plain-text reader nothing and changes at every run) gets the table as text, read from its own HTML.

`machine_paths(nb)` lists what is left that looks like a path of the executing machine.
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from .paths import REPO

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PATH_REPR = re.compile(r"""^(?:Posix|Windows|Pure(?:Posix|Windows)?)?Path\((['"]).*\1\)$""", re.S)
WIDGET_REPR = re.compile(r"^[A-Z]\w*\((?:children|value|description|options|layout)=", re.S)
EXPLORER_CALL = re.compile(r"\bwidgets\.(\w+_explorer)\s*\(")
STYLER_REPR = re.compile(r"^<pandas\.io\.formats\.style\.Styler object at 0x[0-9a-fA-F]+>$|"
                         r"^<pandas\.io\.formats\.style\.Styler at 0x[0-9a-fA-F]+>$")
IPYKERNEL_FILE = re.compile(r"""(?:[^\s'"():]*/)?ipykernel_\d+/\d+\.py""")
# absolute paths of the usual roots of a machine, and of the roots holding this checkout and the home folder
# (a CI clone may live under /check or /builds); used to audit, not to rewrite
_ROOTS = ["work", "tmp", "home", "root", "Users", "var/folders", "private", "mnt", "opt", "srv"]
_ROOTS += [p.parts[1] for p in (REPO.resolve(), Path.home()) if len(p.parts) > 1 and p.parts[1] not in _ROOTS]
MACHINE_PATH = re.compile(r"""(?<![\w.~])/(?:""" + "|".join(map(re.escape, _ROOTS)) + r""")/[^\s'"<>)\]]*""")
TEXT_MIMES = ("text/plain", "text/html", "text/markdown", "text/latex")


def relative_path(path, root: Path = REPO) -> str:
    """`path` relative to `root` (POSIX separators) when it lies inside it, else its file name only."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except (ValueError, OSError):
        return path.name


def _join(text) -> str:
    return "".join(text) if isinstance(text, list) else text


def _prefixes(root: Path) -> list[tuple[str, str]]:
    """(absolute prefix, replacement) pairs, longest first, so a repository under the home folder becomes relative."""
    pairs = {}
    for base, repl in ((Path.home(), "~/"), (Path(root), "")):
        for form in {str(base), str(base.resolve())}:
            if form not in ("/", ""):
                pairs[form.rstrip("/") + "/"] = repl
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def _relativise(text: str, prefixes) -> str:
    text = IPYKERNEL_FILE.sub("<cell>", text)
    for prefix, repl in prefixes:
        text = text.replace(prefix, repl)
    return text


def _widget_text(source: str) -> str:
    from .widgets import fallback_text

    match = EXPLORER_CALL.search(source or "")
    if match:
        return fallback_text(match.group(1))
    return "Interactive widget: it needs a live Jupyter kernel; its saved state shows where one can be drawn."


class _TableText(HTMLParser):
    """Caption and cell texts of the first <table> in an HTML fragment (the stdlib parser: pandas.read_html needs
    lxml or html5lib, which fernb does not install)."""

    def __init__(self):
        super().__init__()
        self.caption, self.rows, self._cell, self._in = [], [], None, []

    def handle_starttag(self, tag, attrs):
        self._in.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        while self._in and self._in.pop() != tag:
            pass

    def handle_data(self, data):
        if "style" in self._in:
            return
        if self._cell is not None:
            self._cell.append(data)
        elif "caption" in self._in:
            self.caption.append(data)


def table_text(html: str) -> str:
    """A styled table's HTML as aligned plain text (caption first; columns padded to their widest cell)."""
    parser = _TableText()
    parser.feed(html)
    rows = [r for r in parser.rows if r]
    if not rows:
        return ""
    ncol = max(map(len, rows))
    rows = [r + [""] * (ncol - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(ncol)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    caption = " ".join("".join(parser.caption).split())
    return "\n".join(([caption] if caption else []) + lines)


def tidy(nb, root: Path = REPO) -> dict:
    """Clean `nb` (an nbformat NotebookNode) in place; returns how many of each fix it made."""
    counts = {"papermill_paths": 0, "path_reprs": 0, "widget_texts": 0, "styler_texts": 0, "relativised": 0}
    papermill = nb.metadata.get("papermill")
    if isinstance(papermill, dict):
        for key in ("input_path", "output_path"):
            value = papermill.get(key)
            if isinstance(value, str) and Path(value).is_absolute():
                papermill[key] = relative_path(value, root)
                counts["papermill_paths"] += 1
    prefixes = _prefixes(root)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if (out.get("output_type") == "execute_result" and set(data) == {"text/plain"}
                    and PATH_REPR.match(_join(data["text/plain"]).strip())):
                counts["path_reprs"] += 1
                continue
            if WIDGET_VIEW in data and WIDGET_REPR.match(_join(data.get("text/plain", "")).strip()):
                data["text/plain"] = _widget_text(cell.get("source", ""))
                counts["widget_texts"] += 1
            if "text/html" in data and STYLER_REPR.match(_join(data.get("text/plain", "")).strip()):
                text = table_text(_join(data["text/html"]))
                if text:
                    data["text/plain"] = text
                    counts["styler_texts"] += 1
            for mime in TEXT_MIMES:
                if mime in data and isinstance(data[mime], (str, list)):
                    new = _relativise(_join(data[mime]), prefixes)
                    if new != _join(data[mime]):
                        data[mime] = new
                        counts["relativised"] += 1
            if "text" in out:
                new = _relativise(_join(out["text"]), prefixes)
                if new != _join(out["text"]):
                    out["text"] = new
                    counts["relativised"] += 1
            if "traceback" in out:
                new = [_relativise(line, prefixes) for line in out["traceback"]]
                if new != list(out["traceback"]):
                    out["traceback"] = new
                    counts["relativised"] += 1
            kept.append(out)
        cell["outputs"] = kept
    return counts


def tidy_file(path, root: Path = REPO) -> dict:
    """`tidy` a notebook file in place (rewritten only when something changed)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    counts = tidy(nb, root)
    if any(counts.values()):
        nbformat.write(nb, path)
    return counts


def machine_paths(nb) -> list[str]:
    """Absolute paths of a machine and path reprs still present in `nb`'s outputs and metadata: 'where: text'."""
    import json

    found = []
    widget_state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    models = [m.get("state", {}) for m in widget_state.get("state", {}).values()]   # not the base64 buffers
    for key, value in (("papermill", nb.metadata.get("papermill", {})), ("widgets", models)):
        for m in MACHINE_PATH.findall(json.dumps(value, ensure_ascii=False)):
            found.append(f"metadata.{key}: {m}")
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            texts = [_join(data[m]) for m in TEXT_MIMES if m in data]
            texts += [_join(out.get("text", ""))] + list(out.get("traceback", []))
            for text in texts:
                hits = MACHINE_PATH.findall(text) + (["Path(...) repr"] if "PosixPath(" in text else [])
                found += [f"cell {i}: {h}" for h in hits]
    return found
