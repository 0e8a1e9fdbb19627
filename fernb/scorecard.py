"""The scorecard every notebook ends with: the paper's claims, what was measured here, and a verdict made by code.

The evidence standard (README, "How to read a scorecard"):

* A claim compares A with B (or A with a reference value) on paired runs: the same seeds, the same data, and each
  seed varies every random part of the pipeline (data subset, initialization, augmentation).
* The number that decides is the mean paired difference d = A - B with its 95 % interval:
  - several seeds: Student's t over the per-seed differences, mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n);
  - one run only, but per-item outcomes (e.g. per-test-image correctness): a bootstrap over the items
    (resampled with a fixed generator, percentile interval), which measures test-set noise and nothing else.
* The verdict follows from the interval alone: "holds" when it excludes 0 in the paper's direction, "does not hold"
  when it excludes 0 in the other direction, "inconclusive" when it contains 0.
* An optimum ("delta1 = 0.15 is best") is the set of settings whose paired interval against the best one contains
  0; the claim holds when the paper's value is in that set and the set is not every setting tried.
* A deterministic fact (bit-identical output, a parameter count) is an `exact` check: no noise, no interval.

Every claim row stores its seeds, n_test, interval and rule next to the verdict, and `Scorecard.claim` takes the
verdict only from an `Evidence` object: a notebook cannot write a verdict without its numbers. Notes may add
context but not verdict words.

Written to figures/<notebook>/scorecard.json; `metrics` holds the numbers the runner's `--check` compares with the
stored regression floors (tests/floors.json).

scipy's t distribution is used for the critical values; everything else is a few lines of numpy (no maintained
library offers "paired interval -> three-way verdict" as one call).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from .paths import figure_dir

VERDICTS = ("holds", "does not hold", "inconclusive")
DIRECTIONS = (">", "<")
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000
_VERDICT_WORDS = re.compile(r"\b(holds?|does not hold|inconclusive)\b", re.IGNORECASE)


def _clean(x):
    if isinstance(x, float):
        if math.isnan(x):
            return None
        # 4 decimals, but a small nonzero number keeps 4 significant digits (a beta of 1e-5 is not 0)
        return round(x, 4) if x == 0 or abs(x) >= 1e-3 or math.isinf(x) else float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        return _clean(x.item())
    if hasattr(x, "tolist"):
        return _clean(x.tolist())
    return x


def _values(x, what: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: no values")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: values must be finite, got {arr.tolist()}")
    return arr


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be '>' (the paper says A > B) or '<' (A < B), got {direction!r}")
    return direction


def verdict_from_interval(low: float, high: float, direction: str = ">") -> str:
    """The rule: holds if [low, high] excludes 0 on the paper's side, does not hold if it excludes 0 on the other
    side, inconclusive if it contains 0. `direction` '>' means the paper claims A - B > 0."""
    _direction(direction)
    if any(math.isnan(v) for v in (low, high)):
        return "inconclusive"
    if low > 0:
        return "holds" if direction == ">" else "does not hold"
    if high < 0:
        return "holds" if direction == "<" else "does not hold"
    return "inconclusive"


def t_interval(differences, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of the Student-t interval of the mean of `differences` (n >= 2; NaN bounds for n = 1).

    An exactly constant sample (sd = 0) gives the zero-width interval [mean, mean]."""
    from scipy import stats

    d = _values(differences, "t_interval")
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return mean, mean - half, mean + half


