"""Notebook 05 (Ada-CM) as data and calls: its data, warm starts, job lists, tables, takeaways and scorecard claims.

The notebook explains; this module computes. Every number a takeaway prints is formatted here from the runs it
describes, and every scorecard row is declared in `claims`, where an idle mechanism becomes "not measurable"
through the scorecard API rather than a verdict.

The regime (why runs start from a supervised warm start)
--------------------------------------------------------
Ada-CM's margin (Eq. 1) is the mean confidence of the model's *correct* predictions on the labeled images, grown by
Eq. 2 and floored at 0.8 by the authors' code. A model that is still unsure (a few hundred steps from a
face-recognition backbone) has T_c far below 0.8, so every margin sits on the floor, subset I stays near empty and
Ada-CM reduces to supervised training. The authors fine-tune an MS-Celeb-1M ResNet-18 on RAF-DB; USB, the
benchmark for semi-supervised learning from pretrained backbones, starts every method from the same pretrained
network. Here each seed gets one supervised model (the face-recognition backbone fine-tuned on that seed's labeled
subset, `warm_starts`, loaded from its checkpoint when it exists), and every method of that seed continues from it
for the same number of steps: the semi-supervised methods then see confident predictions from their first step,
the margins can rise above the floor, and "supervised only" (the same warm start, the same steps, labels only) and
"every label" (the same warm start and steps with the whole pool labeled) bound the room semi-supervised learning
has.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from .. import engine, paths
from .. import scorecard as sc
from ..data import synthfer as S
from ..data.sources import has_clean_labels, load_splits
from . import adacm as A
from . import ssl_baselines as SB
from . import transfer

# ---------------------------------------------------------------------------------------------------------------
# The report's numbers (papers/004, Tables 1-2 and Sec. 4.2-4.4), as data
# ---------------------------------------------------------------------------------------------------------------
REPORT_TABLE1 = {
    "RAF-DB": {"supervised only": 80.28, "Pseudo-Labeling": 80.35, "MixMatch": 81.06, "ReMixMatch": 84.00,
               "FixMatch": 83.21, "Ada-CM": 83.70},
    "AffectNet": {"supervised only": 62.52, "Pseudo-Labeling": 61.58, "MixMatch": 63.22, "ReMixMatch": 65.45,
                  "FixMatch": 65.37, "Ada-CM": 65.96}}
REPORT_TABLE2 = {
    "R → A": {"supervised only": 29.88, "Pseudo-Labeling": 29.45, "MixMatch": 27.89, "ReMixMatch": 33.53,
              "FixMatch": 32.89, "Ada-CM": 33.18},
    "R → C": {"supervised only": 70.87, "Pseudo-Labeling": 64.40, "MixMatch": 60.52, "ReMixMatch": 69.58,
              "FixMatch": 69.57, "Ada-CM": 72.49},
    "A → R": {"supervised only": 17.73, "Pseudo-Labeling": 19.10, "MixMatch": 21.25, "ReMixMatch": 21.48,
              "FixMatch": 22.16, "Ada-CM": 22.23},
    "A → C": {"supervised only": 47.57, "Pseudo-Labeling": 47.57, "MixMatch": 59.55, "ReMixMatch": 61.49,
              "FixMatch": 63.98, "Ada-CM": 64.08}}
REPORT_VARIANTS = {"Ada-CM": 83.47, "P_avg3 (3 weak views)": "< 83.47", "2 strong views": 82.88,
                   "Eq. 6 = 7 = 8 (margin = floor)": "82.85 / 82.82 / 83.11", "Eq. 6": 82.85, "Eq. 7": 82.82,
                   "Eq. 8": 83.11}
BASELINE_NAMES = {"pseudo_label": "Pseudo-Labeling", "mixmatch": "MixMatch", "remixmatch": "ReMixMatch"}
TABLE1_NAMES = ["supervised only", "Pseudo-Labeling", "MixMatch", "ReMixMatch", "FixMatch", "Ada-CM"]
BOUND = "every label (bound)"
READER_KW = {"ckplus": {"num_classes": 7}}       # 7 basic expressions everywhere (CK+ drops contempt)
KEY = {"rafdb": "R", "affectnet": "A", "ckplus": "C"}


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def load_data(P, dataset: str = "synthfer", data_root=None, target_dataset=None, target_root=None, seed: int = 0,
              label_counts=(4000, 1000)) -> SimpleNamespace:
    """The pool, val and test sets, the cross-domain test sets and pairs, the two label budgets (the report's
    RAF-DB counts scaled to the pool, `adacm.label_budget`) and what pseudo-labels are audited against."""
    def splits(name, root, domain="default"):
        kw = dict(READER_KW.get(name, {}), **({"domain": domain} if name == "synthfer" else {}))
        return load_splits(name, root, size=P.image_size, channels=3, seed=seed, n_train=P.n_train, n_val=P.n_val,
                           n_test=P.n_test, **kw)

    d = SimpleNamespace(dataset=dataset)
    d.pool, d.val, d.test = splits(dataset, data_root)
    d.reverse = None
    if dataset == "synthfer":
        d.source, d.target = "default", "B"
        d.reverse = splits("synthfer", None, domain="B")
        d.tests = {"default": d.test, "A": S.synthfer("test", P.n_test, size=P.image_size, seed=seed, domain="A"),
                   "B": d.reverse[2]}
        d.pairs = [("default", "B", "R → A"), ("default", "A", "R → C"), ("B", "default", "A → R"),
                   ("B", "A", "A → C")]
    else:
        d.source, d.target = dataset, target_dataset
        d.tests = {dataset: d.test}
        d.pairs = []
        if target_dataset:
            d.reverse = splits(target_dataset, target_root)
            d.tests[target_dataset] = d.reverse[2]
            pair = lambda s, t: f"{KEY[s]} → {KEY[t]}" if s in KEY and t in KEY else None
            d.pairs = [(dataset, target_dataset, pair(dataset, target_dataset)),
                       (target_dataset, dataset, pair(target_dataset, dataset))]
    d.N1, d.N2 = (A.label_budget(c, len(d.pool)) for c in label_counts)
    d.label_counts = tuple(label_counts)
    d.truth = "clean labels" if has_clean_labels(d.pool) else "agreement with annotators"
    d.column = {"synthfer": "RAF-DB", "rafdb": "RAF-DB", "affectnet": "AffectNet"}.get(dataset)
    return d


def describe_data(d) -> str:
    return (f"label budgets: {d.label_counts[0]:,} and {d.label_counts[1]:,} of RAF-DB's {A.RAFDB_TRAIN:,} -> "
            f"{d.N1} and {d.N2} of {len(d.pool)} here; the rest of the pool is unlabeled. Pseudo-labels are audited "
            f"against {d.truth}.")


# ---------------------------------------------------------------------------------------------------------------
# The pretrained backbone (the authors': a ResNet-18 trained on MS-Celeb-1M face recognition)
# ---------------------------------------------------------------------------------------------------------------
def backbone_checkpoint(checkpoint_dir, identities, *, model: str, steps: int, lr: float, batch_size: int,
                        seed: int) -> Path:
    """`checkpoint_dir/backbone-<key>.pt`, the key a hash of everything that shapes the backbone: the model, its
    steps, learning rate, batch size and seed, and the identity data's `FERDataset.fingerprint()` (a re-render or
    other settings train a new backbone instead of loading one made for other data)."""
    return paths.keyed(checkpoint_dir, "backbone", model, steps, lr, batch_size, seed, identities.fingerprint())


def pretrain_backbone(identities, P, *, device=None, checkpoint_dir=None, seed: int = 0, batch_size: int = 128,
                      lr: float = 3e-3) -> transfer.PretrainResult:
    """The stand-in for the authors' MS-Celeb-1M backbone: `P.model` trained for `P.pretrain_steps` steps to
    recognise the identities of `identities` (`transfer.pretrain_face_recognition`, shared with notebook 04);
    with `checkpoint_dir`, loaded from its `backbone_checkpoint` when that exists."""
    ckpt = None if checkpoint_dir is None else backbone_checkpoint(
        checkpoint_dir, identities, model=P.model, steps=P.pretrain_steps, lr=lr, batch_size=batch_size, seed=seed)
    return transfer.pretrain_face_recognition(identities, model_name=P.model, steps=P.pretrain_steps,
                                              batch_size=batch_size, lr=lr, device=device, seed=seed, checkpoint=ckpt)


def describe_backbone(backbone, identities, P) -> str:
    return (f"{P.pretrain_identities} identities, {len(identities)} images, {P.pretrain_steps} steps in "
            f"{backbone.seconds:.0f} s; held-out identity accuracy {backbone.identity_accuracy:.3f} "
            f"(chance {1 / P.pretrain_identities:.3f})")


# ---------------------------------------------------------------------------------------------------------------
# Warm starts: one supervised model per seed and label budget, loaded from its checkpoint when it exists
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class WarmStart:
    state: dict
    accuracy: float          # test accuracy of the warm start itself, on the source test set
    seconds: float


def _nanmean(values) -> float:
    finite = [float(v) for v in values if v is not None and v == v]
    return float(np.mean(finite)) if finite else float("nan")


def _key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def warm_starts(backbone_state: dict, pool, n_labeled: int, seeds, test, *, model: str, steps: int,
                batch_size: int, lr: float, device=None, checkpoint_dir=None, tag: str = "") -> dict:
    """{seed: WarmStart}: the face-recognition backbone fine-tuned with cross-entropy on the seed's `n_labeled`
    labeled images (`adacm.labeled_view`: the same subset every method of that seed sees) for `steps` steps.
    With `checkpoint_dir`, a finished warm start is loaded from its checkpoint instead of retrained."""
    out = {}
    fingerprint = A._fingerprint(backbone_state)
    for seed in seeds:
        labeled = A.labeled_view(pool, n_labeled, seed)
        net = A.create_model(model, pool.num_classes, pool.channels, pool.image_size, seed, backbone_state)
        ckpt = None
        if checkpoint_dir is not None:
            key = _key(model, pool.fingerprint(), n_labeled, seed, steps, batch_size, lr, fingerprint, tag)
            ckpt = Path(checkpoint_dir) / f"warm-{n_labeled}-{seed}-{key}.pt"
        history = engine.fit(net, labeled, steps=steps, batch_size=batch_size, lr=lr, augment="weak", device=device,
                             seed=seed, progress=False, checkpoint=ckpt, desc=f"warm start s{seed}")
        accuracy = engine.evaluate(net, test, device=device)["accuracy"]
        out[seed] = WarmStart({k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, accuracy,
                              float(sum(history.seconds)))
    return out


def states(warm: dict) -> dict:
    """{seed: state dict} for `adacm.run(warm_start=...)`."""
    return {seed: w.state for seed, w in warm.items()}


# ---------------------------------------------------------------------------------------------------------------
# Job lists
# ---------------------------------------------------------------------------------------------------------------
def specs(margin: dict, lambdas, temperature: float, fixmatch_tau: float, ssl_settings: str, baselines,
          margin_rule: str = "code", floor: float = 0.8) -> SimpleNamespace:
    """Every row of the notebook as an `adacm.Spec`: Table 1's methods, the control without L_c, the report's
    variants, and the control that flips the code's floor."""
    s = SimpleNamespace()
    s.adacm = A.Spec("Ada-CM", "adacm", dict(margin, lambdas=tuple(lambdas), temperature=temperature,
                                            reference_tau=fixmatch_tau, track_val=True))
    s.no_lc = A.Spec("Ada-CM without L_c", "adacm", dict(s.adacm.kwargs, contrastive=False))
    s.fixmatch = A.Spec("FixMatch", "fixmatch", dict(tau=fixmatch_tau))
    s.supervised = A.Spec("supervised only", "supervised")
    s.bound = A.Spec(BOUND, "supervised")
    all_baselines = {"pseudo_label": A.Spec("Pseudo-Labeling", "pseudo_label"),
                     "mixmatch": A.Spec("MixMatch", "mixmatch", dict(SB.MIXMATCH_SETTINGS[ssl_settings])),
                     "remixmatch": A.Spec("ReMixMatch", "remixmatch", dict(SB.REMIXMATCH_SETTINGS[ssl_settings]))}
    s.baselines = [all_baselines[b] for b in baselines]
    s.headline = [s.adacm, s.fixmatch, s.supervised, s.no_lc, *s.baselines]
    below = schedules_below_floor(floor)
    if margin_rule == "code" and below:
        s.schedules = [A.Spec("Eq. 6 = 7 = 8 (margin = floor)", "adacm", dict(s.adacm.kwargs, schedule="eq6"))]
    else:
        s.schedules = [A.Spec(f"Eq. {k[-1]}", "adacm", dict(s.adacm.kwargs, schedule=k)) for k in ("eq6", "eq7", "eq8")]
    s.floor_control = A.Spec("Eq. 2 without the code's floor" if margin_rule == "code" else "Eq. 2 with the code's floor",
                             "adacm", dict(s.adacm.kwargs, floor=None, fallback=1.0) if margin_rule == "code"
                             else dict(s.adacm.kwargs, **A.CODE_VARIANT))
    s.variants = [A.Spec("P_avg3 (3 weak views)", "adacm", dict(s.adacm.kwargs, weak_views=3)),
                  A.Spec("2 strong views", "adacm", dict(s.adacm.kwargs, strong_views=2)), *s.schedules,
                  s.floor_control]
    return s


