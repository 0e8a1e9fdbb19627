"""Hu et al.'s end-to-end network (Fig. 2): a classifier branch (ResNet-18 + ARM, L_FER), supervised contrastive
learning against a labeled MoCo queue (L_sup, Eq. 2) and CUEM relabeling (Fig. 3), trained with

    L_total = L_FER + lambda * L_sup                                                       (Eq. 3)
    lambda  = 1 - epoch / alpha  for 1 <= epoch <= alpha;   lambda = beta  for alpha < epoch   (Eq. 4)

Adam with weight decay 1e-4, learning rate 1e-3 decayed by 10 % after every epoch (Sec. III-B).

What one training step does (`train_scl`), for a batch of images with their current labels y:

1. two stochastic augmentations of the batch: x^q and x^k;
2. query side (trained): the trunk's feature map of x^q feeds the top branch (ARM, classifier: logits) and, through
   global average pooling and the 3-layer projection MLP, the query z^q (128-d, L2-normalized);
3. key side (no gradients): the momentum encoder (MoCo; a copy of trunk and projection updated by
   theta_k <- m theta_k + (1 - m) theta_q, `fernb.losses.moco.momentum_update`) maps x^k to the key z^k;
   under torchrun the keys (and labels) of all ranks are gathered first, so every rank holds the same queue;
4. CUEM (once the queue is full and training is past `cuem_start`): S_cos of each z^q against the queue as it was
   before this batch, u = S_max - S_label, relabel where u > theta (`fernb.methods.cuem`); the new label is written
   into the working label vector (it persists, as in SCN and DRM) and every change into a `RelabelLog`;
5. the keys enter the queue with the (possibly corrected) labels; L_sup of z^q against the queue (Eq. 2), L_FER =
   cross-entropy of the logits against y'; one optimizer step on L_total (Eq. 3).

Choices the paper leaves open, and ours:
* The top branch and the query branch share the trunk and see the same view x^q (one forward pass; the paper's Fig. 2
  draws two branches on one backbone, and only a shared trunk lets L_sup improve the classifier).
* lambda is evaluated at every step, at the step's position in *paper epochs*: a run of E epochs is mapped onto the
  paper's 100, so alpha = 30 means "the first 30 % of training" whatever E is (`paper_epoch`). Before the paper's
  epoch 1 (Eq. 4 starts there) the same line 1 - epoch / alpha continues, from 1.
* The momentum m is not given (MoCo v2: 0.999). `momentum=None` keeps MoCo's lag as a share of training: 1 / (1 - m)
  = 1,000 steps is 21 % of the paper's 4,800 steps (RAF-DB, 100 epochs of 12,271 images at batch 256), so a run of
  T steps gets m = 1 - 1 / (0.21 T) (clipped to [0.9, 0.999]).
* The key encoder's BatchNorm runs on the key batch (MoCo without "shuffling BN", which needs several devices).
* L_sup is the mean of Eq. 2 over the batch, not its sum, so lambda weighs two means.
* CUEM starts at `cuem_start` (0.3: the end of the paper's lambda ramp, alpha = 30 of 100 epochs) and only with a
  full queue: before that the queue's class means come from an untrained, changing encoder.
* "+CUEM without SCL" (Table II) keeps the key encoder and queue but with lambda = 0: CUEM then reads the untrained
  projection of the CE-trained trunk.
* Baseline rows (no SCL, no CUEM) train through the same loop (same batches, augmentation, optimizer, decay), with no
  key branch at all.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .. import distributed
from ..data import augment as aug
from ..data.dataset import FERDataset
from ..engine import autocast, batch_input, make_optimizer, make_scaler, optimizer_step, resolve_device
from ..losses.moco import LabeledQueue, gather_across_ranks, momentum_update, supcon_queue_loss
from ..models import ProjectionHead
from .cuem import class_similarity, cuem_relabel
from .drm import RelabelLog

__all__ = ["lambda_schedule", "paper_epoch", "scaled_momentum", "SCLNet", "SCLResult", "train_scl",
           "query_embeddings", "evaluate_batch_size", "run_job", "relabel_audit", "rebuild", "load_shared_weights",
           "PAPER_EPOCHS"]

PAPER_EPOCHS = 100           # Sec. III-B: "trained for 100 epochs"
_MOCO_LAG_SHARE = 1000 / 4800


def lambda_schedule(epoch: float, alpha: float = 30.0, beta: float = 1e-4) -> float:
    """Eq. 4: lambda = 1 - epoch / alpha while epoch <= alpha, beta afterwards (epoch in paper epochs, may be
    fractional). lambda(1) = 1 - 1/alpha, lambda(alpha) = 0, lambda(alpha + anything) = beta."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return 1.0 - epoch / alpha if epoch <= alpha else float(beta)


