"""The scorecard every notebook ends with: the paper's claims, what was measured here, and a verdict.

Written to figures/<notebook>/scorecard.json; `metrics` holds the numbers the runner's `--check` compares with the
stored regression floors (tests/floors.json).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .paths import figure_dir

VERDICTS = ("holds", "does not hold", "inconclusive")


def _clean(x):
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, 4)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):
        return _clean(x.item())
    return x


@dataclass
class Scorecard:
    notebook: str
    profile: str
    dataset: str
    claims: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)

    def claim(self, claim: str, paper, measured, verdict: str, note: str = "") -> None:
        """One row: the paper's claim and number, the number measured here, and holds / does not hold / inconclusive."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self.claims.append({"claim": claim, "paper": _clean(paper), "measured": _clean(measured),
                            "verdict": verdict, "note": note})

    def metric(self, name: str, value: float) -> float:
        """A number the regression check watches (higher is better)."""
        self.metrics[name] = _clean(float(value))
        return value

    def frame(self):
        import pandas as pd
        return pd.DataFrame(self.claims, columns=["claim", "paper", "measured", "verdict", "note"])

    def save(self):
        path = figure_dir(self.notebook) / "scorecard.json"
        path.write_text(json.dumps({"notebook": self.notebook, "profile": self.profile, "dataset": self.dataset,
                                    "claims": self.claims, "metrics": self.metrics}, indent=2))
        return path

    def show(self):
        """Save, then return a styled table for display in the notebook."""
        self.save()
        colors = {"holds": "#d4edda", "does not hold": "#f8d7da", "inconclusive": "#fff3cd"}
        return self.frame().style.apply(
            lambda col: [f"background-color: {colors.get(v, '')}" for v in col], subset=["verdict"]).hide(axis="index")


def verdict(condition: bool | None) -> str:
    """holds / does not hold; None (not measurable here) -> inconclusive."""
    if condition is None:
        return "inconclusive"
    return "holds" if condition else "does not hold"
