"""fernb.methods.ssfer_experiments: notebook 02's rows, tables, audits and claim rules on crafted inputs."""
import numpy as np
import pandas as pd
import pytest
import torch

from fernb import scorecard as sc
from fernb.methods import ssfer_experiments as X
from fernb.methods.ssfer import Setting


def test_component_rows_differ_from_ssfer_in_one_component_each():
    base = Setting(init="mae", mix="facemix", semi="ema", labels=0.25)
    rows = X.component_rows(base)
    assert rows[X.SSFER] == base
    assert rows[X.BASELINE].mix == "none" and rows[X.BASELINE].semi is None
    assert rows[X.FACEMIX].semi is None and rows[X.FACEMIX].mix == "facemix"
    assert rows[X.EMA].mix == "none" and rows[X.EMA].semi == "ema"
    # the control continues the same FaceMix stage as SSFER, on labels only
    assert rows[X.CONTROL].supervised == rows[X.SSFER].supervised and rows[X.CONTROL].semi == "supervised"
    assert rows[X.FIXMATCH].semi == "fixmatch" and rows[X.FIXMATCH].supervised == base.supervised
    assert {rows[X.MIXUP].mix, rows[X.CUTMIX].mix} == {"mixup", "cutmix"}
    assert all(r.init == "mae" and r.labels == 0.25 for r in rows.values())
    assert X.CUTMIX not in X.component_rows(base, mix_rows=("mixup",)) and len(X.component_rows(base, ())) == 6
    with pytest.raises(ValueError, match="mix_rows"):
        X.component_rows(base, mix_rows=("manifold",))