def paper_epoch(step: int, total_steps: int, paper_epochs: int = PAPER_EPOCHS) -> float:
    """The position of (0-based) `step` of `total_steps` in the paper's epochs: paper_epochs * (step + 1) / total."""
    return paper_epochs * (step + 1) / max(1, total_steps)


def scaled_momentum(total_steps: int) -> float:
    """MoCo's m = 0.999 rescaled to a run of `total_steps` (see the module docstring)."""
    return float(min(0.999, max(0.9, 1.0 - 1.0 / (_MOCO_LAG_SHARE * max(1, total_steps)))))


class SCLNet(nn.Module):
    """The trained query side (the FER model and the projection MLP g_q) and the momentum key side (copies of the
    FER model and of g_q), plus the labeled queue.

    `model` is any `fernb.models.create` CNN whose `forward_features` gives a (B, C, h, w) map (ARMNet or a timm
    ResNet); the contrastive branches read its global average pool r (C-d), projected to 128-d by a 3-layer MLP."""

    def __init__(self, model: nn.Module, queue_size: int = 8192, projection_dim: int = 128,
                 temperature: float = 0.1, key_branch: bool = True):
        super().__init__()
        self.model = model
        channels = getattr(model, "trunk_channels", None) or model.num_features
        self.projection = ProjectionHead(channels, projection_dim, hidden_dim=channels, num_layers=3)
        self.temperature = temperature
        self.key_branch = key_branch
        if key_branch:
            self.key_model = copy.deepcopy(model)
            self.key_projection = copy.deepcopy(self.projection)
            for p in (*self.key_model.parameters(), *self.key_projection.parameters()):
                p.requires_grad_(False)
            self.queue = LabeledQueue(queue_size, projection_dim)

    @staticmethod
    def _gap(fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))

    def query(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the top branch, z^q) from one view; trained."""
        fmap = self.model.forward_features(x)
        return self.model.forward_head(fmap), self.projection(self._gap(fmap))

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        """z^k from the momentum encoder (no gradients)."""
        return self.key_projection(self._gap(self.key_model.forward_features(x)))

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        momentum_update(self.model, self.key_model, momentum)
        momentum_update(self.projection, self.key_projection, momentum)

    def train(self, mode: bool = True):
        super().train(mode)
        return self


class _QueryStep(nn.Module):
    """The trained part of one step as a module, so DistributedDataParallel sees the model and g_q together."""

    def __init__(self, net: SCLNet):
        super().__init__()
        self.model, self.projection = net.model, net.projection
        self._net = [net]                     # not a submodule (its key side must stay out of DDP)

    def forward(self, x):
        return self._net[0].query(x)


@dataclass
class SCLResult:
    """What `train_scl` returns.

    model: the trained FER model (top branch); net: the `SCLNet` (projection heads, key encoder, queue).
    labels / initial_labels: the working labels after training / as given. log: every CUEM relabel decision.
    history: per epoch: loss, ce, sup, lambda (at the epoch's last step), lr, train_acc (vs the labels in use),
    val_acc, val_similarity_acc (argmax of S_cos for val queries vs val labels), relabeled, queue_filled,
    queue_counts (entries per class at the epoch's end), seconds; and momentum, queue_size, cuem_start_step.
    """
    model: nn.Module
    net: SCLNet
    labels: torch.Tensor
    initial_labels: torch.Tensor
    log: RelabelLog
    history: dict = field(default_factory=dict)

    def relabel_stats(self):
        """Per-epoch precision / recall / noise of the CUEM relabels (`RelabelLog.precision_recall`)."""
        return self.log.precision_recall()


@torch.no_grad()
def query_embeddings(net: SCLNet, data: FERDataset, batch_size: int = 256, device=None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), z^q (N, 128)) of every row of `data` in eval mode without augmentation, on the CPU."""
    device = resolve_device(device)
    net.to(device)
    was = net.training
    net.eval()
    logits, zs = [], []
    for index in torch.arange(len(data), device=data.device).split(batch_size):
        x = batch_input(data, index, device)
        with autocast(device):
            out, z = net.query(x)
        logits.append(out.float())
        zs.append(z.float())
    net.train(was)
    return torch.cat(logits).cpu(), torch.cat(zs).cpu()


@torch.no_grad()
def evaluate_batch_size(model: nn.Module, data: FERDataset, batch_size: int, device=None,
                        target: str = "labels") -> float:
    """Test accuracy when `data` is fed in consecutive batches of `batch_size` (1 = one face at a time), in eval
    mode: with ARM's batch affinity (`affinity_eval="batch"`) the answer depends on it, with the running affinity
    it does not."""
    device = resolve_device(device)
    model.to(device).eval()
    truth = getattr(data, target).cpu()
    correct = torch.zeros((), device=device)
    for index in torch.arange(len(data), device=data.device).split(batch_size):
        x = batch_input(data, index, device)
        with autocast(device):
            pred = model(x).argmax(1)
        correct += (pred.cpu() == truth[index.cpu()]).sum().to(device)
    return float(correct) / len(data)


def train_scl(model: nn.Module, train: FERDataset, val: FERDataset | None = None, *, epochs: int = 10,
              batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4, lr_decay: float = 0.9,
              use_scl: bool = True, use_cuem: bool = True, alpha: float = 30.0, beta: float = 1e-4,
              paper_epochs: int = PAPER_EPOCHS, theta: float = 0.1, queue_size: int = 8192,
              temperature: float = 0.1, momentum: float | None = None, projection_dim: int = 128,
              cuem_start: float = 0.3, augment="weak", device=None, seed: int = 0, progress: bool = True,
              desc: str = "SCL", decay_in_paper_epochs: bool = False) -> SCLResult:
    """Train `model` (in place) on the labeled rows of `train` with L_FER + lambda L_sup and CUEM (see the module
    docstring for the step). `use_scl=False, use_cuem=False` is the CE baseline through the same loop.

    alpha and beta are in the paper's units (epochs of `paper_epochs`, mapped onto this run's `epochs`);
    `queue_size` is capped at the number of labeled training rows (a queue larger than the data would hold stale
    copies of the same images); `momentum=None` scales MoCo's 0.999 to the run (`scaled_momentum`);
    `lr_decay` is the per-epoch factor of the learning rate (the paper's 10 % decay: 0.9); with
    `decay_in_paper_epochs` it is applied per *paper* epoch, mapped onto the run like alpha (the learning rate of
    step t is lr * lr_decay ** floor(paper epoch before t)), so a short run ends where the paper's 100 epochs end.

    Under torchrun (a process group of more than one process) the step runs in DistributedDataParallel:
    `batch_size` is the global batch, every rank draws the same seeded permutation and takes its shard; keys,
    labels and relabel decisions are gathered across ranks, so every rank keeps the same queue and labels.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    labeled = (train.labels >= 0).nonzero().flatten().cpu()
    if len(labeled) < len(train):
        raise ValueError(f"{train.name}: train_scl trains on labeled data, but some labels are -1")
    device = resolve_device(device)
    world = distributed.world_size()
    rank = distributed.rank() if world > 1 else 0
    n = len(train)
    batch_size = min(batch_size, n)
    if world > 1:
        if batch_size < world:
            raise ValueError(f"the global batch ({batch_size}) must hold at least one row per rank ({world})")
        batch_size -= batch_size % world
    local = batch_size // world
    steps_per_epoch = max(1, n // batch_size)
    total_steps = epochs * steps_per_epoch
    key_branch = use_scl or use_cuem
    queue_size = min(int(queue_size), n)
    m = scaled_momentum(total_steps) if momentum is None else float(momentum)
    cuem_start_step = int(math.ceil(cuem_start * total_steps))

    torch.manual_seed(seed)                       # the projection heads' initialization
    net = SCLNet(model, queue_size=queue_size, projection_dim=projection_dim, temperature=temperature,
                 key_branch=key_branch)
    net.to(device)
    model.to(memory_format=torch.channels_last)
    if key_branch:
        net.key_model.to(memory_format=torch.channels_last)
    params = [p for p in (*model.parameters(), *(net.projection.parameters() if use_scl else ()))
              if p.requires_grad]
    optimizer = make_optimizer(params, name="adam", lr=lr, weight_decay=weight_decay, device=device)
    if decay_in_paper_epochs:                     # stepped every optimizer step
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: lr_decay ** math.floor(paper_epochs * t / max(1, total_steps) + 1e-9))
    else:                                         # stepped every epoch
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_decay)
    scaler = make_scaler(device)
    runner = _QueryStep(net)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        runner = DistributedDataParallel(runner, find_unused_parameters=not use_scl,
                                         device_ids=[device.index if device.index is not None
                                                     else torch.cuda.current_device()]
                                         if device.type == "cuda" else None)
    augment = aug.get(augment)

    data = train.to(device)
    initial_labels = train.labels.detach().clone().cpu()
    labels = data.labels.clone()                  # the working labels, relabeled in place
    clean = data.clean_labels
    log = RelabelLog(initial_labels, train.clean_labels)
    history: dict = {k: [] for k in ("loss", "ce", "sup", "lambda", "lr", "train_acc", "val_acc",
                                     "val_similarity_acc", "relabeled", "queue_filled", "queue_counts",
                                     "seconds")}
    history.update(momentum=m, queue_size=queue_size if key_branch else 0, cuem_start_step=cuem_start_step,
                   steps_per_epoch=steps_per_epoch, world_size=world)

    from tqdm.auto import tqdm
    step = 0
    lam = 0.0
    sup_on = [0, 0]                               # steps with lambda > beta; of those, with a full queue
    queue_full_step = None
    bar = tqdm(range(epochs), desc=desc, disable=not progress or rank != 0, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        torch.manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n)[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size)
        if world > 1:
            torch.manual_seed(seed * 100_003 + epoch + 1_000_003 * (rank + 1))
            order = order[:, rank * local:(rank + 1) * local]
        order = order.to(device)                  # one copy per epoch
        sums = torch.zeros(5, device=device)      # loss, ce, sup, correct, relabeled: read once per epoch
        relabeling_epoch = False
        for index in order:
            lam = lambda_schedule(paper_epoch(step, total_steps, paper_epochs), alpha, beta) if use_scl else 0.0
            x_q = batch_input(data, index, device, augment)
            y = labels[index]
            with autocast(device):
                logits, z_q = runner(x_q)
            z_q = z_q.float()
            sup = torch.zeros((), device=device)
            if key_branch:
                with torch.no_grad():
                    net.momentum_update(m)
                    x_k = batch_input(data, index, device, augment)
                    with autocast(device):
                        z_k = net.key(x_k).float()
                    if use_cuem and step >= cuem_start_step and net.queue.full:
                        if not relabeling_epoch:
                            log.begin_epoch(epoch)
                            relabeling_epoch = True
                        sim = class_similarity(z_q.detach(), net.queue.keys, net.queue.labels, train.num_classes)
                        y_new, changed, _ = cuem_relabel(sim, y, theta)
                        sums[4] += changed.sum()
                    else:
                        y_new = y
                    all_index = gather_across_ranks(index)
                    all_new = gather_across_ranks(y_new)
                    if relabeling_epoch:
                        log.record(epoch, all_index, labels[all_index], all_new,
                                   clean[all_index] if clean is not None else None)
                    labels[all_index] = all_new
                    net.queue.enqueue(gather_across_ranks(z_k), all_new)
                    y = y_new
                if use_scl:
                    sup = supcon_queue_loss(z_q, y, net.queue.keys, net.queue.labels, temperature)
                    if lam > beta:                # L_sup on (Eq. 4's ramp): is the queue it reads full yet?
                        sup_on[0] += 1
                        sup_on[1] += int(net.queue.full)
                if queue_full_step is None and net.queue.full:
                    queue_full_step = step
            ce = F.cross_entropy(logits.float(), y)
            loss = ce + lam * sup
            optimizer_step(loss, optimizer, scaler)
            if decay_in_paper_epochs:
                scheduler.step()
            with torch.no_grad():
                sums[:3] += torch.stack([loss.detach(), ce.detach(), sup.detach()]) * len(index)
                sums[3] += (logits.detach().argmax(1) == y).sum()
            step += 1
        history["lr"].append(optimizer.param_groups[0]["lr"])
        if not decay_in_paper_epochs:
            scheduler.step()
        totals = distributed.all_reduce_sum(sums.clone()) if world > 1 else sums
        seen = steps_per_epoch * batch_size
        loss_e, ce_e, sup_e, correct_e, relabeled_e = totals.tolist()
        history["loss"].append(loss_e / seen)
        history["ce"].append(ce_e / seen)
        history["sup"].append(sup_e / seen)
        history["train_acc"].append(correct_e / seen)
        history["relabeled"].append(int(relabeled_e))
        history["lambda"].append(lam)
        if key_branch:
            history["queue_filled"].append(len(net.queue))
            history["queue_counts"].append(net.queue.class_counts(train.num_classes).tolist())
        else:
            history["queue_filled"].append(0)
            history["queue_counts"].append([])
        val_acc, sim_acc = math.nan, math.nan
        if val is not None:
            val_logits, val_z = query_embeddings(net, val, device=device)
            val_acc = float((val_logits.argmax(1) == val.labels.cpu()).float().mean())
            if key_branch and len(net.queue):
                sim = class_similarity(val_z.to(device), net.queue.keys, net.queue.labels, val.num_classes)
                sim_acc = float((torch.nan_to_num(sim, nan=-math.inf).argmax(1).cpu() == val.labels.cpu())
                                .float().mean())
        history["val_acc"].append(val_acc)
        history["val_similarity_acc"].append(sim_acc)
        history["seconds"].append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", val=f"{val_acc:.3f}", relabeled=history["relabeled"][-1])
    history.update(sup_on_steps=sup_on[0], sup_on_full_queue_steps=sup_on[1], queue_full_step=queue_full_step,
                   total_steps=total_steps)
    net.eval()
    model.eval()
    return SCLResult(model=model, net=net, labels=labels.detach().cpu().clone(), initial_labels=initial_labels,
                     log=log, history=history)


# ---- one experiment run (a row of Table II, a point of Fig. 5), for `fernb.parallel.run_many` ------------------------
def run_job(*, train: FERDataset, test: FERDataset, val: FERDataset | None = None, model_name: str,
            img_size: int, seed: int, model_kwargs: dict | None = None, keep_state: bool = False,
            similarity_on_train: bool = False, embed_test: bool = False, batch_eval: tuple = (),
            init_state: dict | None = None, keep_model_state: bool = False, device=None, **train_kwargs) -> dict:
    """Build `model_name` with seed `seed`, train it with `train_scl(**train_kwargs)` on `train` (already noisy, if
    the experiment wants noise), evaluate on `test`; a module-level function with picklable arguments and result,
    so `fernb.parallel.run_many` can run many of them side by side on a GPU.

    Returns a dict: accuracy, mean_class_accuracy, correct (per test image, uint8), predictions, confusion,
    history, relabel (the `RelabelLog.precision_recall` frame), the whole run's audit against `train.clean_labels`
    (`relabel_audit`: relabeled, relabel_correct, relabel_precision, relabel_recall, relabel_broken, noise_before,
    noise_after), seconds; and on request: state (the SCLNet state_dict: model, projections, queue) and labels
    (`keep_state`), similarity (S_cos of every training image against the final queue, eval mode, for the u
    histograms and the theta curves; `similarity_on_train`), embeddings (the trunk's pooled features r of the test
    images, `embed_test`), batch_accuracy {(affinity mode, batch size): accuracy} (`batch_eval`, ARM models only),
    model_state (the classifier's own state_dict, `keep_model_state`: a warm start for other runs).

    `init_state` starts the model from a classifier state_dict (a shared warm start) instead of random weights
    (`load_shared_weights`: ARM's pooling parameters may be absent from it, nothing else).
    """
    from .. import engine, models
    from .cuem import queue_similarity

    device = resolve_device(device)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = models.create(model_name, train.num_classes, in_chans=train.channels, img_size=img_size,
                          **(model_kwargs or {}))
    if init_state is not None:
        load_shared_weights(model, init_state)
    result = train_scl(model, train, val, device=device, seed=seed, **train_kwargs)
    metrics = engine.evaluate(model, test, device=device)
    truth = test.labels.cpu()
    out = {"accuracy": metrics["accuracy"], "mean_class_accuracy": metrics["mean_class_accuracy"],
           "correct": (metrics["predictions"] == truth).to(torch.uint8), "predictions": metrics["predictions"],
           "confusion": metrics["confusion"], "history": result.history, "relabel": result.relabel_stats()}
    out.update(relabel_audit(result.log.tensors(), result.initial_labels, result.labels, train.clean_labels))
    if similarity_on_train and hasattr(result.net, "queue"):
        _, z = query_embeddings(result.net, train, device=device)
        out["similarity"] = queue_similarity(z.to(device), result.net.queue.keys, result.net.queue.labels,
                                             train.num_classes)
    if embed_test:
        out["embeddings"] = _pooled_trunk_features(model, test, device)
    if batch_eval and hasattr(model, "set_affinity_eval"):
        accs = {}
        for mode in ("running", "batch"):
            model.set_affinity_eval(mode)
            for bs in batch_eval:
                accs[(mode, int(bs))] = evaluate_batch_size(model, test, int(bs), device=device)
        model.set_affinity_eval("running")
        out["batch_accuracy"] = accs
    if keep_model_state:
        out["model_state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if keep_state:
        out["state"] = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in result.net.state_dict().items()}
        out["labels"] = result.labels
    out["seconds"] = time.perf_counter() - t0
    return out


def relabel_audit(records: dict, initial_labels: torch.Tensor, final_labels: torch.Tensor,
                  clean_labels: torch.Tensor | None) -> dict:
    """CUEM's label changes over a whole run against the clean labels (`records`: `RelabelLog.tensors()`).

    relabeled: every change (a label changed twice counts twice); relabel_correct: changes whose new label is the
    clean one; relabel_precision: correct / changes with a known clean label (NaN without any); relabel_recall: the
    share of the training images whose given label was wrong that end the run with the right label;
    relabel_broken: images whose given label was right and ends wrong; noise_before / noise_after: the share of
    wrong labels as given / at the end. Recall, broken and noise are NaN without clean labels (recall also without
    a wrong label)."""
    known = records["clean"] >= 0
    n_known = int(known.sum())
    n_ok = int((records["new"][known] == records["clean"][known]).sum())
    out = {"relabeled": int(records["index"].numel()), "relabel_correct": n_ok,
           "relabel_precision": n_ok / n_known if n_known else math.nan}
    if clean_labels is None:
        return {**out, "relabel_recall": math.nan, "relabel_broken": math.nan, "noise_before": math.nan,
                "noise_after": math.nan}
    clean = clean_labels.reshape(-1).cpu().long()
    wrong_before = initial_labels.reshape(-1).cpu().long() != clean
    wrong_after = final_labels.reshape(-1).cpu().long() != clean
    n_wrong = int(wrong_before.sum())
    return {**out, "relabel_recall": int((wrong_before & ~wrong_after).sum()) / n_wrong if n_wrong else math.nan,
            "relabel_broken": int((~wrong_before & wrong_after).sum()),
            "noise_before": float(wrong_before.float().mean()), "noise_after": float(wrong_after.float().mean())}


def load_shared_weights(model: nn.Module, state: dict) -> None:
    """Load `state` into `model`; keys only one side has may belong to the pooling layer alone (ARM's buffers or
    parameters), anything else is an error, as is a shape that differs (a different trunk or classifier: plain
    pooling's classifier reads 256 values, ARM's (2h - 3)^2, so they cannot share one)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    odd = [k for k in missing + extra if not k.startswith(("pool", "arm"))]
    if odd:
        raise ValueError(f"warm start does not fit this model: {odd[:5]}")
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"warm start shapes differ from the model's: {wrong[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


@torch.no_grad()
def _pooled_trunk_features(model: nn.Module, data: FERDataset, device, batch_size: int = 256) -> torch.Tensor:
    """The global-average-pooled trunk features r (what the contrastive branches read) of every row, on the CPU."""
    model.to(device).eval()
    feats = []
    for index in torch.arange(len(data), device=data.device).split(batch_size):
        x = batch_input(data, index, device)
        with autocast(device):
            feats.append(model.forward_features(x).float().mean(dim=(2, 3)))
    return torch.cat(feats).cpu()


def rebuild(state: dict, model_name: str, num_classes: int, in_chans: int, img_size: int,
            model_kwargs: dict | None = None, queue_size: int | None = None, projection_dim: int = 128) -> SCLNet:
    """The `SCLNet` (model, projections, queue) of a `run_job(keep_state=True)` result, in eval mode on the CPU."""
    from .. import models

    model = models.create(model_name, num_classes, in_chans=in_chans, img_size=img_size, **(model_kwargs or {}))
    key_branch = any(k.startswith("queue.") for k in state)
    size = queue_size or (int(state["queue.labels"].numel()) if key_branch else 1)
    net = SCLNet(model, queue_size=size, projection_dim=projection_dim, key_branch=key_branch)
    net.load_state_dict(state)
    return net.eval()