def schedule_ceilings(B: float = 0.97, gamma: float = math.e, horizon: int = 10_000) -> dict:
    """The largest margin each report schedule (Eq. 6-8) can reach for any T_c <= 1 over t = 1 ... horizon."""
    return {name: max(A.margin_schedule(1.0, t, name, B=B, gamma=gamma) for t in range(1, horizon + 1))
            for name in ("eq6", "eq7", "eq8")}


def schedules_below_floor(floor: float = 0.8) -> bool:
    return all(v < floor for v in schedule_ceilings().values())


# ---------------------------------------------------------------------------------------------------------------
# Tables and audits
# ---------------------------------------------------------------------------------------------------------------
def as_budget(rows, n_labeled: int) -> list:
    """The every-label bound's runs filed under the label budget whose warm start they continue from, so they sit
    in that budget's table and pair with its rows by seed."""
    from dataclasses import replace

    return [replace(r, n_labeled=n_labeled) for r in rows]


def table1(results, d, n_labeled: int, names=None) -> pd.DataFrame:
    """Table 1 at one label budget: mean, std, seeds, collapsed seeds, and the report's column."""
    rows = [r for r in results if r.n_labeled == n_labeled and r.source == d.source
            and (names is None or r.name in names)]
    t = A.summary(rows, d.source)
    t[f"report ({d.column or '-'})"] = [REPORT_TABLE1.get(d.column, {}).get(n) for n in t.index]
    return t


