"""`python -m fernb run [NOTEBOOK ...] --profile smoke|cpu|gpu|paper [-p key value ...] [--check]`
(`python -m fernb train ...`: the training jobs that run under torchrun, `fernb.train`; `python -m fernb site`: the
browsable site of the executed notebooks, `fernb.site`.)

Executes notebooks with papermill under an explicit Jupyter kernel, writes the executed copies back in place (or to
--output-dir; the smoke profile always goes to a separate folder so test runs never overwrite committed notebooks),
keeps the partial output notebook of a failed run and names the failing cell, then prints (and writes) one summary
table of all scorecards. Every executed notebook is tidied (`fernb.nbclean`): no absolute path of the executing
machine in its metadata or outputs, no path reprs, widget outputs with a text fallback a reader understands.
`--check` compares each scorecard's metrics with the regression floors in tests/floors.json and exits non-zero when
one falls below.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .paths import REPO

NOTEBOOK_DIR = REPO / "notebooks"
FLOORS = REPO / "tests" / "floors.json"
KERNEL = "fernb"
# A cell running longer than this fails the run with its name, instead of a hung kernel stalling CI.
CELL_TIMEOUT = {"smoke": 600, "cpu": 1800, "gpu": 1800, "paper": 48 * 3600}


INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def resolve(name: str) -> Path:
    """A notebook by path, full stem ('00_synthfer_tour') or number prefix ('00')."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path.resolve()
    matches = [p for p in notebooks() if p.stem == name or p.stem.startswith(f"{name}_")]
    if len(matches) != 1:
        known = ", ".join(p.stem for p in notebooks())
        raise SystemExit(f"no single notebook matches {name!r}; known: {known}")
    return matches[0]


