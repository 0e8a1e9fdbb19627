"""Notebook 02's experiment plan on top of `fernb.methods.ssfer` (Song et al., "Bridging the Gaps"): the rows of
the component tables, the seed tables, the pseudo-label audit, the reconstruction figure, the regime checks and
the scorecard's claims, declared as data so the notebook only explains and displays.

Every row runs on one ViT fine-tuned from its MAE encoder (the paper's setting); Table 11 adds the same ViT from
random weights. The semi-supervised rows continue a supervised row of the same seed for `semi_steps` more steps,
and the control "FaceMix + supervised steps" spends those steps on the labeled images alone (same trainer, lr,
schedule and EMA evaluation), so a semi-supervised gain over it belongs to the unlabeled images.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from .. import engine
from .. import scorecard as sc
from ..models import mae as mae_lib
from . import ssfer
from .ssfer import Setting

__all__ = ["BASELINE", "FACEMIX", "EMA", "SSFER", "CONTROL", "FIXMATCH", "MIXUP", "CUTMIX", "component_rows",
           "SEMI_ROWS", "run_rows", "seed_frame", "fraction_rows", "noise_rows", "noise_declines",
           "attribute_accuracies", "extra_claims", "EXTRA_TABLES", "threshold_curve", "components_line", "pseudo_label_audit", "plot_pseudo_labels", "reconstruction_figure",
           "kappa_summary", "component_claims", "regime_lines", "ACCEPT_FLOOR"]

BASELINE, FACEMIX, EMA, SSFER = "baseline (CE)", "+ FaceMix", "+ EMA teacher", "SSFER (FaceMix + EMA teacher)"
CONTROL, FIXMATCH, MIXUP, CUTMIX = "FaceMix + supervised steps (control)", "FaceMix + FixMatch", "Mixup", "CutMix"
SEMI_ROWS = (EMA, SSFER, FIXMATCH)
# a semi-supervised row whose teacher accepted less than this share of the unlabeled images in its last epoch
# trained on (almost) nothing but labels: its claims are "not measurable", not verdicts
ACCEPT_FLOOR = 0.05


def component_rows(base: Setting, mix_rows=("mixup", "cutmix")) -> dict[str, Setting]:
    """Tables 10, 12 and 13 and the control, as settings derived from SSFER's full setting `base`; `mix_rows`
    names the Table 13 rows besides FaceMix that run ("mixup", "cutmix")."""
    rows = {BASELINE: replace(base, mix="none", semi=None), FACEMIX: replace(base, semi=None),
            EMA: replace(base, mix="none"), SSFER: base, CONTROL: replace(base, semi="supervised"),
            FIXMATCH: replace(base, semi="fixmatch"), MIXUP: replace(base, mix="mixup", semi=None),
            CUTMIX: replace(base, mix="cutmix", semi=None)}
    unknown = set(mix_rows) - {"mixup", "cutmix"}
    if unknown:
        raise ValueError(f"mix_rows may name 'mixup' and 'cutmix', got {sorted(unknown)}")
    return {n: st for n, st in rows.items() if n not in (MIXUP, CUTMIX) or st.mix in mix_rows}


def run_rows(exp: ssfer.SSFERExperiment, rows: dict, seeds_of: dict) -> dict:
    """Train every row at its seeds: {row: {seed: accuracy}} (supervised stages shared through `exp`'s memo)."""
    return {n: {s: exp.run(rows[n], s).accuracy for s in seeds_of[n]} for n in seeds_of}


def seed_frame(acc: dict, names) -> pd.DataFrame:
    """Rows `names` of {row: {seed: accuracy}}: mean, sd (ddof 1; NaN with one seed) and each seed's value."""
    out = {}
    for n in names:
        v = np.asarray(list(acc[n].values()), dtype=float)
        out[n] = {"mean": v.mean(), "sd": v.std(ddof=1) if len(v) > 1 else np.nan,
                  **{f"seed {s}": a for s, a in acc[n].items()}}
    return pd.DataFrame(out).T


def pseudo_label_audit(exp: ssfer.SSFERExperiment, rows: dict, names, seeds) -> pd.DataFrame:
    """Per semi-supervised row, over its seeds: the share of unlabeled images whose pseudo-label was accepted in
    the first and the last epoch, and the precision of the accepted pseudo-labels (against the clean labels on
    SynthFER) in the last epoch and over the whole run (accepted-weighted)."""
    out = {}
    for n in names:
        runs = [exp.run(rows[n], s).audit for s in seeds]
        first = [a["mask_rate"][0] for a in runs]
        last = [a["mask_rate"][-1] for a in runs]
        prec_last = [a["pseudo_acc"][-1] for a in runs if a["pseudo_acc"] and a["pseudo_acc"][-1] is not None]
        w = [(m, p) for a in runs for m, p in zip(a["mask_rate"], a["pseudo_acc"]) if p is not None and m > 0]
        out[n] = {"accepted, first epoch": np.mean(first), "accepted, last epoch": np.mean(last),
                  "precision, last epoch": np.mean(prec_last) if prec_last else np.nan,
                  "precision, whole run": (sum(m * p for m, p in w) / sum(m for m, _ in w)) if w else np.nan}
    return pd.DataFrame(out).T


def plot_pseudo_labels(exp: ssfer.SSFERExperiment, rows: dict, names, seeds):
    """Accepted share and precision of the accepted pseudo-labels per epoch of the semi-supervised stage, one
    line per row and seed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.1))
    colors = dict(zip(names, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for n in names:
        for i, s in enumerate(seeds):
            a = exp.run(rows[n], s).audit
            ep = np.arange(1, len(a["mask_rate"]) + 1)
            kw = dict(color=colors[n], alpha=0.8, marker=".", label=n if i == 0 else None)
            axes[0].plot(ep, a["mask_rate"], **kw)
            axes[1].plot(ep, [np.nan if p is None else p for p in a["pseudo_acc"]], **kw)
    axes[0].set_ylabel("accepted share of the unlabeled images")
    axes[1].set_ylabel("accepted pseudo-labels that are right")
    for ax in axes:
        ax.set_xlabel("epoch of the semi-supervised stage")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


@torch.no_grad()
def reconstruction_figure(mae: mae_lib.MaskedAutoencoder, test, device, ratios=(0.5, 0.75, 0.9), n: int = 4,
                          noise_seed: int = 1, suptitle: str = ""):
    """Fig. 3 with the decoder's own output beside the borrowed-statistics view (`viz.plot_mae_predictions`);
    one noise draw for every ratio, so the patches visible at 90 % are among those visible at 75 %."""
    from .. import viz
    from ..data import augment as aug

    device = engine.resolve_device(device)
    mae = mae.to(device).eval()
    x = engine.batch_input(test, torch.arange(n), device)
    noise = torch.rand(n, mae.num_patches, generator=torch.Generator().manual_seed(noise_seed)).to(device)
    results, target = {}, None
    for r in ratios:
        masked, borrowed, _ = mae.reconstruct(x, r, noise=noise)
        target, own, loss = mae.reconstruct_normalized(x, r, noise=noise)
        results[r] = (aug.from_input(masked.float().cpu()), own.cpu(), aug.from_input(borrowed.float().cpu()),
                      loss.cpu())
    return viz.plot_mae_predictions(aug.from_input(x.float().cpu()), target.cpu(), results, suptitle=suptitle)


def kappa_summary(kappa: torch.Tensor) -> dict:
    """Mean, median, 5th / 95th percentiles and the share above 0.5 of kappa over pairs."""
    k = kappa.float()
    q = torch.quantile(k, torch.tensor([0.05, 0.5, 0.95]))
    return {"mean": float(k.mean()), "p5": float(q[0]), "median": float(q[1]), "p95": float(q[2]),
            "above_half": float((k > 0.5).float().mean())}


def _semi_idle(audit: pd.DataFrame, name: str) -> str | None:
    last = float(audit.loc[name, "accepted, last epoch"])
    if last < ACCEPT_FLOOR:
        return (f"{name} accepted {last:.1%} of the unlabeled images in its last epoch (< {ACCEPT_FLOOR:.0%}): "
                "its semi-supervised stage trained on labels alone")
    return None


def component_claims(card: sc.Scorecard, acc: dict, seeds, mix_seeds, audit: pd.DataFrame, n_test: int,
                     note: str, paper) -> None:
    """The scorecard's claims on Tables 10, 12 and 13 and the control, paired over seeds; a claim that rests on
    a semi-supervised row whose pseudo-labels did not flow is "not measurable"."""
    claims = [  # (a, b, paper key, claim, seeds)
        (SSFER, BASELINE, "full_vs_baseline", "Table 10: SSFER beats the baseline", seeds),
        (SSFER, FACEMIX, "ema_over_facemix", "Table 10: the EMA teacher adds to FaceMix", seeds),
        (FACEMIX, BASELINE, None, "Table 10: FaceMix beats the baseline", seeds),
        (EMA, BASELINE, None, "Table 10: the EMA teacher beats the baseline", seeds),
        (SSFER, CONTROL, None, "the EMA teacher's gain comes from the unlabeled images: SSFER beats FaceMix "
                               "trained the same extra steps on labels only (a control the paper does not run)",
         seeds),
        (SSFER, FIXMATCH, "ema_vs_fixmatch", "Table 12: EMA teacher beats FixMatch", seeds),
        (FACEMIX, MIXUP, "facemix_vs_mixup", "Table 13: FaceMix beats Mixup", mix_seeds),
        (FACEMIX, CUTMIX, None, "Table 13: FaceMix beats CutMix", mix_seeds),
    ]
    for a, b, key, what, ss in claims:
        if a not in acc or b not in acc:
            card.claim(what, paper(key) if key else "-", sc.not_measurable(
                "-", f"the {b if a in acc else a} row is not run in this profile (its budget; `mix_rows`)"), note)
            continue
        ev = sc.paired([acc[a][s] for s in ss], [acc[b][s] for s in ss], list(ss), n_test=n_test, names=(a, b))
        idle = [m for m in (_semi_idle(audit, r) for r in (a, b) if r in audit.index) if m]
        if idle:
            ev = sc.not_measurable(ev.measured, "; ".join(idle))
        card.claim(what, paper(key) if key else "-", ev, note)


def regime_lines(acc: dict, audit: pd.DataFrame, kappa: dict, chance: float, mae_first: float,
                 mae_last: float) -> list[str]:
    """The 'is the mechanism acting' numbers, formatted from what was measured."""
    m = {k: float(np.mean(list(v.values()))) for k, v in acc.items()}
    lines = [f"*MAE.* The masked-patch loss fell from {mae_first:.3f} to {mae_last:.3f} (1.0 = predicting each "
             f"patch's mean).",
             f"*ViT.* From its MAE encoder the ViT reaches {m[BASELINE]:.3f}; from random weights "
             f"{m['from scratch']:.3f} (chance {chance:.3f}).",
             f"*FaceMix's κ.* Mean {kappa['mean']:.2f}, 5-95 % range {kappa['p5']:.2f}-{kappa['p95']:.2f}, "
             f"{kappa['above_half']:.0%} of pairs above 0.5."]
    for n in audit.index:
        r = audit.loc[n]
        prec = ("none was accepted" if np.isnan(r["precision, whole run"]) else
                f"precision of the accepted pseudo-labels {r['precision, last epoch']:.2f} in the last epoch "
                f"({r['precision, whole run']:.2f} over the run)")
        lines.append(f"*{n}.* Accepted {r['accepted, first epoch']:.0%} of the unlabeled images in the first epoch "
                     f"and {r['accepted, last epoch']:.0%} in the last; {prec}.")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Section 5: the other tables (which run is the profile's `extra_tables`)
# ---------------------------------------------------------------------------------------------------------------
EXTRA_TABLES = {"2": "Tables 2-4: label fractions and labels per class", "5": "Table 5: K-fold",
                "6": "Table 6: parameters and FLOPs", "7": "Table 7 / Fig. 9: FGSM on focused vs unfocused pixels",
                "8": "Table 8: label noise", "9": "Table 9: another facial task",
                "14": "Table 14: kappa from IoU / PSNR / SSIM / FSIM", "15": "Table 15: FaceMix loss variants",
                "16": "Table 16: learning-rate search"}


def fraction_rows(exp: ssfer.SSFERExperiment, full: Setting, fractions, per_class, seed: int) -> pd.DataFrame:
    """Tables 2-4 at one seed: FaceMix (supervised) and SSFER per labeled fraction; SSFER and FaceMix + FixMatch
    per number of labels per class."""
    rows = []
    for f in fractions:
        for name, st in (("FaceMix (supervised)", replace(full, semi=None, labels=f)), ("SSFER", replace(full, labels=f))):
            r = exp.run(st, seed)
            rows.append({"labels": f"{f:.0%}", "n labeled": r.n_labeled, "row": name, "accuracy": r.accuracy})
    for n in per_class:
        for name, st in (("SSFER", replace(full, labels=int(n))),
                         ("FaceMix + FixMatch", replace(full, labels=int(n), semi="fixmatch"))):
            r = exp.run(st, seed)
            rows.append({"labels": f"{n}/class", "n labeled": r.n_labeled, "row": name, "accuracy": r.accuracy})
    return pd.DataFrame(rows)


def noise_rows(exp: ssfer.SSFERExperiment, sup_fm: Setting, levels, seeds) -> pd.DataFrame:
    """Table 8 over seeds: the supervised FaceMix stage and the CE baseline (a control) at each symmetric noise
    level of the labeled images (CE at 0 and the top level only). Long format: noise, row, seed, accuracy."""
    top, rows = max(levels), []
    for nz in (0.0, *levels):
        for name, st in (("FaceMix", replace(sup_fm, noise=nz)), ("CE", replace(sup_fm, mix="none", noise=nz))):
            if name == "CE" and nz not in (0.0, top):
                continue
            rows += [{"noise": nz, "row": name, "seed": s, "accuracy": exp.run(st, s).accuracy} for s in seeds]
    return pd.DataFrame(rows)


def noise_declines(noise: pd.DataFrame) -> dict:
    """{row: [accuracy at 0 minus accuracy at the top noise level, per seed]} from `noise_rows`."""
    top = noise.noise.max()
    out = {}
    for row in ("FaceMix", "CE"):
        piv = noise[noise.row == row].pivot_table(index="seed", columns="noise", values="accuracy")
        out[row] = [float(v) for v in piv[0.0] - piv[top]]
    return out


def attribute_accuracies(train, test, pool, sup_fm: Setting, seeds, **experiment_kwargs) -> dict:
    """Table 9 over seeds on SynthFER's hair style (4 classes; the paper: gender on Adience): FaceMix with 25 % of
    the labels vs CE with all of them, both from the MAE encoder. {row: [accuracy per seed]}."""
    a_exp = ssfer.SSFERExperiment(ssfer.attribute_task(train), ssfer.attribute_task(test), pool, **experiment_kwargs)
    return {"FaceMix 25 %": [a_exp.run(replace(sup_fm, labels=0.25), s).accuracy for s in seeds],
            "CE 100 %": [a_exp.run(replace(sup_fm, mix="none", labels=1.0), s).accuracy for s in seeds]}


def extra_claims(card: sc.Scorecard, x: dict, extra_tables, paper, n_test: int, profile: str) -> None:
    """Claims of section 5's tables; a table the profile did not run is "not measurable" and says where it runs.
    x holds what ran: kap / var (RunResults by name), fr (RunResults by fraction), per_class ({n: (SSFER,
    FixMatch)}), declines, noise_seeds, attr, attr_seeds, kf_table, kf_name, tuned, default, seed."""
    def skipped(table, claim, key):
        card.claim(claim, paper(key), sc.not_measurable("-", f"{EXTRA_TABLES[table]} is not run in the {profile} "
                                                            "profile (its budget); the smoke and gpu profiles run it"))

    boot = lambda a, b, names, d=">": sc.bootstrap_paired(a.correct, b.correct, direction=d, names=names,
                                                          run_seed=x.get("seed", 0))
    # Tables 14-15: the paper's choice against the best other setting of the same sweep
    for table, runs, chosen, shown, prefix, claim, key in (
            ("14", "kap", "iou", "κ IoU", "κ ", "IoU is the best κ (Table 14)", "kappa_iou_best"),
            ("15", "var", "L4", "L4", "", "L4 (Eq. 10) is the best FaceMix loss (Table 15)", "l4_best")):
        if table not in extra_tables:
            skipped(table, claim, key)
            continue
        sweep = x[runs]
        other = max((k for k in sweep if k != chosen), key=lambda k: sweep[k].accuracy)
        card.claim(claim, paper(key), boot(sweep[chosen], sweep[other], (shown, f"{prefix}{other} (best other)")),
                   "supervised FaceMix stage")
    if "2" in extra_tables:
        lo, hi = min(x["fr"]), max(x["fr"])
        card.claim(f"more labels help: {hi:.0%} beats {lo:.0%} (Table 2)", paper("fractions"),
                   boot(x["fr"][hi], x["fr"][lo], (f"SSFER {hi:.0%}", f"SSFER {lo:.0%}")), "one seed")
        for n, (a, b) in x["per_class"].items():
            d = "<" if n == 10 else ">"   # RAF-DB: FixMatch ahead at 10 labels per class, SSFER at 100
            card.claim(f"{'FixMatch beats SSFER' if d == '<' else 'SSFER beats FixMatch'} at {n} labels per class "
                       "(Table 3)", paper("per_class"), boot(a, b, ("SSFER", "FixMatch"), d), "one seed")
    else:
        skipped("2", "more labels help (Table 2)", "fractions")
    if "8" in extra_tables:
        d = x["declines"]
        card.claim("FaceMix loses less than CE under the top label-noise level (Table 8: a small decline)",
                   paper("noise_decline"), sc.paired(d["CE"], d["FaceMix"], x["noise_seeds"], n_test=n_test,
                                                     names=("decline CE", "decline FaceMix")),
                   "SCN, the paper's reference, is not run here: CE from the same MAE encoder is the control")
    else:
        skipped("8", "FaceMix loses less than CE under label noise (Table 8)", "noise_decline")
    if "5" in extra_tables:
        t = x["kf_table"]
        card.claim(f"{x['kf_name']} beats CE with every label in K-fold cross-validation (Table 5)", paper("kfold"),
                   sc.paired(t[x["kf_name"]].values, t["CE 100 %"].values, list(t.index),
                             names=(x["kf_name"], "CE 100 %"), unit="folds"), "folds share the model seed")
    else:
        skipped("5", "FaceMix with 25 % labels beats CE with every label in K-fold (Table 5)", "kfold")
    if "9" in extra_tables and x.get("attr"):
        a = x["attr"]
        card.claim("FaceMix with 25 % labels beats CE with every label on another facial task (Table 9)",
                   paper("other_task"), sc.paired(a["FaceMix 25 %"], a["CE 100 %"], x["attr_seeds"], n_test=n_test,
                                                  names=("FaceMix 25 %", "CE 100 %")),
                   "hair style (4 classes) for the paper's gender; supervised FaceMix, not the full SSFER")
    else:
        skipped("9", "FaceMix with 25 % labels beats CE with every label on another facial task (Table 9)",
                "other_task")
    if "16" in extra_tables:
        card.claim("a tuned learning rate helps (Table 16)", paper("lr_search"),
                   boot(x["tuned"], x["default"], ("tuned lr", "default lr")), "Optuna TPE on the validation split")
    else:
        skipped("16", "a tuned learning rate helps (Table 16)", "lr_search")


@torch.no_grad()
def threshold_curve(model: torch.nn.Module, unlabeled, taus, device=None, batch_size: int = 256) -> pd.DataFrame:
    """Before the semi-supervised stage: for each confidence threshold tau (Eq. 4), the share of `unlabeled`
    images whose max softmax probability under `model` exceeds it, and how many of those argmax labels are right
    (against `unlabeled.clean_labels`: SynthFER's clean labels, or the annotators' agreement on real data). The
    images go in unaugmented (the teacher sees weak views: a crop and a flip away)."""
    device = engine.resolve_device(device)
    model = model.to(device).eval()
    probs = torch.cat([model(engine.batch_input(unlabeled, idx, device)).float().softmax(1).cpu()
                       for idx in torch.arange(len(unlabeled)).split(batch_size)])
    conf, pred = probs.max(1)
    truth = unlabeled.clean_labels           # None: nothing to audit against, the precision column stays NaN
    right = (pred == truth.cpu()).float() if truth is not None else None
    rows = [{"τ": t, "accepted": float((conf > t).float().mean()),
             "precision": float(right[conf > t].mean()) if right is not None and (conf > t).any() else np.nan}
            for t in taus]
    return pd.DataFrame(rows)


def components_line(acc: dict) -> str:
    """The ablation in one sentence, each component's difference formatted from the seed means it compares."""
    m = {k: float(np.mean(list(v.values()))) for k, v in acc.items()}
    parts = [f"baseline {m[BASELINE]:.3f}", f"+ FaceMix {m[FACEMIX]:.3f} ({m[FACEMIX] - m[BASELINE]:+.3f})",
             f"+ EMA teacher {m[EMA]:.3f} ({m[EMA] - m[BASELINE]:+.3f})",
             f"SSFER {m[SSFER]:.3f} vs the labels-only control {m[CONTROL]:.3f} ({m[SSFER] - m[CONTROL]:+.3f})",
             f"FixMatch {m[FIXMATCH]:.3f}"]
    parts += [f"{n} {m[n]:.3f} ({m[n] - m[BASELINE]:+.3f}, its seeds)" for n in (MIXUP, CUTMIX) if n in m]
    return "*Components* (differences of seed means; the scorecard pairs them by seed): " + ", ".join(parts) + "."


def gradcam_note(model: torch.nn.Module, test, shown, predictions, n_score: int = 500) -> tuple[str, float | None]:
    """The Fig. 8 caption: how many shown faces are right, the Grad-CAM map's resolution and, on SynthFER, the
    localisation score of notebook 00 (`viz.gradcam_localisation`: CAM share on the true expression's action-unit
    regions over their share of the face, 1.0 = spread evenly) over the expressive faces among the first `n_score`
    test images. Returns (markdown, score or None where the data has no region masks)."""
    from .. import viz

    shown = torch.as_tensor(shown)
    n_right = int((torch.as_tensor(predictions)[shown] == test.labels.cpu()[shown]).sum())
    layers, _, name, side = viz.gradcam_target_layers(model, test.image_size)
    text = (f"Titles: true → predicted class (red: wrong); {n_right} of {len(shown)} shown faces are classified "
            f"correctly. The ViT's Grad-CAM map (block `{name}`) has one value per patch ({side} x {side}), so it "
            "can point at a region of the face (mouth, brows), not at a pixel.")
    if str(test.info.get("source", "")).lower() != "synthfer":
        return text, None
    loc = viz.gradcam_localisation(model, test, torch.arange(min(n_score, len(test))))
    n = int((~loc["scores"].isnan()).sum())
    return (text + f" **Localisation score** over {n} expressive test faces: **{loc['mean']:.2f}** (1.0 = no "
            "better than spread evenly over the face; notebook 00)."), loc["mean"]