PRECISION_RULE = ("per seed, the correct share of the pseudo-labels it accepted over epochs 2+ (accepted-weighted "
                  "within the run), then the mean over seeds")


def run_precision(history) -> tuple[float, float]:
    """(accepted, precision) of one run over the epochs after the first: the mean share of the unlabeled batch its
    rule accepted, and correct accepted / accepted, each epoch weighted by what it accepted (every epoch has the same
    unlabeled batch size, as in `adacm.audit`, whose subset-I precision is the same ratio)."""
    pairs = [(m, p) for m, p in zip(history["mask_rate"][1:], history["pseudo_acc"][1:]) if m is not None]
    if not pairs:
        return float("nan"), float("nan")
    accepted = float(np.mean([m for m, _ in pairs]))
    correct = float(np.mean([m * p if p is not None and p == p else 0.0 for m, p in pairs]))
    return accepted, correct / accepted if accepted > 0 else float("nan")


def pseudo_label_table(results, d, n_labeled: int) -> pd.DataFrame:
    """Per method: the share of unlabeled images its rule accepted for training (epochs after the first, mean over
    seeds) and the precision of those pseudo-labels against the audit labels (`PRECISION_RULE`: accepted-weighted
    within a run, then the mean over seeds — the same rule as Ada-CM's audit and the scorecard's precision claim)."""
    rows = {}
    for r in results:
        if r.n_labeled != n_labeled or r.source != d.source or r.method in ("supervised",):
            continue
        rows.setdefault(r.name, []).append(run_precision(r.history))
    out = pd.DataFrame({name: {"accepted": _nanmean([a for a, _ in v]), "precision": _nanmean([p for _, p in v]),
                               "seeds": len(v)} for name, v in rows.items()}).T
    return out