def test_seed_frame_gives_mean_sd_and_the_seeds():
    t = X.seed_frame({"a": {0: 0.5, 2: 0.7}, "b": {5: 0.4}}, ["a", "b"])
    assert t.loc["a", "mean"] == pytest.approx(0.6) and t.loc["a", "sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert t.loc["a", "seed 2"] == 0.7 and np.isnan(t.loc["b", "sd"]) and t.loc["b", "seed 5"] == 0.4


class _Run:
    def __init__(self, mask, prec):
        self.audit = {"mask_rate": mask, "pseudo_acc": prec}


class _Exp:
    def __init__(self, audits):
        self.audits = audits

    def run(self, setting, seed):
        return self.audits[(setting, seed)]


def test_pseudo_label_audit_weights_precision_by_the_accepted_share():
    rows = {"r": "setting"}
    exp = _Exp({("setting", 0): _Run([0.1, 0.3], [0.5, 0.9]), ("setting", 1): _Run([0.2, 0.5], [None, 0.7])})
    a = X.pseudo_label_audit(exp, rows, ["r"], [0, 1])
    assert a.loc["r", "accepted, first epoch"] == pytest.approx(0.15)
    assert a.loc["r", "accepted, last epoch"] == pytest.approx(0.4)
    assert a.loc["r", "precision, last epoch"] == pytest.approx(0.8)
    # epochs with a precision, weighted by how much they accepted: (0.1 * 0.5 + 0.3 * 0.9 + 0.5 * 0.7) / 0.9
    assert a.loc["r", "precision, whole run"] == pytest.approx((0.05 + 0.27 + 0.35) / 0.9)


def test_noise_declines_pair_each_seed_with_itself():
    rows = [{"noise": nz, "row": r, "seed": s, "accuracy": acc} for r, vals in
            (("FaceMix", {0.0: [0.6, 0.5], 0.3: [0.5, 0.45]}), ("CE", {0.0: [0.55, 0.6], 0.3: [0.35, 0.5]}))
            for nz, accs in vals.items() for s, acc in zip((3, 7), accs)]
    d = X.noise_declines(pd.DataFrame(rows))
    assert d["FaceMix"] == pytest.approx([0.1, 0.05]) and d["CE"] == pytest.approx([0.2, 0.1])


def test_kappa_summary_on_a_known_sample():
    k = X.kappa_summary(torch.linspace(0, 1, 101))
    assert k["mean"] == pytest.approx(0.5) and k["median"] == pytest.approx(0.5)
    assert k["p5"] == pytest.approx(0.05) and k["p95"] == pytest.approx(0.95)
    assert k["above_half"] == pytest.approx(50 / 101)


def _audit(last):
    return pd.DataFrame({"accepted, first epoch": [0.1] * 3, "accepted, last epoch": last,
                         "precision, last epoch": [0.9] * 3, "precision, whole run": [0.9] * 3},
                        index=list(X.SEMI_ROWS))


def _acc():
    seeds = (0, 1, 2)
    gain = {X.BASELINE: 0.0, X.FACEMIX: 0.02, X.EMA: 0.03, X.SSFER: 0.06, X.CONTROL: 0.025, X.FIXMATCH: 0.04,
            X.MIXUP: 0.0, X.CUTMIX: -0.01}
    return {n: {s: 0.5 + g + 0.01 * s for s in seeds} for n, g in gain.items()}


def test_component_claims_pair_over_seeds_and_mark_idle_pseudo_labels_not_measurable():
    card = sc.Scorecard("02_test", "smoke", "synthfer")
    X.component_claims(card, _acc(), [0, 1, 2], [0, 1], _audit([0.02, 0.4, 0.5]), 1000, "note", lambda k: "-")
    by = {c["claim"]: c for c in card.claims}
    assert len(card.claims) == 8
    ema_claim = by["Table 10: the EMA teacher beats the baseline"]     # EMA accepted 2 % in its last epoch
    assert ema_claim["rule"].startswith("not measurable") and "+ EMA teacher accepted 2.0%" in ema_claim["rule"]
    assert by["Table 10: SSFER beats the baseline"]["verdict"] == "holds"          # +0.06 on every seed
    assert by["Table 13: FaceMix beats Mixup"]["verdict"] == "holds"
    assert not by["Table 13: FaceMix beats CutMix"]["rule"].startswith("not measurable")
    card = sc.Scorecard("02_test", "cpu", "synthfer")
    acc = {k: v for k, v in _acc().items() if k != X.CUTMIX}
    X.component_claims(card, acc, [0, 1, 2], [0, 1], _audit([0.3, 0.4, 0.5]), 1000, "note", lambda k: "-")
    cut = [c for c in card.claims if "CutMix" in c["claim"]][0]
    assert cut["rule"].startswith("not measurable") and "CutMix row is not run" in cut["rule"]


def test_extra_claims_say_where_a_skipped_table_runs():
    card = sc.Scorecard("02_test", "cpu", "synthfer")
    X.extra_claims(card, {"seed": 0}, (), lambda k: "-", 1000, "cpu")
    assert len(card.claims) == 7
    assert all(c["rule"].startswith("not measurable") and "not run in the cpu profile" in c["rule"]
               for c in card.claims)


def test_threshold_curve_counts_confident_rows_and_their_precision():
    from fernb.data.dataset import FERDataset

    class Fixed(torch.nn.Module):      # logits read from the image's first pixel: row i -> a chosen distribution
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits[(x[:, 0, 0, 0] * 0 + torch.arange(len(x))).long()]

    logits = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.34, 0.33, 0.33]]))
    data = FERDataset(images=torch.zeros(4, 3, 8, 8, dtype=torch.uint8), labels=torch.full((4,), -1),
                      clean_labels=torch.tensor([0, 1, 1, 2]), classes=("a", "b", "c"), name="t")
    t = X.threshold_curve(Fixed(logits), data, [0.5, 0.8, 0.95], device="cpu", batch_size=4).set_index("τ")
    assert t.loc[0.5, "accepted"] == 0.75 and t.loc[0.5, "precision"] == pytest.approx(2 / 3)   # rows 0, 1, 2
    assert t.loc[0.8, "accepted"] == 0.25 and t.loc[0.8, "precision"] == 1.0                   # row 0 only
    assert t.loc[0.95, "accepted"] == 0 and np.isnan(t.loc[0.95, "precision"])


def test_components_line_formats_the_differences_it_names():
    line = X.components_line(_acc())
    assert "+ FaceMix 0.530 (+0.020)" in line and "vs the labels-only control 0.535 (+0.035)" in line
    assert "CutMix 0.500 (-0.010, its seeds)" in line


def test_gradcam_note_counts_right_faces_and_scores_synthfer_only():
    from fernb import models
    from fernb.data import synthfer as S

    test = S.synthfer("test", 24, size=48, seed=0)
    model = models.create("vit_mini", 7, in_chans=3, img_size=48, patch_size=8, embed_dim=64, depth=2)
    predictions = test.labels.clone()
    predictions[:3] = (predictions[:3] + 1) % 7                       # 3 of the 8 shown faces wrong
    text, score = X.gradcam_note(model, test, torch.arange(8), predictions)
    assert "5 of 8 shown faces are classified correctly" in text and "(6 x 6)" in text
    assert score is not None and score > 0 and f"**{score:.2f}**" in text
    real = S.synthfer("test", 24, size=48, seed=0)
    real.info = {"source": "RAF-DB"}                                   # no renderer masks: caption without a score
    text, score = X.gradcam_note(model, real, torch.arange(8), predictions)
    assert score is None and "Localisation" not in text