def ensure_kernel(name: str = KERNEL) -> str:
    """Register a kernel named `name` for this interpreter if Jupyter does not know it yet."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=name, display_name=f"Python ({name})", prefix=sys.prefix)
    return name


def _coerce(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _failing_cell(output: Path) -> str:
    """Describe the first cell of an executed notebook whose output is an error."""
    import nbformat

    if not output.is_file():
        return "no output notebook was written"
    nb = nbformat.read(output, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                return f"cell {i} ({first[:70]!r}): {out.get('ename')}: {out.get('evalue')}"
    return "no cell recorded an error (the kernel may have died)"


def execute(path: Path, profile: str, params: dict, output_dir: Path | None, kernel: str,
            progress: bool = False) -> dict:
    import papermill as pm

    output = (output_dir / path.name) if output_dir else path
    parameters = {"profile": profile, **params}
    t0 = time.perf_counter()
    status = {"notebook": path.stem, "profile": profile, "output": str(output)}
    try:
        pm.execute_notebook(str(path), str(output), parameters=parameters, kernel_name=kernel,
                            cwd=str(path.parent), progress_bar=progress, log_output=False,
                            execution_timeout=CELL_TIMEOUT[profile])
        status["ok"] = True
    except Exception as err:  # papermill raises PapermillExecutionError; keep the partial notebook and say where
        status["ok"] = False
        status["error"] = _failing_cell(output) if output.is_file() else f"{type(err).__name__}: {err}"
    status["seconds"] = round(time.perf_counter() - t0, 1)
    if output.is_file():
        _tidy(output)
    return status


def _tidy(output: Path) -> None:
    """Strip the executing machine's paths (papermill's input/output paths, path reprs) from an executed notebook.
    A failure here must not cost the run: the notebook is left as papermill wrote it, with a warning."""
    from .nbclean import tidy_file

    try:
        tidy_file(output, REPO)
    except Exception as err:  # noqa: BLE001
        print(f"  warning: could not tidy {output.name}: {type(err).__name__}: {err}", flush=True)


def load_scorecard(notebook: str) -> dict | None:
    from .paths import figures_root

    path = figures_root() / notebook / "scorecard.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary_table(statuses: list[dict]) -> str:
    lines = ["| notebook | profile | status | minutes | claims holding | key metrics |", "|---|---|---|---|---|---|"]
    for st in statuses:
        card = load_scorecard(st["notebook"]) or {}
        claims = card.get("claims", [])
        held = sum(c["verdict"] == "holds" for c in claims)
        metrics = ", ".join(f"{k}={v}" for k, v in list(card.get("metrics", {}).items())[:4])
        state = "ok" if st["ok"] else "FAILED"
        lines.append(f"| {st['notebook']} | {st['profile']} | {state} | {st['seconds'] / 60:.1f} | "
                     f"{held}/{len(claims)} | {metrics} |")
    return "\n".join(lines)


def merge_summary(previous: str, table: str) -> str:
    """`table`'s rows replace the rows of the same notebooks in `previous` (a summary file written earlier); the rows
    of notebooks not run this time are kept, so running one notebook does not erase the others' results. Sorted by
    notebook."""
    head, rows = table.splitlines()[:2], {}
    for text in (previous, table):
        for line in text.splitlines()[2:]:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 6 and cells[0]:
                rows[cells[0]] = line
    return "\n".join(head + [rows[k] for k in sorted(rows)])


def check_floors(statuses: list[dict], floors_path: Path = FLOORS) -> list[str]:
    """Every metric with a stored floor for (notebook, profile) must be >= its floor; returns the failures."""
    floors = json.loads(floors_path.read_text()) if floors_path.is_file() else {}
    failures = []
    for st in statuses:
        expected = floors.get(st["notebook"], {}).get(st["profile"], {})
        card = load_scorecard(st["notebook"])
        if not st["ok"]:
            failures.append(f"{st['notebook']}: run failed: {st.get('error')}")
            continue
        if card is None:
            failures.append(f"{st['notebook']}: no scorecard.json was written")
            continue
        for key, floor in expected.items():
            value = card.get("metrics", {}).get(key)
            if value is None or value < floor:
                failures.append(f"{st['notebook']} [{st['profile']}]: {key} = {value} is below its floor {floor}")
    return failures


def build_cache(profile: str | None) -> int:
    """Render (or find cached) the labeled SynthFER splits at the sizes the notebooks of `profile` ask for."""
    from .data.synthfer import synthfer
    from .profiles import NOTEBOOKS, default_profile, get

    profile = profile or default_profile()
    seen = set()
    for nb in NOTEBOOKS:
        s = get(nb, profile)
        for split, n in (("train", s.n_train), ("val", s.n_val), ("test", s.n_test)):
            key = (split, n, s.image_size, s.channels)
            if n is None or key in seen:
                continue
            seen.add(key)
            t0 = time.perf_counter()
            ds = synthfer(split, n, size=s.image_size, channels=s.channels)
            print(f"{ds!r}: {time.perf_counter() - t0:.1f} s")
    return 0


def _profile_compile(path: Path, profile: str) -> str:
    """The profile's `compile` setting for this notebook, as `FERNB_COMPILE` (read by `engine.fit`'s default)."""
    from .profiles import get

    value = getattr(get(path.stem, profile), "compile", False)
    return "off" if value in (False, None) else ("on" if value is True else str(value))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:              # its own parser: `python -m fernb train --help`
        from .train import main as train_main
        return train_main(argv[1:])
    if argv[:1] == ["site"]:               # its own parser: `python -m fernb site --help`
        from .site import main as site_main
        return site_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m fernb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a model or pre-train a backbone, on one GPU or under torchrun "
                                 "(python -m fernb train --help)")
    sub.add_parser("site", help="build the browsable site of the executed notebooks into build/site "
                                "(python -m fernb site --help)")
    run = sub.add_parser("run", help="execute notebooks with papermill")
    run.add_argument("notebooks", nargs="*", help="names or number prefixes (default: all)")
    run.add_argument("--profile", choices=("smoke", "cpu", "gpu", "paper"), default=None,
                     help="default: gpu when CUDA is available, else cpu")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    run.add_argument("--output-dir", type=Path, default=None,
                     help="write executed notebooks and figures here instead of in place "
                          "(smoke runs default to a temporary folder)")
    run.add_argument("--check", action="store_true", help="compare scorecard metrics with tests/floors.json")
    run.add_argument("--kernel", default=KERNEL)
    run.add_argument("--progress", action="store_true", help="show papermill's cell progress bar")
    cache = sub.add_parser("cache", help="render the SynthFER splits a profile uses into data/cache/")
    cache.add_argument("--profile", choices=("smoke", "cpu", "gpu", "paper"), default=None)
    args = parser.parse_args(argv)
    if args.command == "cache":
        return build_cache(args.profile)

    from .profiles import default_profile

    profile = args.profile or default_profile()
    params = {k: _coerce(v) for k, v in args.parameter}
    paths = [resolve(n) for n in args.notebooks] if args.notebooks else notebooks()
    output_dir = args.output_dir
    if output_dir is None and profile == "smoke":
        output_dir = Path(tempfile.mkdtemp(prefix="fernb-smoke-"))
    if output_dir is not None:
        output_dir = output_dir.resolve()
        output_dir.mkdir(parents=True, exist_ok=True)
        os.environ["FERNB_FIGURES"] = str(output_dir / "figures")  # inherited by the kernel
        os.environ.setdefault("FERNB_CHECKPOINTS", str(output_dir / "checkpoints"))
    kernel = ensure_kernel(args.kernel)
    os.environ["FERNB_HEADLESS"] = "1"  # profiles turn progress bars off: they are clutter in an executed notebook
    # figures go into the notebook whatever backend the caller's shell set: an inherited MPLBACKEND=Agg (the test
    # suite sets it) made the kernel draw every figure into nothing, and an executed notebook came out with no image
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    statuses = []
    user_compile = os.environ.get("FERNB_COMPILE")
    for path in paths:
        print(f"running {path.stem} [{profile}] ...", flush=True)
        os.environ["FERNB_COMPILE"] = user_compile if user_compile is not None else _profile_compile(path, profile)
        st = execute(path, profile, params, output_dir, kernel, args.progress)
        print(f"  {'ok' if st['ok'] else 'FAILED'} in {st['seconds']:.0f} s -> {st['output']}", flush=True)
        if not st["ok"]:
            print(f"  failing {st['error']}\n  the partial output notebook is kept at {st['output']}", flush=True)
        statuses.append(st)
    table = summary_table(statuses)
    print("\n" + table)
    from .paths import figures_root

    (figures_root()).mkdir(parents=True, exist_ok=True)
    summary = figures_root() / f"summary-{profile}.md"
    previous = summary.read_text() if summary.is_file() else ""
    summary.write_text(merge_summary(previous, table) + "\n")
    code = 0 if all(st["ok"] for st in statuses) else 1
    if args.check:
        failures = check_floors(statuses)
        for f in failures:
            print("FLOOR", f)
        print("check:", "passed" if not failures else f"{len(failures)} below floor")
        code = code or (1 if failures else 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
