"""SynthFER through the eyes of a model trained on real faces: the FER2013 judge's per-class recall.

    .venv/bin/python benchmarks/bench_synthfer_judge.py                    # this checkout's renderer
    git worktree add /tmp/v2 86f1ab0                                        # an older renderer (SynthFER v2) ...
    .venv/bin/python benchmarks/bench_synthfer_judge.py --tree /tmp/v2      # ... read by this checkout's judge

Protocol (the SynthFER-credibility issue; `fernb.methods.tour.judge_section` is the same for this checkout): 40 clean,
full-intensity, frontal prototypes per class at 96 px (identities 5000-5039; lighting, blur, noise, occluders and
resting faces off; scale 0.95), and the 2,000-image test split at 96 px (seed 0); each face cut by its box with a
10 % margin, made grey and 64 px, as the `fer` package does. The judge (`fernb.models.fer2013`) always comes from
this checkout; `--tree` only swaps in another checkout's renderer, which is how JUDGE_BEFORE in
fernb/methods/tour.py was measured (SynthFER v2 at 86f1ab0). Targets: prototypes macro recall >= 0.65 with every
class >= 0.40, test split macro recall >= 0.45. Deterministic: no timing, so no quiet-machine wait.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, default=None, help="another checkout whose SynthFER renderer to read")
    parser.add_argument("--json", type=Path, default=None, help="also write the recalls here")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import torch
    from fernb.data.dataset import FERDataset
    from fernb.models.fer2013 import judge_report, load_fer2013_judge

    judge = load_fer2013_judge()
    if args.tree is not None:  # re-import fernb.data from the other checkout (the judge stays loaded from ours)
        sys.path.insert(0, str(args.tree))
        for name in [m for m in sys.modules if m == "fernb" or m.startswith("fernb.")]:
            del sys.modules[name]
        S = importlib.import_module("fernb.data.synthfer")
    else:
        from fernb.data import synthfer as S
    from dataclasses import replace

    n_per = 40
    labels = torch.arange(7 * n_per) // n_per
    ids = 5000 + torch.arange(7 * n_per) % n_per
    clean = replace(S.DEFAULT, light=0.0, blur_prob=0.0, noise_std=(0.0, 0.0), occlusion_prob=0.0)
    p = S.sample_params(len(labels), num_classes=8, seed=0, identities=ids, cfg=clean, classes_=labels)
    n = len(labels)
    p.update(aus=S.prototype_matrix(8)[labels], yaw=torch.zeros(n), roll=torch.zeros(n),
             scale=torch.full((n,), 0.95), tx=torch.zeros(n), ty=torch.zeros(n), brightness=torch.ones(n))
    ident = S.identity_table(ids, 0, clean)
    ident["resting"] = torch.zeros_like(ident["resting"])
    images, boxes = S.render_images(p, ident, 96, 3)
    out = {"version": S.VERSION}
    for split, data in (("prototypes", FERDataset(images=images, labels=labels, boxes=boxes)),
                        ("test", S.synthfer("test", 2000, size=96, seed=0, cache=False))):
        report = judge_report(data, model=judge)
        out[split] = {"macro_recall": report["macro_recall"], "recall": report["recall"]}
        print(f"SynthFER v{S.VERSION} {split:10s} macro recall {report['macro_recall']:.3f} | "
              + " ".join(f"{k} {v:.2f}" for k, v in report["recall"].items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