def bootstrap_interval(statistic, *samples, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
                       paired: bool = True, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap of `statistic(*samples)`.

    paired=True resamples the same item indices for every sample (they must have equal length: A's and B's outcome
    on the same test image); paired=False resamples each sample on its own (two groups of different items).
    `statistic` receives arrays of shape (resamples, n) and returns (resamples,); it is vectorized, so 4,000
    resamples of 5,000 test images take milliseconds.
    """
    arrays = [_values(s, "bootstrap sample") for s in samples]
    if paired and len({a.size for a in arrays}) != 1:
        raise ValueError(f"paired bootstrap needs samples of equal length, got {[a.size for a in arrays]}")
    rng = np.random.default_rng(seed)
    estimate = float(statistic(*[a[None, :] for a in arrays])[0])
    if paired:
        idx = rng.integers(0, arrays[0].size, size=(resamples, arrays[0].size))
        boot = statistic(*[a[idx] for a in arrays])
    else:
        boot = statistic(*[a[rng.integers(0, a.size, size=(resamples, a.size))] for a in arrays])
    low, high = np.quantile(boot, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return estimate, float(low), float(high)


# ---------------------------------------------------------------------------------------------------------------
# Evidence: what a claim's verdict is made from
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Evidence:
    """The numbers behind one verdict. Build it with `paired`, `against`, `bootstrap_paired`, `bootstrap_groups`,
    `bootstrap_against`, `bootstrap`, `optimum`, `exact` or `not_measurable`; `verdict` is computed, never passed in."""
    kind: str
    measured: str                      # human-readable summary, formatted from the numbers
    direction: str = ">"
    estimate: float = math.nan         # mean difference A - B (or A - reference)
    low: float = math.nan
    high: float = math.nan
    seeds: list = field(default_factory=list)
    n_test: int | None = None
    rule: str = ""
    a: list = field(default_factory=list)
    b: list = field(default_factory=list)
    best_set: list | None = None
    verdict: str = "inconclusive"

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}")

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high

    def row(self) -> dict:
        out = asdict(self)
        out["interval"] = [self.low, self.high]
        return out


def _fmt(values: np.ndarray, digits: int) -> str:
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _interval_text(estimate, low, high, digits):
    if math.isnan(low):
        return f"{estimate:+.{digits}f} [no interval]"
    return f"{estimate:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def paired(a, b, seeds: Sequence[int], *, direction: str = ">", n_test: int | None = None,
           names: tuple[str, str] = ("A", "B"), digits: int = 3, unit: str = "seeds") -> Evidence:
    """A vs B over paired seeds: a[i] and b[i] come from the same seed (same data subset, same initialization
    stream). Interval: Student t over the differences a - b. One seed gives no interval (inconclusive): use
    `bootstrap_paired` on per-item outcomes when a single run is all there is."""
    a, b = _values(a, "paired a"), _values(b, "paired b")
    seeds = [int(s) for s in seeds]
    if not (a.size == b.size == len(seeds)):
        raise ValueError(f"paired: {a.size} values of A, {b.size} of B and {len(seeds)} seeds must match")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"paired: seeds must be distinct, got {seeds}")
    direction = _direction(direction)
    est, low, high = t_interval(a - b)
    rule = (f"paired t over {len(seeds)} {unit}, 95 % interval of mean({names[0]} - {names[1]}); "
            f"holds if it excludes 0 on the '{direction}' side" if len(seeds) > 1 else
            f"one of {unit}: no interval, so no verdict")
    measured = (f"{names[0]} {_fmt(a, digits)} vs {names[1]} {_fmt(b, digits)}; "
                f"diff {_interval_text(est, low, high, digits)}")
    return Evidence("paired seeds", measured, direction, est, low, high, seeds, n_test, rule, a.tolist(),
                    b.tolist(), verdict=verdict_from_interval(low, high, direction))


def against(a, reference: float, seeds: Sequence[int], *, direction: str = ">", n_test: int | None = None,
            name: str = "A", reference_name: str | None = None, digits: int = 3, unit: str = "seeds") -> Evidence:
    """A over seeds against a fixed reference value (chance, 0.5, a paper's threshold): t over a - reference."""
    a = _values(a, "against a")
    seeds = [int(s) for s in seeds]
    if a.size != len(seeds):
        raise ValueError(f"against: {a.size} values and {len(seeds)} seeds must match")
    direction = _direction(direction)
    ref = reference_name or f"{reference:g}"
    est, low, high = t_interval(a - float(reference))
    rule = (f"t over {len(seeds)} {unit}, 95 % interval of mean({name}) - {ref}; holds if it excludes 0 on the "
            f"'{direction}' side" if len(seeds) > 1 else f"one of {unit}: no interval, so no verdict")
    measured = f"{name} {_fmt(a, digits)} vs {ref}; diff {_interval_text(est, low, high, digits)}"
    return Evidence("seeds vs reference", measured, direction, est, low, high, seeds, n_test, rule, a.tolist(),
                    [float(reference)], verdict=verdict_from_interval(low, high, direction))


def _mean_diff(x, y):
    return x.mean(axis=-1) - y.mean(axis=-1)


def bootstrap_paired(outcome_a, outcome_b, *, direction: str = ">", seed: int = 0, names=("A", "B"),
                     run_seed: int | None = None, digits: int = 3) -> Evidence:
    """One run of A and one of B scored on the same items (e.g. 0/1 correctness per test image): the paired
    bootstrap interval of mean(A) - mean(B) over the items. It captures test-set noise only, not training noise:
    prefer `paired` over seeds whenever several runs exist."""
    a, b = _values(outcome_a, "bootstrap a"), _values(outcome_b, "bootstrap b")
    direction = _direction(direction)
    est, low, high = bootstrap_interval(_mean_diff, a, b, paired=True, seed=seed)
    rule = (f"one run, paired bootstrap over {a.size} items ({BOOTSTRAP_RESAMPLES} resamples), 95 % interval of "
            f"mean({names[0]}) - mean({names[1]}); holds if it excludes 0 on the '{direction}' side")
    measured = (f"{names[0]} {a.mean():.{digits}f} vs {names[1]} {b.mean():.{digits}f}; "
                f"diff {_interval_text(est, low, high, digits)}")
    seeds = [] if run_seed is None else [int(run_seed)]
    return Evidence("bootstrap paired", measured, direction, est, low, high, seeds, int(a.size), rule,
                    [float(a.mean())], [float(b.mean())], verdict=verdict_from_interval(low, high, direction))


def bootstrap_groups(group_a, group_b, *, direction: str = ">", seed: int = 0, names=("A", "B"),
                     run_seed: int | None = None, digits: int = 3) -> Evidence:
    """Two groups of different items from one run (accuracy on low- vs high-intensity faces): the unpaired
    bootstrap interval of mean(A) - mean(B), each group resampled on its own."""
    a, b = _values(group_a, "bootstrap group a"), _values(group_b, "bootstrap group b")
    direction = _direction(direction)
    est, low, high = bootstrap_interval(_mean_diff, a, b, paired=False, seed=seed)
    rule = (f"one run, unpaired bootstrap over {a.size} + {b.size} items, 95 % interval of "
            f"mean({names[0]}) - mean({names[1]}); holds if it excludes 0 on the '{direction}' side")
    measured = (f"{names[0]} {a.mean():.{digits}f} (n={a.size}) vs {names[1]} {b.mean():.{digits}f} "
                f"(n={b.size}); diff {_interval_text(est, low, high, digits)}")
    seeds = [] if run_seed is None else [int(run_seed)]
    return Evidence("bootstrap groups", measured, direction, est, low, high, seeds, int(a.size + b.size), rule,
                    [float(a.mean())], [float(b.mean())], verdict=verdict_from_interval(low, high, direction))


def bootstrap_against(outcome, reference: float, *, direction: str = ">", seed: int = 0, name: str = "A",
                      reference_name: str | None = None, run_seed: int | None = None, digits: int = 3) -> Evidence:
    """One run's per-item outcomes against a fixed reference (accuracy vs chance): bootstrap of mean - reference."""
    a = _values(outcome, "bootstrap outcome")
    direction = _direction(direction)
    ref = reference_name or f"{reference:g}"
    est, low, high = bootstrap_interval(lambda x: x.mean(axis=-1) - float(reference), a, seed=seed)
    rule = (f"one run, bootstrap over {a.size} items, 95 % interval of mean({name}) - {ref}; holds if it "
            f"excludes 0 on the '{direction}' side")
    measured = f"{name} {a.mean():.{digits}f} vs {ref}; diff {_interval_text(est, low, high, digits)}"
    seeds = [] if run_seed is None else [int(run_seed)]
    return Evidence("bootstrap vs reference", measured, direction, est, low, high, seeds, int(a.size), rule,
                    [float(a.mean())], [float(reference)], verdict=verdict_from_interval(low, high, direction))


def bootstrap(statistic, *samples, measured: str, direction: str = ">", paired: bool = True, seed: int = 0,
              what: str = "the statistic", run_seed: int | None = None, digits: int = 3) -> Evidence:
    """One run, any statistic of per-item arrays that is a difference (0 = no effect): its bootstrap interval.
    `statistic(*arrays)` takes arrays of shape (resamples, n) and returns (resamples,), as `bootstrap_interval`.
    Used where the claim is not a plain mean (e.g. confusion rates of chosen class pairs vs the rest)."""
    direction = _direction(direction)
    est, low, high = bootstrap_interval(statistic, *samples, paired=paired, seed=seed)
    n = len(samples[0])
    rule = (f"one run, {'paired' if paired else 'unpaired'} bootstrap over {n} items ({BOOTSTRAP_RESAMPLES} "
            f"resamples), 95 % interval of {what}; holds if it excludes 0 on the '{direction}' side")
    seeds = [] if run_seed is None else [int(run_seed)]
    return Evidence("bootstrap", f"{measured}; diff {_interval_text(est, low, high, digits)}", direction, est, low,
                    high, seeds, int(n), rule, verdict=verdict_from_interval(low, high, direction))


def best_set(results: Mapping, seeds: Sequence[int], *, higher_is_better: bool = True) -> tuple[list, object]:
    """(the settings whose paired 95 % interval against the best one contains 0, the best setting).

    `results` maps each setting to its per-seed values (the same seeds, in the same order, for every setting).
    The best is the setting with the highest mean (lowest if not `higher_is_better`). With one seed there is no
    interval, so every setting tied with nothing is kept: the set is all settings."""
    keys = list(results)
    if not keys:
        raise ValueError("best_set: no settings")
    arrays = {k: _values(results[k], f"best_set[{k!r}]") for k in keys}
    n = len(seeds)
    if any(v.size != n for v in arrays.values()):
        raise ValueError(f"best_set: every setting needs one value per seed ({n})")
    sign = 1.0 if higher_is_better else -1.0
    best = max(keys, key=lambda k: sign * arrays[k].mean())
    if n < 2:
        return keys, best
    keep = []
    for k in keys:
        _, low, high = t_interval(sign * (arrays[best] - arrays[k]))
        if k == best or low <= 0:
            keep.append(k)
    return keep, best


def optimum(results: Mapping, seeds: Sequence[int], paper_value, *, higher_is_better: bool = True,
            n_test: int | None = None, name: str = "setting", digits: int = 3) -> Evidence:
    """Is the paper's `paper_value` among the best settings? The best set is `best_set(results, seeds)`.
    holds: paper_value is in it and it is not every setting; does not hold: paper_value is outside it;
    inconclusive: the sweep cannot separate the settings (the set is all of them), or paper_value was not tried."""
    seeds = [int(s) for s in seeds]
    keep, best = best_set(results, seeds, higher_is_better=higher_is_better)
    keys = list(results)
    means = {k: float(_values(results[k], "optimum").mean()) for k in keys}
    if paper_value not in results:
        verdict, why = "inconclusive", f"the paper's {name} {paper_value} was not tried"
    elif len(keep) == len(keys):
        verdict, why = "inconclusive", "every setting is within the interval of the best"
    else:
        verdict = "holds" if paper_value in keep else "does not hold"
        why = ""
    rule = (f"best set = {name}s whose paired t interval ({len(seeds)} seeds) against the best contains 0; holds "
            f"if the paper's value is in it and it is not every {name} tried")
    if why:
        rule += f" ({why})"
    measured = (f"best {name} {best} ({means[best]:.{digits}f}); within its interval: {keep}; "
                + ", ".join(f"{k}: {means[k]:.{digits}f}" for k in keys))
    a = [float(np.mean(results[k])) for k in keys]
    return Evidence("optimum", measured, ">" if higher_is_better else "<", seeds=seeds, n_test=n_test, rule=rule,
                    a=a, b=[], best_set=list(keep), verdict=verdict)


def exact(condition: bool, measured: str, rule: str) -> Evidence:
    """A deterministic fact with no sampling noise (bit-identical tensors, a parameter count, an exact rate):
    holds / does not hold by `condition`. `rule` says what was checked."""
    return Evidence("exact", measured, rule=f"deterministic check: {rule}",
                    verdict="holds" if bool(condition) else "does not hold")


def invalid_run(evidence: Evidence, why: str) -> Evidence:
    """The same numbers with the verdict withheld: one of the runs compared failed (it collapsed onto one class,
    diverged), so the interval measures that failure, not the method the claim is about. Inconclusive, with the
    rule that would have decided it and `why` it did not."""
    return replace(evidence, rule=f"{evidence.rule}; verdict withheld, a compared run is not a valid measurement: "
                                  f"{why}", verdict="inconclusive")


def not_measurable(measured: str, why: str) -> Evidence:
    """A claim this profile or dataset cannot test (a sweep skipped in smoke, no clean labels on real data)."""
    return Evidence("not measured", measured, rule=f"not measurable here: {why}", verdict="inconclusive")


# ---------------------------------------------------------------------------------------------------------------
# The card
# ---------------------------------------------------------------------------------------------------------------
COLUMNS = ["claim", "paper", "measured", "difference [95 % CI]", "seeds", "n_test", "verdict", "rule", "note"]


@dataclass
class Scorecard:
    notebook: str
    profile: str
    dataset: str
    claims: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    context: dict = field(default_factory=dict)

    def claim(self, claim: str, paper, evidence: Evidence, note: str = "") -> Evidence:
        """One row: the paper's claim and number, and the Evidence whose rule made the verdict.

        `note` adds context (setup, regime, which labels a method read); it may not contain a verdict word, so it
        can never contradict the verdict next to it."""
        if not isinstance(evidence, Evidence):
            raise TypeError("Scorecard.claim needs an Evidence (scorecard.paired, against, bootstrap_paired, "
                            f"bootstrap_groups, bootstrap_against, bootstrap, optimum, exact, not_measurable), got "
                            f"{type(evidence).__name__}: a verdict cannot be recorded without its numbers")
        if _VERDICT_WORDS.search(note or ""):
            raise ValueError(f"a note may not carry a verdict word (the verdict comes from the evidence): {note!r}")
        row = {"claim": claim, "paper": _clean(paper), "note": note}
        row.update(_clean(evidence.row()))
        self.claims.append(row)
        return evidence

    def metric(self, name: str, value: float) -> float:
        """A number the regression check watches (higher is better)."""
        self.metrics[name] = _clean(float(value))
        return value

    def frame(self):
        import pandas as pd

        rows = []
        for c in self.claims:
            low, high = c["interval"]
            ci = "" if low is None or c.get("estimate") is None else \
                f"{c['estimate']:+.3f} [{low:+.3f}, {high:+.3f}]"
            rows.append({"claim": c["claim"], "paper": c["paper"], "measured": c["measured"],
                         "difference [95 % CI]": ci, "seeds": len(c["seeds"]) or "",
                         "n_test": c["n_test"] if c["n_test"] is not None else "", "verdict": c["verdict"],
                         "rule": c["rule"], "note": c["note"]})
        return pd.DataFrame(rows, columns=COLUMNS)

    def counts(self) -> dict:
        return {v: sum(c["verdict"] == v for c in self.claims) for v in VERDICTS}

    def save(self):
        path = figure_dir(self.notebook) / "scorecard.json"
        path.write_text(json.dumps({"notebook": self.notebook, "profile": self.profile, "dataset": self.dataset,
                                    "context": _clean(self.context), "counts": self.counts(),
                                    "claims": self.claims, "metrics": self.metrics}, indent=2))
        return path

    def show(self):
        """Save, then return a styled table for display in the notebook."""
        self.save()
        colors = {"holds": "#d4edda", "does not hold": "#f8d7da", "inconclusive": "#fff3cd"}
        return (self.frame().style
                .apply(lambda col: [f"background-color: {colors.get(v, '')}" for v in col], subset=["verdict"])
                .set_properties(subset=["rule", "note"], **{"font-size": "85%"})
                .hide(axis="index"))


def pair_confusion_gap(predictions, targets, pairs: Sequence[tuple[int, int]], num_classes: int, *,
                       direction: str = ">", names=("named pairs", "other pairs"), seed: int = 0) -> Evidence:
    """Are the class pairs in `pairs` confused more than the others? One run's predictions, bootstrap over items.

    The statistic is mean over the named unordered pairs {i, j} of the two-way confusion rate
    C[i, j] + C[j, i] (C row-normalized: the share of class i predicted as j) minus the same mean over every other
    unordered pair of distinct classes."""
    y = np.asarray(targets, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    K = int(num_classes)
    named = np.zeros((K, K), dtype=bool)
    for i, j in pairs:
        named[i, j] = named[j, i] = True
    upper = np.triu(np.ones((K, K), dtype=bool), 1)
    present = np.bincount(y, minlength=K) > 0
    valid = upper & present[:, None] & present[None, :]
    if not (named & valid).any() or not (~named & valid).any():
        raise ValueError("pair_confusion_gap needs named and other pairs among the classes present")

    def gap(codes):
        R = codes.shape[0]
        flat = (codes + (np.arange(R)[:, None] * K * K)).reshape(-1)
        cm = np.bincount(flat, minlength=R * K * K).reshape(R, K, K).astype(float)
        cm /= np.maximum(cm.sum(2, keepdims=True), 1)
        two_way = cm + cm.transpose(0, 2, 1)
        return two_way[:, named & valid].mean(1) - two_way[:, ~named & valid].mean(1)

    codes = y * K + p
    est = float(gap(codes[None, :])[0])
    return bootstrap(lambda c: gap(c.astype(np.int64)), codes,
                     measured=f"mean two-way confusion of {names[0]} minus {names[1]}: {est:+.3f}",
                     direction=direction, seed=seed, what=f"mean two-way confusion, {names[0]} - {names[1]}")
