"""SSFER's three-stage pipeline (Song et al., "Bridging the Gaps", Fig. 2) assembled from fernb's pieces, plus the
experiment bookkeeping notebook 02 needs.

  (a) self-supervised pre-training: an MAE (`fernb.models.mae`) on an unlabeled face pool (SynthFER's unlabeled
      split stands in for the paper's 1.2 M face-recognition images: other identities, no labels read);
  (b) supervised fine-tuning of the same ViT + head on the labeled images with FaceMix (`fernb.losses.facemix`);
  (c) semi-supervised fine-tuning on labeled + unlabeled images with the EMA teacher
      (`fernb.methods.semisup`, Eq. 1-5).

Every stage runs through the engine (`engine.fit` for (a) and (b), the shared semi-supervised trainer for (c)):
batched device-resident data, AMP on CUDA, fixed optimizer-step budgets, seeded. `SSFERExperiment` runs the
settings of the paper's tables and memoizes shared stages, so the MAE checkpoint of a seed and the supervised
model that several semi-supervised variants start from are trained once.

Also here: Grad-CAM-region FGSM (Table 7, Fig. 9) and the SynthFER identity attribute used as "another facial
task" (Table 9).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import engine, models
from ..data import augment as aug
from ..data import splits
from ..data.dataset import UNLABELED, FERDataset
from ..losses import facemix as fm
from ..models import mae as mae_lib
from . import semisup

__all__ = ["MAEResult", "pretrain_mae", "mixing_loss", "supervised_finetune", "semi_supervised_finetune",
           "Setting", "RunResult", "SSFERExperiment", "fgsm", "grad_cam_regions", "region_attack_curve",
           "identity_attribute", "attribute_task", "HAIR_STYLES", "flops_and_params", "reconstruction_losses",
           "kfold_accuracies", "lr_search", "PAPER", "paper_number", "mae_train_task", "load_or_pretrain_mae",
           "mae_fingerprint", "SEMI_METHODS"]

MIX_MODES = ("none", "mixup", "cutmix", "facemix")
SEMI_METHODS = ("ema", "fixmatch", "supervised")


# ---------------------------------------------------------------------------------------------------------------
# (a) MAE pre-training
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class MAEResult:
    history: engine.History
    mae: mae_lib.MaskedAutoencoder
    checkpoint: Path
    seconds: float
    loaded: bool = False        # True: read from an earlier run's checkpoint (seconds are that run's)


def pretrain_mae(model_name: str, pool: FERDataset, checkpoint: str | Path, *, img_size: int, epochs: int = 10,
                 steps: int | None = None, batch_size: int = 128, lr: float = 1.5e-3, weight_decay: float = 0.05,
                 mask_ratio: float = 0.75, decoder_dim: int | None = None, decoder_depth: int = 2,
                 augment="weak", device=None, seed: int = 0, progress: bool = False,
                 run_checkpoint: str | Path | None = None, vit_kwargs: dict | None = None) -> MAEResult:
    """Pre-train the encoder of `model_name` as an MAE on every row of `pool` (its labels are never read) and save
    the encoder's weights to `checkpoint` (`fernb.models.mae.load_encoder` / `vit_classifier` load them).

    The loop is `engine.fit` with the MAE loss (masked patches only, normalized pixels); `run_checkpoint` makes a
    long run resumable (the paper profile). SSFER's recipe: 75 % masking, AdamW, a warm-up then cosine schedule
    (engine's one-cycle), weight decay 0.05 as in MAE."""
    torch.manual_seed(seed)
    encoder = models.create(model_name, 0, in_chans=pool.channels, img_size=img_size, **(vit_kwargs or {}))
    mae = mae_lib.MaskedAutoencoder(encoder, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                                    mask_ratio=mask_ratio)
    every_row = pool.with_labels(torch.zeros_like(pool.labels))     # the engine trains on rows with label >= 0

    def mae_step(model, x, y, index):
        return model(x).loss, None

    t0 = time.perf_counter()
    history = engine.fit(mae, every_row, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr,
                         weight_decay=weight_decay, augment=augment, loss_fn=mae_step, device=device, seed=seed,
                         checkpoint=run_checkpoint, progress=progress, desc="MAE")
    path = mae_lib.save_encoder(mae, checkpoint)
    return MAEResult(history, mae, path, time.perf_counter() - t0)


def mae_fingerprint(model_name: str, pool: FERDataset, img_size: int, seed: int, vit_kwargs: dict | None,
                    **mae_kwargs) -> str:
    """A short hash of everything that shapes an MAE run: model, ViT settings, image size, seed, the MAE settings
    and the pool (name, size, a checksum of its pixels, its SynthFER version)."""
    import hashlib
    import json

    probe = pool.images[:: max(1, len(pool) // 64)].to(torch.int64).sum().item()
    spec = {"model": model_name, "vit": vit_kwargs or {}, "img": img_size, "seed": seed, "mae": mae_kwargs,
            "pool": [pool.name, len(pool), probe, pool.info.get("version")]}
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def load_or_pretrain_mae(model_name: str, pool: FERDataset, checkpoint_dir: str | Path, *, img_size: int,
                         seed: int = 0, vit_kwargs: dict | None = None, device=None, progress: bool = False,
                         **mae_kwargs) -> MAEResult:
    """`pretrain_mae` once per setting: the encoder goes to `mae-seed<seed>-<fingerprint>.pt` (what classifiers
    load) and the whole MAE (decoder included, for the reconstruction figures), its loss history and its training
    seconds to the same name with `.full.pt`; a later call with the same settings loads them instead of training
    (MAEResult.loaded is then True and MAEResult.seconds the original run's)."""
    checkpoint_dir = Path(checkpoint_dir)
    key = mae_fingerprint(model_name, pool, img_size, seed, vit_kwargs, **mae_kwargs)
    path = checkpoint_dir / f"mae-seed{seed}-{key}.pt"
    full = path.with_suffix(".full.pt")
    if path.exists() and full.exists():
        saved = torch.load(full, map_location="cpu", weights_only=True)
        encoder = models.create(model_name, 0, in_chans=pool.channels, img_size=img_size, **(vit_kwargs or {}))
        mae = mae_lib.MaskedAutoencoder(encoder, **saved["mae_args"])
        mae.load_state_dict(saved["state"])
        history = engine.History(**saved["history"])
        return MAEResult(history, mae.eval(), path, saved["seconds"], loaded=True)
    result = pretrain_mae(model_name, pool, path, img_size=img_size, seed=seed, vit_kwargs=vit_kwargs, device=device,
                          progress=progress, **mae_kwargs)
    mae_args = {"decoder_dim": mae_kwargs.get("decoder_dim"), "decoder_depth": mae_kwargs.get("decoder_depth", 2),
                "mask_ratio": mae_kwargs.get("mask_ratio", 0.75)}
    from ..paths import atomic_save

    atomic_save({"state": {k: v.detach().cpu() for k, v in result.mae.state_dict().items()}, "mae_args": mae_args,
                 "history": result.history.as_dict(), "seconds": result.seconds}, full)
    return result


def mae_train_task(model, splits, args, device):
    """`python -m fernb train --task mae` (fernb.train): MAE pre-training of `model` (a timm ViT from
    `models.create`) on the train split's images, labels unused, one GPU or DistributedDataParallel under torchrun
    (`engine.fit`). The weights written to --out load into a classifier with `fernb.models.mae.load_encoder` (the
    notebook's `mae_checkpoint` parameter). The paper profile's stage (a), ViT-Base at 224 px on 8 GPUs:

        torchrun --nproc-per-node 8 -m fernb train --task mae --profile paper --model vit_base --image-size 224 \\
            --dataset rafdb --data-root /data/RAF-DB --epochs 600 --batch-size 256 --lr 3.4e-4 \\
            --checkpoint /shared/mae-state.pt --out /shared/mae-vit_base.pt
    """
    mae = mae_lib.MaskedAutoencoder(model, mask_ratio=0.75)
    pool = splits.train.with_labels(torch.zeros_like(splits.train.labels))
    history = engine.fit(mae, pool, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=0.05,
                         augment=args.augment, loss_fn=lambda m, x, y, i: (m(x).loss, None), device=device,
                         seed=args.seed, checkpoint=args.checkpoint, resume=not args.no_resume,
                         progress=args.progress, compile=args.compile, desc="MAE")
    return history, {"mae_loss": history.train_loss[-1] if history.train_loss else None}


# ---------------------------------------------------------------------------------------------------------------
# (b) supervised fine-tuning with Mixup / CutMix / FaceMix
# ---------------------------------------------------------------------------------------------------------------
def mixing_loss(mode: str = "facemix", *, alpha: float = 0.8, boxes: torch.Tensor | None = None,
                kappa: str = "iou", variant: str = "L4") -> Callable:
    """A `loss_fn(model, x, y, index) -> (loss, logits)` for `engine.fit`.

    mode "none": cross-entropy. "mixup" / "cutmix": L_v of the virtual batch only (Eq. 6-7). "facemix": Eq. 10 (or
    a Table 15 variant): the virtual batch and the real batch go through the model in one forward pass, and
    kappa per pair comes from the face boxes (`boxes`, rows of the training data, indexed by `index`; Eq. 8-9) or
    from an image metric between the two real (augmented) images (kappa = "psnr" / "ssim" / "fsim", Table 14).
    The boxes are those of the stored images: the weak augmentation (crop >= 75 % of the area, flip) moves a face a
    little, and kappa ignores that, as a detector run once over the dataset (the paper's yolo-face) would.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"mode must be one of {MIX_MODES}, got {mode!r}")
    if mode == "facemix" and kappa == "iou" and boxes is None:
        raise ValueError("FaceMix with kappa='iou' needs the face boxes of the training rows")
    if kappa not in fm.KAPPA_SOURCES:
        raise ValueError(f"kappa must be one of {fm.KAPPA_SOURCES}, got {kappa!r}")

    boxes_on: dict = {}                       # the face boxes copied once to the device the step runs on

    def step(model, x, y, index):
        if mode == "none":
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        lam = fm.sample_lambda(alpha)
        mixed = (fm.cutmix_batch if mode == "cutmix" else fm.mixup_batch)(x, lam)
        if mode in ("mixup", "cutmix"):
            logits_v = model(mixed.x)
            onehot = F.one_hot(y, logits_v.shape[1]).float()
            target = mixed.lam * onehot + (1 - mixed.lam) * onehot[mixed.perm]
            return fm.soft_cross_entropy(logits_v, target).mean(), None
        both = model(torch.cat([mixed.x, x]))
        logits_v, logits_r = both[: len(x)], both[len(x):]
        if kappa == "iou":
            if x.device not in boxes_on:      # indexing CPU boxes with device rows would copy them back every step
                boxes_on[x.device] = boxes.to(x.device)
            b = boxes_on[x.device][index.to(x.device)]
            k = fm.kappa_from_boxes(b, b[mixed.perm])
        else:
            with torch.no_grad():
                real = aug.from_input(x.float())
                k = fm.kappa_from_images(real, real[mixed.perm], kappa)
        loss = fm.facemix_loss(logits_v, logits_r, y, mixed.perm, mixed.lam, k, variant=variant)
        return loss, logits_r

    return step


def supervised_finetune(model: nn.Module, train: FERDataset, *, mix: str = "facemix", alpha: float = 0.8,
                        boxes: torch.Tensor | None = None, kappa: str = "iou", variant: str = "L4",
                        steps: int = 300, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.05,
                        val: FERDataset | None = None, device=None, seed: int = 0,
                        progress: bool = False) -> engine.History:
    """Stage (b): `steps` optimizer steps on the labeled rows of `train` with `mixing_loss(mix, ...)`."""
    loss_fn = mixing_loss(mix, alpha=alpha, boxes=boxes, kappa=kappa, variant=variant)
    # A mixing step draws lambda, the partner permutation and (CutMix) a box on the host every step: data-dependent
    # Python values that a captured graph would either bake in or recompile for, so mixing steps run eagerly; the
    # plain cross-entropy step keeps the engine's default (torch.compile on CUDA).
    compile_ = False if mix != "none" else None
    return engine.fit(model, train, val=val, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      augment="weak", loss_fn=loss_fn, device=device, seed=seed, progress=progress,
                      desc=f"supervised ({mix})", compile=compile_)


# ---------------------------------------------------------------------------------------------------------------
# (c) semi-supervised fine-tuning
# ---------------------------------------------------------------------------------------------------------------
def semi_supervised_finetune(model: nn.Module, labeled: FERDataset, unlabeled: FERDataset | None, *,
                             method: str = "ema", tau: float = 0.95, mu: float = 1.0, ema_momentum: float = 0.999,
                             steps: int = 300, steps_per_epoch: int = 50, batch_size: int = 32, uratio: int = 2,
                             lr: float = 1.5e-4, weight_decay: float = 0.05, evaluate_with: str = "ema",
                             val: FERDataset | None = None, device=None, seed: int = 0,
                             progress: bool = False) -> semisup.SemiSupResult:
    """Stage (c): EMA teacher (method="ema", SSFER Eq. 1-5) or FixMatch (method="fixmatch") for `steps` steps.
    Both keep an EMA model (momentum m) and, with evaluate_with="ema", are evaluated through it, so the two differ
    only in who makes the pseudo-labels. method="supervised" is the control: the same steps, labeled batches,
    optimizer, schedule and EMA evaluation with L_u left out (`ssl_baselines.SupervisedOnly`), so a gain of the
    semi-supervised rows over it is the unlabeled images' and not the extra steps'."""
    from .ssl_baselines import SupervisedOnly

    if method not in SEMI_METHODS:
        raise ValueError(f"method must be one of {SEMI_METHODS}, got {method!r}")
    rule = SupervisedOnly() if method == "supervised" else \
        {"ema": semisup.EMATeacher, "fixmatch": semisup.FixMatch}[method](tau=tau, weight=mu)
    return semisup.train_semisup(model, labeled, unlabeled, rule, steps=steps,
                                 steps_per_epoch=steps_per_epoch, batch_size=batch_size, uratio=uratio, lr=lr,
                                 weight_decay=weight_decay, ema_momentum=ema_momentum, evaluate_with=evaluate_with,
                                 val=val, device=device, seed=seed, progress=progress, desc=f"semi-sup ({method})")


# ---------------------------------------------------------------------------------------------------------------
# Experiments: one setting per table row, shared stages memoized
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One row of a table. labels: a fraction of the training rows (float < 1: Tables 2, 10-15) or a number per
    class (int: Table 3), or 1.0 for all. noise: symmetric label noise on the labeled rows (Table 8)."""
    init: str = "mae"           # "mae" | "scratch"
    mix: str = "facemix"        # "none" | "mixup" | "cutmix" | "facemix"
    kappa: str = "iou"          # "iou" | "psnr" | "ssim" | "fsim"
    variant: str = "L4"         # "L1" .. "L4"
    semi: str | None = "ema"    # None | "ema" | "fixmatch" | "supervised" (the extra steps without L_u: a control)
    labels: float | int = 0.1
    noise: float = 0.0
    lr: float | None = None     # supervised-stage learning rate (None: the experiment's default)

    @property
    def supervised(self) -> "Setting":
        return replace(self, semi=None)

    def describe(self) -> str:
        lab = f"{self.labels:.0%}" if isinstance(self.labels, float) else f"{self.labels}/class"
        parts = [self.init, self.mix if self.mix != "facemix" else f"facemix[{self.kappa},{self.variant}]",
                 self.semi or "no semi", lab]
        if self.noise:
            parts.append(f"noise {self.noise:.0%}")
        return " | ".join(parts)


@dataclass
class RunResult:
    setting: Setting
    seed: int
    accuracy: float
    mean_class_accuracy: float
    correct: np.ndarray          # per test image, 0/1 (for bootstraps over test images)
    predictions: torch.Tensor
    confusion: np.ndarray
    n_labeled: int
    seconds: float               # this stage alone (the supervised stage it starts from is counted there)
    history: object = None
    state: dict | None = None    # the trained weights (CPU), to rebuild the model
    audit: dict = field(default_factory=dict)


class SSFERExperiment:
    """Runs `Setting`s over seeds on one train / test split, memoizing MAE checkpoints (one per seed) and
    supervised stages (one per supervised setting and seed). Each seed varies every random part: the MAE
    pre-training, the labeled subset, the noise, the head's initialization, batches and augmentation.

    train: labeled training data (labels are hidden to make the labeled / unlabeled split); test: evaluation data;
    pool: the unlabeled face pool for the MAE; boxes: face boxes of the training rows (`fernb.data.faceboxes`).
    """

    def __init__(self, train: FERDataset, test: FERDataset, pool: FERDataset, *, model_name: str, img_size: int,
                 checkpoint_dir: str | Path, boxes: torch.Tensor | None = None, mae: dict | None = None,
                 sup: dict | None = None, semi: dict | None = None, device=None, progress: bool = False,
                 mae_runs: dict | None = None, vit_kwargs: dict | None = None,
                 encoder_checkpoint: str | Path | None = None, mae_seed_of: Callable[[int], int] | None = None):
        self.train, self.test, self.pool = train, test, pool
        self.model_name, self.img_size = model_name, img_size
        self.vit_kwargs = dict(vit_kwargs or {})
        # a pre-trained MAE encoder (e.g. from `python -m fernb train --task mae` under torchrun) replaces stage (a)
        self.encoder_checkpoint = Path(encoder_checkpoint) if encoder_checkpoint else None
        self.checkpoint_dir = Path(checkpoint_dir)
        self.boxes = boxes
        self.mae_kw = dict(mae or {})
        self.sup_kw = dict(sup or {})
        self.semi_kw = dict(semi or {})
        self.device = engine.resolve_device(device)
        self.progress = progress
        # pass another experiment's `mae_runs` to share its MAE checkpoints (they never read labels)
        self.mae_runs: dict[int, MAEResult] = mae_runs if mae_runs is not None else {}
        # which MAE run a fine-tuning seed starts from (default: its own); e.g. lambda s: 0 shares one MAE run
        self.mae_seed_of = mae_seed_of or (lambda s: s)
        self.runs: dict[tuple, RunResult] = {}

    # ---- pieces -------------------------------------------------------------------------------------------------
    def mae_checkpoint(self, seed: int) -> Path:
        """The MAE encoder checkpoint fine-tuning seed `seed` starts from (trained or loaded on first use)."""
        if self.encoder_checkpoint is not None:
            return self.encoder_checkpoint
        return self.mae_result(seed).checkpoint

    def mae_result(self, seed: int) -> MAEResult:
        """The MAE run of fine-tuning seed `seed` (MAE seed `mae_seed_of(seed)`): loaded from `checkpoint_dir`
        when a run with the same settings was saved there (the file name carries a fingerprint of the model,
        image size, pool, MAE settings and SynthFER version), else trained and saved (`load_or_pretrain_mae`)."""
        s = int(self.mae_seed_of(seed))
        if s not in self.mae_runs:
            self.mae_runs[s] = load_or_pretrain_mae(self.model_name, self.pool, self.checkpoint_dir,
                                                    img_size=self.img_size, device=self.device, seed=s,
                                                    progress=self.progress, vit_kwargs=self.vit_kwargs,
                                                    **self.mae_kw)
        return self.mae_runs[s]

    def split(self, setting: Setting, seed: int) -> tuple[FERDataset, FERDataset]:
        """(labeled view of train: unlabeled rows hidden, noisy labels if asked; the unlabeled rows)."""
        y = self.train.labels
        if isinstance(setting.labels, int) and not isinstance(setting.labels, bool):
            mask = splits.labels_per_class_mask(y, setting.labels, seed=seed)
        else:
            mask = splits.label_fraction_mask(y, float(setting.labels), seed=seed)
        labeled = splits.hide_labels(self.train, mask)
        if setting.noise > 0:
            labeled = splits.with_label_noise(labeled, setting.noise, kind="symmetric", seed=seed)
        unlabeled = self.train.subset(~mask)
        unlabeled = unlabeled.with_labels(torch.full_like(unlabeled.labels, UNLABELED))
        return labeled, unlabeled

    def new_model(self, setting: Setting, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        ckpt = self.mae_checkpoint(seed) if setting.init == "mae" else None
        return mae_lib.vit_classifier(self.model_name, self.train.num_classes, in_chans=self.train.channels,
                                      img_size=self.img_size, encoder_checkpoint=ckpt, **self.vit_kwargs)

    def model(self, setting: Setting, seed: int) -> nn.Module:
        """The trained model of (setting, seed), rebuilt from its stored weights (run it first)."""
        result = self.run(setting, seed)
        net = mae_lib.vit_classifier(self.model_name, self.train.num_classes, in_chans=self.train.channels,
                                     img_size=self.img_size, **self.vit_kwargs)
        net.load_state_dict(result.state)
        return net.to(self.device).eval()

    def _result(self, setting, seed, net, n_labeled, seconds, history, audit=None) -> RunResult:
        m = engine.evaluate(net, self.test, device=self.device)
        correct = (m["predictions"] == self.test.labels.cpu()).numpy().astype(float)
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return RunResult(setting, seed, m["accuracy"], m["mean_class_accuracy"], correct, m["predictions"],
                         m["confusion"], n_labeled, seconds, history, state, audit or {})

    # ---- one row ------------------------------------------------------------------------------------------------
    def run(self, setting: Setting, seed: int) -> RunResult:
        key = (setting, seed)
        if key in self.runs:
            return self.runs[key]
        if setting.semi is None:
            labeled, _ = self.split(setting, seed)
            net = self.new_model(setting, seed)
            kw = dict(self.sup_kw)
            if setting.lr is not None:
                kw["lr"] = setting.lr
            t0 = time.perf_counter()
            history = supervised_finetune(net, labeled, mix=setting.mix, boxes=self.boxes, kappa=setting.kappa,
                                          variant=setting.variant, device=self.device, seed=seed,
                                          progress=self.progress, **kw)
            n_lab = int((labeled.labels >= 0).sum())
            result = self._result(setting, seed, net, n_lab, time.perf_counter() - t0, history)
        else:
            start = self.run(setting.supervised, seed)
            labeled, unlabeled = self.split(setting, seed)
            net = mae_lib.vit_classifier(self.model_name, self.train.num_classes, in_chans=self.train.channels,
                                         img_size=self.img_size, **self.vit_kwargs)
            net.load_state_dict(start.state)
            # the unlabeled rows keep their clean labels (annotators' on real data) for the audit only
            t0 = time.perf_counter()
            res = semi_supervised_finetune(net, labeled, unlabeled, method=setting.semi, device=self.device,
                                           seed=seed, progress=self.progress, **self.semi_kw)
            h = res.history
            audit = {"mask_rate": h.mask_rate, "pseudo_acc": h.pseudo_acc, "pseudo_acc_all": h.pseudo_acc_all,
                     "audit": h.audit}
            result = self._result(setting, seed, res.model, start.n_labeled, time.perf_counter() - t0, h, audit)
        self.runs[key] = result
        return result

    def accuracies(self, setting: Setting, seeds) -> list[float]:
        return [self.run(setting, s).accuracy for s in seeds]

    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs.values()) + sum(r.seconds for r in self.mae_runs.values())


# ---------------------------------------------------------------------------------------------------------------
# Robustness: Grad-CAM regions and FGSM (Table 7, Fig. 8-9)
# ---------------------------------------------------------------------------------------------------------------
def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
         region: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """FGSM (Goodfellow et al. 2015) in pixel space, restricted to `region`:

        x_adv = clip_[0,1]( x + eps * sign(grad_x CE(f(x), y)) * region )

    images: float (N, C, H, W) in [0, 1]; region: (N, H, W) or (N, 1, H, W) in {0, 1} (None: every pixel); eps is
    in units of the [0, 1] pixel range. Pixels outside the region are returned unchanged, bit for bit."""
    device = engine.resolve_device(device)
    model = model.to(device).eval()
    x = images.to(device).float().clone().requires_grad_(True)
    loss = F.cross_entropy(model(aug.to_input(x)), labels.to(device))
    grad, = torch.autograd.grad(loss, x)
    step = eps * grad.sign()
    if region is not None:
        region = region.to(device).float()
        if region.ndim == 3:
            region = region[:, None]
        step = step * region
        out = torch.where(region.bool().expand_as(x), (x.detach() + step).clamp(0, 1), x.detach())
        return out.detach()
    return (x.detach() + step).clamp(0, 1)


def grad_cam_regions(cams: torch.Tensor, threshold: float = 0.3, seed: int = 0):
    """(focused, unfocused, random) pixel masks (N, H, W) from Grad-CAM maps in [0, 1] (Table 7, Fig. 9), each
    with the same number of pixels per image, so no attack hurts more merely for changing more pixels.

    The paper's regions are cam > threshold (its 0.3: *focused*) and the rest (*unfocused*), which differ in size.
    Per image, n = min(#focused, #unfocused) pixels are attacked in each: the n highest-cam pixels among the
    focused ones (all of them when the focused region is the smaller), n drawn at random among the unfocused ones,
    and n drawn anywhere (random: a control). `fractions` reports each mask's share of the pixels (equal by
    construction) and `focused_share`, the paper's focused region's own share before matching."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = cams.shape
    above = cams > threshold
    focused = torch.zeros_like(above)
    unfocused = torch.zeros_like(above)
    random_ = torch.zeros_like(above)
    for i in range(n):
        inside = above[i].flatten().nonzero().flatten()
        outside = (~above[i]).flatten().nonzero().flatten()
        k = min(len(inside), len(outside))
        top = inside[torch.argsort(cams[i].flatten()[inside], descending=True)[:k]]
        focused[i].view(-1)[top] = True
        unfocused[i].view(-1)[outside[torch.randperm(len(outside), generator=g)[:k]]] = True
        random_[i].view(-1)[torch.randperm(h * w, generator=g)[:k]] = True
    fractions = {name: float(m.float().mean()) for name, m in
                 (("focused", focused), ("unfocused", unfocused), ("random", random_))}
    fractions["focused_share"] = float(above.float().mean())
    return focused, unfocused, random_, fractions


def region_attack_curve(model: nn.Module, images_uint8: torch.Tensor, labels: torch.Tensor, regions: dict,
                        eps_values=(0.0, 0.02, 0.04, 0.06, 0.08, 0.10), device=None, batch_size: int = 128) -> dict:
    """Accuracy under FGSM restricted to each region (name -> (N, H, W) mask) at each eps: {name: [acc per eps]}.
    Also returns per-image correctness under "<name>@<eps>" keys for bootstraps."""
    device = engine.resolve_device(device)
    model = model.to(device).eval()           # eps = 0 scores the model before any fgsm call has moved it
    x01 = images_uint8.float() / 255.0
    out: dict = {}
    for name, region in regions.items():
        accs = []
        for eps in eps_values:
            hits = []
            for idx in torch.arange(len(x01)).split(batch_size):
                adv = fgsm(model, x01[idx], labels[idx], eps, region[idx], device=device) if eps > 0 else \
                    x01[idx].to(device)
                with torch.no_grad():
                    pred = model(aug.to_input(adv)).argmax(1).cpu()
                hits.append((pred == labels[idx].cpu()).float())
            hits = torch.cat(hits)
            out[f"{name}@{eps:g}"] = hits.numpy()
            accs.append(float(hits.mean()))
        out[name] = accs
    return out


# ---------------------------------------------------------------------------------------------------------------
# Another facial task (Table 9): an identity attribute SynthFER knows
# ---------------------------------------------------------------------------------------------------------------
HAIR_STYLES = ("bald", "short", "long", "fringe")


def identity_attribute(data: FERDataset, name: str = "hair_style") -> torch.Tensor:
    """A per-identity attribute of SynthFER faces ("hair_style": 0 bald, 1 short, 2 long, 3 fringe; "glasses": 0/1),
    read from the identity table the renderer drew them with (same identity numbers and seed)."""
    from ..data import synthfer as S

    if data.info.get("source") != "SynthFER" or data.identities is None:
        raise ValueError(f"{data.name}: identity attributes exist only for SynthFER data")
    domain = data.info.get("domain", "default")
    offset = {"default": 0, "A": 10_000, "B": 20_000}[domain]
    uniq, inverse = data.identities.cpu().unique(return_inverse=True)
    table = S.identity_table(uniq + offset, int(data.info.get("seed", 0)), S.DOMAINS[domain])
    return table[name][inverse].long()


def attribute_task(data: FERDataset, name: str = "hair_style") -> FERDataset:
    """`data` relabeled with an identity attribute (the labels and clean labels become the attribute)."""
    y = identity_attribute(data, name)
    classes = HAIR_STYLES if name == "hair_style" else ("no glasses", "glasses")
    return replace(data, labels=y, clean_labels=y.clone(), soft_labels=None, classes=classes,
                   name=f"{data.name}-{name}")


# ---------------------------------------------------------------------------------------------------------------
# Table 6: parameters and FLOPs
# ---------------------------------------------------------------------------------------------------------------
def flops_and_params(model_fn: Callable[[], nn.Module], input_shape: tuple) -> dict:
    """Parameters and forward FLOPs of one input (torch.utils.flop_counter), counted on the meta device (no memory,
    no compute). FLOPs count a multiply-add as 2; MACs = FLOPs / 2 (papers' "FLOPs" are often MACs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = model_fn()
        x = torch.empty(*input_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    flops = counter.get_total_flops()
    return {"params": sum(p.numel() for p in model.parameters()), "flops": flops, "macs": flops / 2}


# ---------------------------------------------------------------------------------------------------------------
# Helpers for the notebook's tables
# ---------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruction_losses(mae: mae_lib.MaskedAutoencoder, data: FERDataset, mask_ratio: float, *,
                          batch_size: int = 256, device=None, seed: int = 0) -> torch.Tensor:
    """Per-image MAE loss (masked patches only, normalized pixels) on every row of `data` at `mask_ratio`, with
    seeded masks: the same seed gives every ratio the same noise, so the kept patches at 90 % are a subset of
    those kept at 75 % (paired by image across ratios)."""
    device = engine.resolve_device(device)
    mae = mae.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    out = []
    for index in torch.arange(len(data)).split(batch_size):
        x = engine.batch_input(data, index, device)
        noise = torch.rand(len(index), mae.num_patches, generator=g).to(device)
        res = mae(x, mask_ratio, noise=noise)
        target = mae_lib.patchify(x, mae.patch_size)
        out.append(mae_lib.masked_patch_loss_per_image(res.pred, target, res.mask, mae.norm_pix_loss).cpu())
    return torch.cat(out)


def kfold_accuracies(train: FERDataset, pool: FERDataset, settings: dict, *, k: int = 5, seed: int = 0,
                     boxes: torch.Tensor | None = None, mae_runs: dict | None = None, **experiment_kwargs):
    """SSFER's Table 5 protocol on `train`: k folds (subject-independent when identities are known: no person in
    two folds), each setting trained on k - 1 folds (its own labeled fraction of them) and tested on the held-out
    fold. Returns a DataFrame (fold, setting, accuracy, n_test). The MAE checkpoints are shared (`mae_runs`)."""
    import pandas as pd

    folds = splits.kfold_indices(train.labels, k=k, seed=seed, groups=train.identities)
    rows = []
    for f, (tr, te) in enumerate(folds):
        exp = SSFERExperiment(train.subset(tr), train.subset(te), pool, mae_runs=mae_runs,
                              boxes=boxes[tr] if boxes is not None else None, **experiment_kwargs)
        for name, setting in settings.items():
            rows.append({"fold": f + 1, "setting": name, "accuracy": exp.run(setting, seed).accuracy,
                         "n_test": len(te)})
    return pd.DataFrame(rows)


def lr_search(experiment: SSFERExperiment, setting: Setting, seed: int, *, n_trials: int, low: float = 1e-4,
              high: float = 1e-2, sampler_seed: int = 0):
    """Table 16 with a maintained optimizer library: Optuna's TPE sampler searches the supervised stage's peak
    learning rate (log-uniform in [low, high]) for `n_trials` trials, each trial the supervised stage of `setting`
    scored by `experiment` (whose test set should be a validation split). TPE's first 10 trials are its random
    start-up, so a budget of 10 or fewer is a seeded random search. Returns the study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        lr = trial.suggest_float("lr", low, high, log=True)
        return experiment.run(replace(setting.supervised, lr=lr), seed).accuracy

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=sampler_seed))
    study.optimize(objective, n_trials=n_trials)
    return study


# The paper's numbers, per dataset, for the scorecard's "paper" column. Keys: the claim; values per dataset:
# (text). RAF-DB and FERPlus at 10 % labels, AffectNet-7 at 5 % (the paper's middle settings); SynthFER shows the
# RAF-DB numbers, labelled as such.
PAPER = {
    "mae_vs_scratch": {"rafdb": "MAE faces 91.19 vs supervised ImageNet 86.47 (Table 11)",
                       "ferplus": "MAE faces 88.73 vs supervised ImageNet 86.63 (Table 11)",
                       "affectnet": "MAE faces 66.62 vs supervised ImageNet 60.14 (Table 11)"},
    "facemix_vs_mixup": {"rafdb": "85.07 vs 84.35", "ferplus": "83.95 vs 83.12", "affectnet": "64.02 vs 63.94"},
    "kappa_iou_best": {"rafdb": "IoU 85.07; FSIM 83.64, SSIM 83.47, PSNR 83.14",
                       "ferplus": "IoU 83.96; FSIM 82.71, SSIM 82.43, PSNR 82.25",
                       "affectnet": "IoU 64.03; FSIM 63.06, SSIM 62.43, PSNR 62.23"},
    "l4_best": {"rafdb": "L4 85.07; L1 83.02, L2 82.89, L3 82.56", "ferplus": "L4 83.95; L1 82.47, L3 81.81, L2 81.80",
                "affectnet": "L4 64.02; L1 62.17, L3 61.62, L2 61.37"},
    "ema_vs_fixmatch": {"rafdb": "85.07 vs 75.26", "ferplus": "83.95 vs 79.63", "affectnet": "64.02 vs 49.48"},
    "full_vs_baseline": {"rafdb": "85.07 vs 83.37 (Table 10)", "ferplus": "83.95 vs 82.60 (Table 10)",
                         "affectnet": "64.02 vs 63.11 (Table 10)"},
    "ema_over_facemix": {"rafdb": "85.07 vs 84.41 (Table 10)", "ferplus": "83.95 vs 83.27 (Table 10)",
                         "affectnet": "64.02 vs 63.91 (Table 10)"},
    "noise_decline": {"rafdb": "decline 0→30 %: SSFER-5 % 6.23 vs SCN without re-weighting 8.94 (Table 8)",
                      "ferplus": "decline 0→30 %: SSFER-5 % 5.55 vs SCN without re-weighting 7.46 (Table 8)",
                      "affectnet": "-"},
    "fgsm_focused": {"rafdb": "ε = 0.02: focused 32.46 vs unfocused 47.03 (SSFER-25 %)",
                     "ferplus": "ε = 0.02: focused 33.75 vs unfocused 46.54 (SSFER-25 %)",
                     "affectnet": "ε = 0.02: focused 43.14 vs unfocused 49.77 (SSFER-10 %)"},
    "fractions": {"rafdb": "5 / 10 / 25 %: 80.96 / 85.07 / 88.23", "ferplus": "5 / 10 / 25 %: 81.77 / 83.95 / 85.82",
                  "affectnet": "1 / 5 / 10 %: 59.08 / 64.02 / 65.37"},
    "per_class": {"rafdb": "10 labels/class: SSFER 47.26 vs FixMatch 63.25; 100: 75.29 vs 64.34 (Table 3)",
                  "ferplus": "-", "affectnet": "10 labels/class: SSFER 32.85 vs FixMatch 30.08 (Table 3)"},
    "kfold": {"rafdb": "SSFER-25 % 86.99 vs ViT-Base 100 % 85.30 (5-fold)",
              "ferplus": "SSFER-25 % 85.15 vs ViT-Base 100 % 85.14 (5-fold)", "affectnet": "-"},
    "other_task": {"any": "Adience gender: SSFER-25 % 82.00 vs ViT-Base 100 % 80.57 (Table 9)"},
    "lr_search": {"rafdb": "GWO-tuned 85.36 vs 85.07", "ferplus": "GWO-tuned 83.90 vs 83.95",
                  "affectnet": "GWO-tuned 64.33 vs 64.02"},
    "params": {"any": "ViT-Base: 85.7 M parameters, 16.9 GFLOPs (Table 6)"},
    "confusion": {"rafdb": "neutral 95.70, happiness 88.53, sadness 90.38 % (Fig. 7, 25 % labels)",
                  "ferplus": "-", "affectnet": "-"},
    "mask_ratio": {"any": "90 % fails on expression regions, 75 % succeeds (Fig. 3)"},
}


def paper_number(key: str, dataset: str) -> str:
    """The paper's number for claim `key` on `dataset`; SynthFER and AffectNet-8 show the nearest dataset's
    number with its name (RAF-DB, AffectNet-7), anything else "-"."""
    entry = PAPER[key]
    if "any" in entry:
        return entry["any"]
    name = dataset.lower()
    if name in entry:
        return entry[name]
    if name == "synthfer":
        return f"RAF-DB: {entry['rafdb']}"
    if name == "affectnet8" and entry.get("affectnet", "-") != "-":
        return f"AffectNet-7: {entry['affectnet']}"
    return "-"