def audit_table(results, d) -> pd.DataFrame:
    """Ada-CM's audit per seed (`adacm.audit`): subset I vs a fixed 0.95 on the same predictions, and FixMatch's own
    run (accepted, and accepted and correct)."""
    rows = []
    for r in A.select(results, "Ada-CM", n_labeled=d.N1, source=d.source):
        a = A.audit(r)
        fm = A.select(results, "FixMatch", n_labeled=d.N1, source=d.source, seed=r.seed)[0].history
        rows.append({"seed": r.seed, **a, "FixMatch run: accepted": float(np.mean(fm["mask_rate"][1:])),
                     "FixMatch run: accepted and correct": float(np.mean(
                         [(m or 0) * (p or 0) for m, p in zip(fm["mask_rate"][1:], fm["pseudo_acc"][1:])]))})
    return pd.DataFrame(rows).set_index("seed")


def audit_columns(reference_tau: float = 0.95) -> dict:
    """Readable names for `audit_table`'s columns (shares of the unlabeled batch, epochs 2+)."""
    fixed = f"fixed {reference_tau:g}"
    return {"subset1_rate": "subset I: admitted", "reference_rate": f"{fixed}: admitted",
            "subset1_correct": "subset I: admitted and correct", "reference_correct": f"{fixed}: admitted and correct",
            "subset2_correct": "subset II: pseudo-label would be correct", "subset1_precision": "subset I: precision",
            "reference_precision": f"{fixed}: precision", "subset2_precision": "subset II: precision"}


def audit_display(audits: pd.DataFrame, reference_tau: float = 0.95) -> pd.io.formats.style.Styler:
    """`audit_table` for display: readable column names, every column a percentage."""
    shown = audits.rename(columns=audit_columns(reference_tau))
    return percent(shown, list(shown.columns))


def margin_state(run, floor: float | None) -> dict:
    """How Ada-CM's margins moved in one run: per-epoch margins, the share of class-epochs (after the first) above
    the floor, the classes that rose above it, the last epoch's margins and mean T_c, the range of T_c measured
    after the first epoch, and subset I's share of the unlabeled batch per epoch (`subset1`, aligned with the
    margins: entry e is epoch e + 1, trained with the margins of entry e)."""
    m = np.asarray(run.log["margins"], dtype=float)
    later = m[1:] if len(m) > 1 else m
    above = later > (floor if floor is not None else 0) + 1e-6
    T = np.asarray(run.log["T"][-1], dtype=float)
    T_all = np.asarray(run.log["T"][1:] or run.log["T"], dtype=float)
    extra = run.history.get("extra", {})
    return {"margins": m, "share_above": float(above.mean()), "classes_above": int(above.any(0).sum()),
            "last": m[-1], "T_last": float(np.nanmean(T)) if np.isfinite(T).any() else float("nan"),
            "floor": floor, "seed": run.seed,
            "T_range": (float(np.nanmin(T_all)), float(np.nanmax(T_all))) if np.isfinite(T_all).any() else None,
            "subset1": [float(v) for v in extra.get("subset1_rate", [])]}


def contrastive_state(runs, batch_size: int, uratio: int) -> dict:
    """Whether L_c had anything to learn: its first-epoch value against the InfoNCE of features that match no
    view, log(2N - 1) for a batch of N unlabeled images (each row's one positive among 2N - 1 candidates)."""
    n = batch_size * uratio
    chance = math.log(2 * n - 1)
    first = [r.history["extra"]["contrastive_loss"][0] for r in runs]
    last = [r.history["extra"]["contrastive_loss"][-1] for r in runs]
    start = float(np.mean(first))
    return {"first": start, "last": float(np.mean(last)), "chance": chance, "cut": SATURATION * chance,
            "saturated": start < SATURATION * chance}


SATURATION = 0.25     # L_c starting below this share of log(2N - 1): its views are already largely matched


def contrast_note(contrast: dict) -> str:
    """One sentence on L_c formatted from `contrastive_state`: where it starts against unmatched features, where it
    ends, and, when it starts below the saturation cut, why its claim is not measurable."""
    text = (f"L_c starts at {contrast['first']:.2f} of the {contrast['chance']:.2f} of features that match no view "
            f"(log(2N - 1)) and still falls to {contrast['last']:.2f} by the last epoch")
    if contrast["saturated"]:
        return text + (f"; starting below {SATURATION:.0%} of that ({contrast['cut']:.2f}), the two weak views are "
                       f"already largely matched from the first step, so a control without L_c cannot show what the "
                       f"term adds")
    return text + ": it starts near unmatched features, so the term has something to learn"


def cross_table(results, d, names=TABLE1_NAMES) -> tuple[pd.DataFrame, dict]:
    """Table 2: each method trained on a source domain, tested on the others (mean over its seeds), beside the
    report's numbers; and a collapse note per pair."""
    cols, flags = {}, {}
    for src, tgt, rep in d.pairs:
        rows = cross_rows(results, d, src, names)
        s = A.summary(rows, tgt)
        label = f"{src} → {tgt}" + (f" ({rep})" if rep else "")
        cols[label] = s["mean"]
        cols[f"seeds {label}"] = s["seeds"]
        cols[f"report {rep}" if rep else f"report {label}"] = pd.Series(
            {n: REPORT_TABLE2.get(rep, {}).get(n) for n in s.index})
        flags[f"{src} → {tgt}"] = A.collapse_note(s)
    table = pd.DataFrame(cols).reindex([n for n in names if any(r.name == n for r in results)])
    return table, flags


def cross_rows(results, d, src: str, names=TABLE1_NAMES):
    return [r for r in results if r.source == src and r.name in names and (r.n_labeled == d.N1 if src == d.source
                                                                            else True)]


def variants_table(results, d, s, seeds) -> pd.DataFrame:
    rows = [r for r in results if r.n_labeled == d.N1 and r.source == d.source and r.seed in seeds
            and r.name in ["Ada-CM"] + [v.name for v in s.variants]]
    t = A.summary(rows, d.source)
    t["report (RAF-DB)"] = [REPORT_VARIANTS.get(n, "-") for n in t.index]
    audits = {n: [A.audit(r) for r in rows if r.name == n] for n in t.index}
    t["subset I share"] = [np.mean([a["subset1_rate"] for a in audits[n]]) for n in t.index]
    t["subset I precision"] = [_nanmean([a["subset1_precision"] for a in audits[n]]) for n in t.index]
    return t


def _cell(value, spec: str) -> str:
    """`value` formatted with `spec` when it is a number, as text otherwise ("-" for missing)."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return spec.format(value) if isinstance(value, (int, float, np.floating, np.integer)) else str(value)


def percent(frame: pd.DataFrame, columns=()) -> pd.io.formats.style.Styler:
    """A table for display: `columns` as percentages (one decimal), accuracies and other fractions with 3 decimals,
    the report's columns (percent points) with 2, counts as integers."""
    fmt = {}
    for c in frame.columns:
        if c in columns:
            fmt[c] = lambda v: _cell(v, "{:.1%}")
        elif str(c).startswith("report"):
            fmt[c] = lambda v: _cell(v, "{:.2f}")
        elif c == "collapsed" or str(c).startswith("seeds"):
            fmt[c] = lambda v: _cell(v, "{:.0f}")
        else:
            fmt[c] = lambda v: _cell(v, "{:.3f}")
    return frame.style.format(fmt)


# ---------------------------------------------------------------------------------------------------------------
# Takeaways, formatted from the runs
# ---------------------------------------------------------------------------------------------------------------
TIE = 0.001           # Table 1 means closer than this to the best are reported as sharing it


def best_rows(table: pd.DataFrame, tie: float = TIE) -> pd.DataFrame:
    """The rows of a Table 1 (without the every-label bound) that share the highest mean: every row within `tie` of
    it, best first, among the rows with two or more seeds when there are any (a one-seed row is not ranked against
    seed means)."""
    ranked = table.drop(index=[BOUND], errors="ignore")
    multi = ranked[ranked["seeds"] >= 2]
    pool = multi if len(multi) else ranked
    best = pool["mean"].max()
    return pool[pool["mean"] >= best - tie - 1e-12].sort_values("mean", ascending=False, kind="stable")


def table1_takeaway(table: pd.DataFrame, test_size: int, source: str, num_classes: int | None = None,
                    tie: float = TIE) -> str:
    """The sentence under a Table 1: the row(s) with the highest mean (every row within `tie` of the best named, so a
    near-tie is not reported as a winner), Ada-CM vs FixMatch vs supervised only, the every-label bound and chance
    (1 / `num_classes`)."""
    top = best_rows(table, tie)
    counts = sorted({int(v) for v in top["seeds"]})
    seeds = f"rows with {counts[0]} seed{'s' if counts[0] != 1 else ''}" if len(counts) == 1 else \
        f"rows with {counts[0]} to {counts[-1]} seeds"
    if len(top) == 1:
        text = f"Highest mean here ({seeds}): **{top.index[0]}** ({top['mean'].iloc[0]:.3f})"
    else:
        named = ", ".join(f"**{n}** ({m:.3f})" for n, m in top["mean"].items())
        text = (f"Highest mean here ({seeds}): shared by {named}, within {tie:g} of each other, so this table does "
                f"not rank them")
    text += (f"; Ada-CM {table.loc['Ada-CM', 'mean']:.3f} vs FixMatch {table.loc['FixMatch', 'mean']:.3f} vs "
             f"supervised only {table.loc['supervised only', 'mean']:.3f}")
    if BOUND in table.index:
        text += f", every label {table.loc[BOUND, 'mean']:.3f}"
    if num_classes:
        text += f"; chance (1 of {num_classes} expressions) {1 / num_classes:.3f}"
    text += (f". Test accuracy of the EMA model on {test_size} {source} test images; whether a difference is more "
             f"than noise is the scorecard's job (paired over seeds).")
    if note := A.collapse_note(table):
        text += f" **Flag:** {note}."
    return text


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def subset1_trend(state: dict, tol: float = 0.005) -> str:
    """How subset I's share of the unlabeled batch moved within one run (`margin_state`): its mean over the first
    epochs — those whose margins all sat at the code's floor (epoch 1 starts there), else the first third — against
    the last epoch, and why: Eq. 2 lifts the margins towards B T_c as its factor 1 / (1 + gamma^-t) nears 1, and with
    a high T_c that is above the floor, so a stricter margin admits fewer images. "" without per-epoch shares."""
    s1 = np.asarray(state.get("subset1", []), dtype=float)
    m = np.asarray(state["margins"], dtype=float)
    n = min(len(s1), len(m))
    if n < 2:
        return ""
    m, s1 = m[:n], s1[:n]
    floor = state.get("floor")
    at_floor = np.all(np.abs(m - floor) < 1e-6, axis=1) if floor is not None else np.zeros(n, bool)
    lead = n if at_floor.all() else int(np.argmin(at_floor))
    if lead == 0 or lead == n:
        lead = max(1, n // 3)
    early, last = float(s1[:lead].mean()), float(s1[-1])
    m_early, m_last = float(m[:lead].mean()), float(m[-1].mean())
    where = (f"every margin at the floor {floor:g}" if at_floor[:lead].all() and floor is not None
             else f"mean margin {m_early:.2f}")
    verb = "shrinks" if last < early - tol else "grows" if last > early + tol else "stays about level"
    text = (f"Subset I {verb} within the run: {early:.1%} of the unlabeled batch in {_epochs(1, lead)} ({where}), "
            f"{last:.1%} in epoch {n} (mean margin {m_last:.2f})")
    T = state.get("T_range")
    if verb == "shrinks" and m_last > m_early:
        text += ": Eq. 2 lifts the margins towards B·T_c as its factor 1/(1 + γ^-t) nears 1"
        above = int((m[-1] > floor + 1e-6).sum()) if floor is not None else 0
        if above and T:
            text += (f", and T_c is high ({T[0]:.2f} to {T[1]:.2f} after the first epoch), so "
                     + ("every margin ends" if above == m.shape[1] else f"{above} of {m.shape[1]} margins end")
                     + " above the floor")
        text += "; a stricter margin admits fewer unlabeled images"
    elif verb == "grows":
        text += ": the model's confidence on the unlabeled images rose faster than its margins"
    return text + "."


def _ranges(epochs) -> str:
    """[2, 3, 4, 7] -> "2-4, 7"."""
    out, start = [], None
    for i, e in enumerate(epochs):
        if start is None:
            start = e
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            out.append(f"{start}" if start == e else f"{start}-{e}")
            start = None
    return ", ".join(out)


def floor_note(free, floored, floor: float, gamma: float = math.e, name: str = "Eq. 2 without the floor") -> str:
    """What the code's floor does, from two runs of one seed that differ only by it: where Eq. 2's margins fall
    below the floor in the run `free` of it (epochs after the first; entry e of the log is epoch e + 1, margin
    schedule at t = e) — Eq. 2's factor 1 / (1 + gamma^-t) is lowest there, whatever T_c is — and subset I's share
    of the unlabeled batch and precision in those epochs and over epochs 2+, for both runs."""
    m = np.asarray(free.log["margins"], dtype=float)[1:]
    T = np.asarray(free.log["T"], dtype=float)[1:]
    below = m < floor - 1e-6
    a_free, a_floor = A.audit(free), A.audit(floored)
    text = (f"{name}, seed {free.seed}: after the first epoch its margins range {m.min():.2f} to {m.max():.2f} "
            f"(T_c {np.nanmin(T):.2f} to {np.nanmax(T):.2f})")
    if not below.any():
        text += (f" and never fall below the code's floor {floor:g}: the floor never acted and the two runs used the "
                 f"same margins")
    else:
        idx = np.flatnonzero(below.any(1))                   # rows of m; epoch = row + 2, t = row + 1
        epochs = [int(i) + 2 for i in idx]
        factor = lambda t: 1 / (1 + gamma ** -t)
        s1 = lambda run: np.asarray(run.history["extra"]["subset1_rate"], dtype=float)[1:][idx].mean()
        text += (f"; {int(below.sum())} of {below.size} class-epochs fall below the code's floor {floor:g}, in "
                 f"{'epoch' if len(epochs) == 1 else 'epochs'} {_ranges(epochs)}, where Eq. 2's factor "
                 f"1/(1 + γ^-t) is {factor(idx[0] + 1):.2f}"
                 + (f" to {factor(idx[-1] + 1):.2f}" if len(idx) > 1 else "")
                 + (f" (and {factor(len(m)):.2f} in the last epoch)" if idx[-1] + 1 < len(m) else "")
                 + f". In those epochs subset I holds {s1(free):.1%} of the unlabeled batch without the floor "
                 f"against {s1(floored):.1%} with it")
    share = lambda a: f"{a['subset1_rate']:.1%} " + (f"(precision {a['subset1_precision']:.1%})"
                                                     if a["subset1_precision"] == a["subset1_precision"]
                                                     else "(none admitted)")
    text += f". Over epochs 2+: subset I {share(a_free)} without the floor, {share(a_floor)} with it."
    return text


def floor_control_note(results, d, s, floor: float, gamma: float = math.e, margin_rule: str = "code"):
    """(the floor control's run, `floor_note` on it and Ada-CM's run of the same seed), for §9."""
    fl = A.select(results, s.floor_control.name, n_labeled=d.N1, source=d.source)[0]
    ada = A.select(results, "Ada-CM", n_labeled=d.N1, source=d.source, seed=fl.seed)[0]
    free, floored = (fl, ada) if margin_rule == "code" else (ada, fl)
    name = s.floor_control.name if margin_rule == "code" else "Ada-CM (Eq. 2 as the paper writes it)"
    return fl, floor_note(free, floored, floor, gamma, name)


def margin_takeaway(state: dict, classes) -> str:
    """The margins of one run (`margin_state`, labelled with its seed): last epoch per class and mean T_c, the share
    of class-epochs above the code's floor, and the trend of subset I within the run (`subset1_trend`)."""
    last = ", ".join(f"{c} {v:.2f}" for c, v in zip(classes, state["last"]))
    who = f"Seed {state['seed']} (the key figure's run): m" if state.get("seed") is not None else "M"
    text = f"{who}argins in the last epoch: {last} (mean T_c {state['T_last']:.2f})."
    if state["floor"] is not None:
        text += (f" {state['share_above']:.0%} of the class-epochs after the first rose above the code's floor "
                 f"{state['floor']}, in {state['classes_above']} of {len(classes)} classes.")
    if trend := subset1_trend(state):
        text += " " + trend
    return text


def regime_takeaway(warm: dict, table: pd.DataFrame, pseudo: pd.DataFrame, contrast: dict,
                    num_classes: int | None = None) -> str:
    """The closing summary over every seed: warm starts against supervised only, the every-label bound and chance;
    pseudo-labels accepted and their precision (`PRECISION_RULE`, the numbers of the pseudo-label table); L_c
    (`contrast_note`)."""
    warm_acc = np.mean([w.accuracy for w in warm.values()])
    chance = f"; chance is {1 / num_classes:.3f} (1 of {num_classes} expressions)" if num_classes else ""
    lines = [f"- *Warm start.* The supervised warm starts score {warm_acc:.3f} on the test set (mean over "
             f"{len(warm)} seeds); from there, supervised only reaches {table.loc['supervised only', 'mean']:.3f} "
             f"and every label {table.loc[BOUND, 'mean']:.3f}{chance}."
             if BOUND in table.index else f"- *Warm start.* {warm_acc:.3f}{chance}."]
    ada, fm = pseudo.loc["Ada-CM"], pseudo.loc["FixMatch"]
    lines.append(f"- *Pseudo-labels flow* (mean over {int(ada['seeds'])} seeds, epochs 2+). Ada-CM's subset I holds "
                 f"{ada['accepted']:.1%} of the unlabeled batch at precision {ada['precision']:.1%}; FixMatch "
                 f"accepts {fm['accepted']:.1%} at precision {fm['precision']:.1%} (precision: {PRECISION_RULE}).")
    lines.append(f"- *L_c.* {contrast_note(contrast)}"
                 + (": its claim is not measurable here." if contrast["saturated"] else "."))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The scorecard, declared as data
# ---------------------------------------------------------------------------------------------------------------
def _direction(a, b, numbers):
    return "<" if a in numbers and b in numbers and numbers[a] < numbers[b] else ">"


def _report(a, b, numbers, col):
    return f"{numbers[a]:.2f} vs {numbers[b]:.2f} ({col})" if a in numbers and b in numbers else "-"


def claims(card: sc.Scorecard, results, d, s, ctx: dict) -> None:
    """Every claim of the report the notebook tests, in order (ctx: setup, margin_state, contrast, P, floor,
    margin_rule, ceilings, below_floor)."""
    P, src, N1, N2 = ctx["P"], d.source, d.N1, d.N2
    report1 = REPORT_TABLE1.get(d.column, {})
    flag1 = A.summary(A.select(results, n_labeled=N1, source=src), src)
    for other in ["FixMatch", "supervised only", *[b.name for b in s.baselines]]:
        failed = A.collapse_note(flag1.loc[["Ada-CM", other]]) if other in flag1.index else ""
        direction = _direction("Ada-CM", other, report1)
        card.claim(f"Ada-CM {direction} {other} (Table 1, {d.label_counts[0]:,}-label budget)",
                   _report("Ada-CM", other, report1, d.column),
                   A.compare(results, "Ada-CM", other, src, direction=direction, n_labeled=N1, source=src),
                   ctx["setup"] + (f"; {failed}" if failed else ""))
    for other in ["FixMatch", "supervised only"]:
        card.claim(f"Ada-CM > {other} (Table 1, {d.label_counts[1]:,}-label budget)", "-",
                   A.compare(results, "Ada-CM", other, src, n_labeled=N2, source=src), f"{N2} of {len(d.pool)} labels")
    card.claim("semi-supervised learning has room here: every label beats supervised only", "room (Table 1 setup)",
               A.compare(results, BOUND, "supervised only", src, n_labeled=N1, source=src),
               "the same warm start and steps; the bound reads every pool label")
    ms, audits = ctx["margin_state"], ctx["audits"]
    seeds = list(audits.index)
    margin_idle = ms["floor"] is not None and ms["share_above"] == 0
    if margin_idle:
        why = f"every margin stayed at the code's floor {ms['floor']}: the adaptive margin acted as a fixed threshold"
        card.claim("the adaptive margin admits more correct pseudo-labels than a fixed 0.95 threshold (same "
                   "predictions)", "more", sc.not_measurable("margins at the floor", why))
    else:
        card.claim("the adaptive margin admits more correct pseudo-labels than a fixed 0.95 threshold (same "
                   "predictions)", "more (Sec. 2: fixed thresholds drop hard classes)",
                   sc.paired(audits["subset1_correct"], audits["reference_correct"], seeds,
                             names=("margin: admitted and correct", "0.95: admitted and correct")),
                   f"shares of the unlabeled batch, epochs 2+, audited against {d.truth}; margins above the floor in "
                   f"{ms['share_above']:.0%} of class-epochs")
        card.claim("... at equal or better precision", "equal or better",
                   sc.paired(audits["subset1_precision"], audits["reference_precision"], seeds, direction=">",
                             names=("margin: precision", "0.95: precision")),
                   "an interval containing 0 is what 'equal' looks like under this rule")
    card.claim("Ada-CM's subset I holds more correct pseudo-labels than FixMatch accepts in its own run", "more",
               sc.paired(audits["subset1_correct"], audits["FixMatch run: accepted and correct"], seeds,
                         names=("Ada-CM subset I", "FixMatch")), "separate runs: each model's own predictions")
    contrast = ctx["contrast"]
    lc = A.compare(results, "Ada-CM", "Ada-CM without L_c", src, n_labeled=N1, source=src)
    if contrast["saturated"]:
        lc = sc.not_measurable(lc.measured, contrast_note(contrast))
    card.claim("subset II's contrastive term helps (control: Ada-CM without L_c)", "L_c is part of the gain (Sec. 3.3)",
               lc)
    _, flags = cross_table(results, d)
    for src_, tgt, rep in d.pairs:
        numbers = REPORT_TABLE2.get(rep, {})
        best_rep = max(numbers, key=numbers.get) if numbers else None
        names = [n for n in TABLE1_NAMES if A.select(cross_rows(results, d, src_), n)]
        card.claim(f"cross-domain {src_} → {tgt}: Ada-CM among the best methods (Table 2 {rep or ''})",
                   f"Ada-CM {numbers['Ada-CM']:.2f}, best {best_rep} {numbers[best_rep]:.2f}" if numbers else "-",
                   A.ranking(cross_rows(results, d, src_), names, tgt),
                   "rows compared: the methods run with every seed Ada-CM has"
                   + (f"; {flags[f'{src_} → {tgt}']}" if flags[f"{src_} → {tgt}"] else ""))
    for name in [v.name for v in s.variants[:-1]]:
        card.claim(f"variant '{name}' does not beat Ada-CM's P_avg2 (Sec. 4.2-4.4)",
                   f"{REPORT_VARIANTS.get(name, '-')} vs 83.47",
                   A.compare(results, name, "Ada-CM", src, direction="<", n_labeled=N1, source=src),
                   "the one run stands for Eq. 6, 7 and 8 (identical margins)" if "=" in name else "")
    sched = [r for r in results if r.name == s.schedules[0].name]
    if ctx["margin_rule"] == "code" and ctx["below_floor"]:
        logged = np.asarray([m for r in sched for m in r.log["margins"]])
        floor = ctx["floor"]
        card.claim("under the code's floor, Eq. 6-8 margins are the constant 0.8 (so Eq. 6, 7, 8 are one run)", "-",
                   sc.exact(bool(np.allclose(logged, floor)),
                            f"schedule ceilings {', '.join(f'{k} {v:.3f}' for k, v in ctx['ceilings'].items())}; "
                            f"logged margins {logged.min():.3f} to {logged.max():.3f}",
                            f"max over t of Eq. 6-8 with T_c = 1 < {floor} and every margin the run used equals "
                            "the floor"))
    card.claim(f"{s.floor_control.name} (control, not in the report)", "-",
               A.compare(results, s.floor_control.name, "Ada-CM", src,
                         direction="<" if ctx["margin_rule"] == "code" else ">", n_labeled=N1, source=src),
               "the floor is a rule of the authors' code the paper does not state")
    acc = lambda name, n=N1: float(np.mean([r.tests[src]["accuracy"] for r in
                                            A.select(results, name, n_labeled=n, source=src)]))
    card.metric("adacm_accuracy", acc("Ada-CM"))
    card.metric("fixmatch_accuracy", acc("FixMatch"))
    card.metric("supervised_accuracy", acc("supervised only"))
    card.metric("adacm_accuracy_budget2", acc("Ada-CM", N2))
    card.metric("adacm_subset1_rate", float(audits["subset1_rate"].mean()))


def schedule_note(floor: float, B: float = 0.97, gamma: float = math.e) -> str:
    """Markdown: the largest margin each report schedule can reach, and what the code's floor makes of them."""
    ceilings = schedule_ceilings(B, gamma)
    text = ("Largest margin each report schedule can reach for any $T_c \\le 1$ (t = 1 ... 10,000): "
            + ", ".join(f"{k}: {v:.3f}" for k, v in ceilings.items()))
    if all(v < floor for v in ceilings.values()):
        text += (f". **All stay below the code's floor {floor}**: on the authors' code, Eq. 6, 7 and 8 are the same "
                 f"constant margin {floor} for every class at every epoch")
    return text + "."


def measured_T(warm: WarmStart, pool, n_labeled: int, seed: int, model: str, device=None) -> np.ndarray:
    """T_c (Eq. 1) of a warm start on its own labeled images, viewed as Ada-CM measures them (one weak view): the
    value the first margin update starts from."""
    labeled = A.labeled_view(pool, n_labeled, seed)
    labeled = labeled.subset(labeled.labels >= 0)
    net = A.create_model(model, pool.num_classes, pool.channels, pool.image_size, seed, warm_start=warm.state)
    pred = engine.predict(net, labeled, device=device, augment="weak")
    T, _ = A.class_thresholds(pred.probs, labeled.labels.cpu(), pool.num_classes)
    return T.numpy()


def cost_table(results) -> pd.Series:
    """Mean training seconds per run, per row (validation included; a reloaded run reports its training time)."""
    frame = pd.DataFrame([{"row": r.name, "seconds": r.seconds} for r in results])
    return frame.groupby("row")["seconds"].mean().round(1)
