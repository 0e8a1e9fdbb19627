"""Hu et al. (SCL + CUEM): the labeled MoCo queue, Eq. 2 against a hand computation, the momentum key encoder,
CUEM on crafted similarities, the lambda schedule of Eq. 4 at its boundaries, a tiny end-to-end run with its
relabel audit, and the key gather across two gloo processes."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from fernb import models
from fernb.data.dataset import FERDataset
from fernb.losses import LabeledQueue, gather_across_ranks, momentum_update, supcon_queue_loss
from fernb.methods.cuem import (class_similarity, cuem_relabel, relabel_curve, similarity_accuracy,
                                uncertainty)
from fernb.methods.scl import SCLNet, lambda_schedule, paper_epoch, scaled_momentum, train_scl


# ---- the queue -----------------------------------------------------------------------------------------------------
def test_queue_fills_then_wraps_with_its_labels():
    q = LabeledQueue(5, 2)
    assert len(q) == 0 and not q.full and not q.valid().any()
    keys = torch.arange(14, dtype=torch.float32).view(7, 2)           # key i = (2i, 2i + 1), label i
    q.enqueue(keys[:3], torch.tensor([0, 1, 2]))
    assert len(q) == 3 and q.ptr == 3 and q.labels.tolist() == [0, 1, 2, -1, -1]
    q.enqueue(keys[3:], torch.tensor([3, 4, 5, 6]))                  # wraps: slots 3, 4, 0, 1
    assert q.full and q.ptr == 2 and q.total == 7
    assert q.labels.tolist() == [5, 6, 2, 3, 4]
    assert torch.equal(q.keys[0], keys[5]) and torch.equal(q.keys[1], keys[6])   # each key stays with its label
    k, lab = q.contents()                                            # oldest first
    assert lab.tolist() == [2, 3, 4, 5, 6] and torch.equal(k, keys[2:])
    assert q.class_counts(8).tolist() == [0, 0, 1, 1, 1, 1, 1, 0]


def test_queue_keeps_the_last_k_of_an_oversized_batch_and_round_trips_a_state_dict():
    q = LabeledQueue(3, 1)
    q.enqueue(torch.arange(5.0).view(5, 1), torch.arange(5))
    assert q.total == 5 and sorted(q.labels.tolist()) == [2, 3, 4]
    assert q.contents()[1].tolist() == [2, 3, 4]
    r = LabeledQueue(3, 1)
    r.load_state_dict(q.state_dict())
    assert r.ptr == q.ptr and r.total == q.total and torch.equal(r.labels, q.labels)


# ---- Eq. 2 ---------------------------------------------------------------------------------------------------------
def test_queue_loss_matches_a_hand_computation():
    """Two queries, a queue of 4 keys (one empty slot) in 2-d, tau = 0.5.

    q1 = (1, 0), label 0; q2 = (0, 1), label 1. Queue: k1 = (1, 0) label 0, k2 = (0.6, 0.8) label 0,
    k3 = (0, 1) label 1, k4 = empty (-1). Similarities / tau:
      q1: s(k1) = 2, s(k2) = 1.2, s(k3) = 0    -> positives k1, k2; negative k3
      q2: s(k1) = 0, s(k2) = 1.6, s(k3) = 2    -> positive k3; negatives k1, k2
      L_1 = 1/2 [ -log(e^2 / (e^2 + e^0)) - log(e^1.2 / (e^1.2 + e^0)) ]
      L_2 = -log(e^2 / (e^2 + e^0 + e^1.6))
      L = (L_1 + L_2) / 2
    """
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    keys = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [5.0, 5.0]])
    qlab = torch.tensor([0, 0, 1, -1])
    l1 = 0.5 * (-math.log(math.e ** 2 / (math.e ** 2 + 1)) - math.log(math.e ** 1.2 / (math.e ** 1.2 + 1)))
    l2 = -math.log(math.e ** 2 / (math.e ** 2 + 1 + math.e ** 1.6))
    loss = supcon_queue_loss(queries, torch.tensor([0, 1]), keys, qlab, temperature=0.5)
    assert loss.item() == pytest.approx((l1 + l2) / 2, rel=1e-6)
    loss.backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0


def test_queue_loss_without_positives_is_zero_and_differentiable():
    q = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    loss = supcon_queue_loss(q, torch.tensor([2, 2, 2]), F.normalize(torch.randn(5, 4), dim=1),
                             torch.tensor([0, 1, 0, -1, -1]))
    assert loss.item() == 0.0
    loss.backward()
    # an anchor whose positives are the only queue entries (no negatives) has log(1) = 0 per positive
    only_pos = supcon_queue_loss(q, torch.tensor([0, 0, 0]), F.normalize(torch.randn(2, 4), dim=1),
                                 torch.tensor([0, 0]))
    assert only_pos.item() == pytest.approx(0.0, abs=1e-6)


# ---- the momentum key encoder ------------------------------------------------------------------------------------
def test_key_encoder_gets_no_gradients_and_follows_the_momentum_update():
    torch.manual_seed(0)
    net = SCLNet(models.create("resnet_mini_arm", 7, img_size=48), queue_size=16, projection_dim=8)
    assert all(not p.requires_grad for p in net.key_model.parameters())
    assert all(not p.requires_grad for p in net.key_projection.parameters())
    x = torch.randn(4, 3, 48, 48)
    logits, z_q = net.query(x)
    z_k = net.key(x)
    net.queue.enqueue(z_k, torch.tensor([0, 1, 0, 1]))
    loss = F.cross_entropy(logits, torch.tensor([0, 1, 0, 1])) + supcon_queue_loss(
        z_q, torch.tensor([0, 1, 0, 1]), net.queue.keys, net.queue.labels)
    loss.backward()
    assert all(p.grad is None for p in (*net.key_model.parameters(), *net.key_projection.parameters()))
    assert net.model.trunk.conv1.weight.grad is not None and net.projection.net[0].weight.grad is not None
    # change the query side, then check theta_k <- m theta_k + (1 - m) theta_q exactly
    with torch.no_grad():
        for p in (*net.model.parameters(), *net.projection.parameters()):
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in (*net.key_model.parameters(), *net.key_projection.parameters())]
    online = [p.clone() for p in (*net.model.parameters(), *net.projection.parameters())]
    net.momentum_update(0.9)
    after_k = list((*net.key_model.parameters(), *net.key_projection.parameters()))
    for b, o, a in zip(before_k, online, after_k):
        assert torch.allclose(a, 0.9 * b + 0.1 * o, atol=1e-6)
    momentum_update(net.model, net.key_model, 0.0)                    # m = 0 copies
    assert all(torch.equal(a, b) for a, b in zip(net.model.parameters(), net.key_model.parameters()))


def test_scaled_momentum_keeps_mocos_lag_share():
    assert scaled_momentum(4800) == pytest.approx(0.999)
    assert scaled_momentum(480) == pytest.approx(1 - 1 / 100)
    assert scaled_momentum(10) == 0.9                                 # clipped


# ---- CUEM ---------------------------------------------------------------------------------------------------------
def test_class_similarity_is_the_per_class_mean_cosine():
    keys = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])   # unnormalized on purpose
    qlab = torch.tensor([0, 0, 1, -1])                                        # last slot empty
    queries = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s = class_similarity(queries, keys, qlab, num_classes=3)
    assert torch.allclose(s[:, :2], torch.tensor([[1.0, 0.0], [2 ** -0.5, 2 ** -0.5]]), atol=1e-6)
    assert torch.isnan(s[:, 2]).all()                                # class 2 has no queue entry


def test_cuem_relabels_exactly_where_u_exceeds_theta():
    nan = float("nan")
    sim = torch.tensor([
        [0.9, 0.2, 0.1],     # label 0 is the best class: u = 0            -> keep
        [0.5, 0.3, 0.1],     # label 1, best 0: u = 0.2 > 0.1              -> relabel to 0
        [0.30, 0.40, 0.2],   # label 0, best 1: u = 0.1, not > 0.1         -> keep
        [0.1, 0.6, nan],     # label 2 has no queue entry: u undefined     -> keep
        [0.2, nan, 0.5],     # label 0, best 2 (class 1 empty): u = 0.3    -> relabel to 2
    ])
    labels = torch.tensor([0, 1, 0, 2, 0])
    u, best = uncertainty(sim, labels)
    assert torch.allclose(u[[0, 1, 2, 4]], torch.tensor([0.0, 0.2, 0.1, 0.3]), atol=1e-6)
    assert torch.isnan(u[3]) and best.tolist() == [0, 0, 1, 1, 2]
    new, changed, _ = cuem_relabel(sim, labels, theta=0.1)
    assert new.tolist() == [0, 0, 0, 2, 2] and changed.tolist() == [False, True, False, False, True]
    new0, _, _ = cuem_relabel(sim, labels, theta=0.0)
    assert new0.tolist() == [0, 0, 1, 2, 2]


def test_relabel_curve_precision_recall_on_a_crafted_set():
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.1], [0.2, 0.7], [0.6, 0.4]])
    labels = torch.tensor([1, 1, 1, 1])        # u = 0.8, 0.7, 0, 0.2
    clean = torch.tensor([0, 0, 1, 1])         # two noisy labels (rows 0, 1)
    curve = relabel_curve(sim, labels, clean, [0.1, 0.5, 0.9])
    row = curve.set_index("theta")
    assert row.loc[0.1, "relabeled"] == 3 and row.loc[0.1, "precision"] == pytest.approx(2 / 3)
    assert row.loc[0.1, "recall"] == 1.0 and row.loc[0.1, "broken"] == 1
    assert row.loc[0.5, "relabeled"] == 2 and row.loc[0.5, "precision"] == 1.0 and row.loc[0.5, "noise_after"] == 0
    assert row.loc[0.9, "relabeled"] == 0 and math.isnan(row.loc[0.9, "precision"])
    assert similarity_accuracy(sim, clean) == 0.75


# ---- Eq. 4 ---------------------------------------------------------------------------------------------------------
def test_lambda_schedule_at_the_boundaries_of_eq_4():
    assert lambda_schedule(1, 30, 1e-4) == pytest.approx(1 - 1 / 30)
    assert lambda_schedule(15, 30, 1e-4) == pytest.approx(0.5)
    assert lambda_schedule(30, 30, 1e-4) == 0.0                     # the last epoch of the ramp
    assert lambda_schedule(30.001, 30, 1e-4) == 1e-4                # then beta
    assert lambda_schedule(100, 30, 1e-4) == 1e-4
    assert lambda_schedule(0, 30, 1e-4) == 1.0
    with pytest.raises(ValueError):
        lambda_schedule(5, 0, 1e-4)
    # paper epochs from steps: the last step is epoch 100; alpha = 30 ends the ramp after 30 % of the steps
    assert paper_epoch(99, 100) == 100 and paper_epoch(29, 100) == 30
    lams = [lambda_schedule(paper_epoch(s, 10), 30, 1e-4) for s in range(10)]
    assert lams[:3] == pytest.approx([0.6667, 0.3333, 0.0], abs=1e-4) and lams[3:] == [1e-4] * 7


# ---- a tiny end-to-end run ----------------------------------------------------------------------------------------
def _tiny(n=48, size=48, seed=0, noise_rows=8):
    g = torch.Generator().manual_seed(seed)
    clean = torch.arange(n) % 3
    images = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    for i, c in enumerate(clean.tolist()):      # class = which third of the image is bright
        images[i, c, :, :] = 200
        images[i] += torch.randint(0, 40, (3, size, size), dtype=torch.uint8, generator=g)
    labels = clean.clone()
    labels[:noise_rows] = (labels[:noise_rows] + 1) % 3
    return FERDataset(images=images, labels=labels, classes=("neutral", "happiness", "sadness"),
                      clean_labels=clean, info={"source": "SynthFER"})


def test_train_scl_runs_records_every_relabel_and_keeps_the_key_side_frozen():
    data = _tiny()
    torch.manual_seed(0)
    model = models.create("resnet_mini_arm", 3, img_size=48)
    res = train_scl(model, data, data, epochs=4, batch_size=16, queue_size=32, theta=0.0, cuem_start=0.25,
                    progress=False, lr=3e-3, seed=0)
    h = res.history
    assert len(h["loss"]) == 4 and h["queue_filled"][-1] == 32 and sum(h["queue_counts"][-1]) == 32
    assert h["lambda"][0] > h["lambda"][-1] == 1e-4
    assert all(p.grad is None for p in res.net.key_model.parameters())
    # replaying the log from the given labels gives the final labels
    replay = res.initial_labels.clone()
    rec = res.log.tensors()
    for e in sorted(set(rec["epoch"].tolist())):
        sel = rec["epoch"] == e
        replay[rec["index"][sel]] = rec["new"][sel]
    assert torch.equal(replay, res.labels)
    assert sum(h["relabeled"]) == len(res.log) > 0
    stats = res.relabel_stats()
    assert {"precision", "recall", "noise_rate"} <= set(stats.columns)
    assert stats["noise_rate"].iloc[-1] == pytest.approx(float((res.labels != data.clean_labels).float().mean()))
    # a CE baseline through the same loop has no key branch and never relabels
    torch.manual_seed(0)
    base = train_scl(models.create("resnet_mini_arm", 3, img_size=48), data, epochs=1, batch_size=16,
                     use_scl=False, use_cuem=False, progress=False)
    assert not hasattr(base.net, "queue") and len(base.log) == 0 and torch.equal(base.labels, data.labels)


# ---- two processes on gloo -----------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # rank r holds keys filled with r and labels 10 r + i; rank 1 holds one key more (unequal sizes)
        keys = torch.full((2 + rank, 3), float(rank))
        labels = torch.arange(2 + rank) + 10 * rank
        queue = LabeledQueue(8, 3)
        queue.enqueue(gather_across_ranks(keys), gather_across_ranks(labels))
        # a tiny DDP training run: both ranks must end with the same queue and the same labels
        data = _tiny(n=32)
        torch.manual_seed(0)
        model = models.create("resnet_mini_arm", 3, img_size=48)
        res = train_scl(model, data, epochs=2, batch_size=8, queue_size=16, theta=0.0, cuem_start=0.5,
                        progress=False, seed=0)
        torch.save({"queue": queue.state_dict(), "train_queue": res.net.queue.state_dict(),
                    "labels": res.labels, "relabeled": len(res.log), "world": res.history["world_size"]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_keys_are_gathered_across_two_gloo_processes(tmp_path):
    port = _free_port()
    mp.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # rank 0's 2 keys, then rank 1's 3 keys, in rank order, on both ranks
    assert r0["queue"]["labels"].tolist() == [0, 1, 10, 11, 12, -1, -1, -1]
    assert r0["queue"]["keys"][:5, 0].tolist() == [0, 0, 1, 1, 1]
    for key in ("keys", "labels"):
        assert torch.equal(r0["queue"][key], r1["queue"][key])
        assert torch.equal(r0["train_queue"][key], r1["train_queue"][key])
    assert torch.equal(r0["labels"], r1["labels"]) and r0["relabeled"] == r1["relabeled"]
    assert r0["world"] == 2
    assert (r0["train_queue"]["labels"] >= 0).all()                 # 2 epochs x 4 steps x 8 keys fill 16 slots


# ---- one experiment run, and the network rebuilt from its state ----------------------------------------------------
def test_run_job_reports_the_audit_batch_accuracy_and_rebuilds_the_trained_net():
    from fernb.methods.scl import query_embeddings, rebuild, run_job

    data = _tiny()
    out = run_job(train=data, test=data, model_name="resnet_mini_arm", img_size=48, seed=0, epochs=2,
                  batch_size=16, queue_size=32, theta=0.0, cuem_start=0.25, progress=False, keep_state=True,
                  similarity_on_train=True, embed_test=True, batch_eval=(1, 16))
    n = len(data)
    assert out["correct"].shape == (n,) and out["accuracy"] == pytest.approx(float(out["correct"].float().mean()))
    assert out["noise_before"] == pytest.approx(float((data.labels != data.clean_labels).float().mean()))
    assert out["noise_after"] == pytest.approx(float((out["labels"] != data.clean_labels).float().mean()))
    assert out["relabeled"] == sum(out["history"]["relabeled"]) == int(out["relabel"]["relabeled"].sum())
    assert 0 <= out["relabel_correct"] <= out["relabeled"]
    wrong = data.labels != data.clean_labels                        # the recall of the run, from its final labels
    assert out["relabel_recall"] == pytest.approx(float((out["labels"][wrong] == data.clean_labels[wrong])
                                                        .float().mean()))
    assert out["relabel_broken"] == int((out["labels"][~wrong] != data.clean_labels[~wrong]).sum())
    assert out["similarity"].shape == (n, 3) and out["embeddings"].shape[0] == n
    acc = out["batch_accuracy"]
    assert acc[("running", 1)] == acc[("running", 16)]               # the running affinity: batch-independent
    net = rebuild(out["state"], "resnet_mini_arm", 3, 3, 48)
    assert len(net.queue) == 32 and not net.training
    logits, _ = query_embeddings(net, data)
    assert float((logits.argmax(1) == data.labels).float().mean()) == pytest.approx(out["accuracy"])
    # a CE run has no key side, and rebuild restores it without one
    base = run_job(train=data, test=data, model_name="resnet_mini_arm", img_size=48, seed=0, epochs=1,
                   batch_size=16, use_scl=False, use_cuem=False, progress=False, keep_state=True)
    assert base["relabeled"] == 0 and math.isnan(base["relabel_precision"])
    assert not hasattr(rebuild(base["state"], "resnet_mini_arm", 3, 3, 48), "queue")


def test_relabel_audit_precision_recall_and_broken_on_a_crafted_run():
    from fernb.methods.scl import relabel_audit

    clean = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    given = torch.tensor([1, 1, 2, 2, 1, 2, 0, 0])                 # rows 0, 3 and 7 wrong
    # changes: row 0 -> 0 (right), row 3 -> 1 (still wrong), row 3 -> 0 (right), row 4 -> 2 (breaks a right label)
    records = {"index": torch.tensor([0, 3, 3, 4]), "old": torch.tensor([1, 2, 1, 1]),
               "new": torch.tensor([0, 1, 0, 2]), "clean": torch.tensor([0, 0, 0, 1]), "epoch": torch.zeros(4)}
    final = torch.tensor([0, 1, 2, 0, 2, 2, 0, 0])
    a = relabel_audit(records, given, final, clean)
    assert a["relabeled"] == 4 and a["relabel_correct"] == 2 and a["relabel_precision"] == pytest.approx(0.5)
    assert a["relabel_recall"] == pytest.approx(2 / 3)              # rows 0 and 3 end right, row 7 stays wrong
    assert a["relabel_broken"] == 1 and a["noise_before"] == pytest.approx(3 / 8)
    assert a["noise_after"] == pytest.approx(2 / 8)
    none = relabel_audit({k: v[:0] for k, v in records.items()}, given, given, clean)
    assert none["relabeled"] == 0 and math.isnan(none["relabel_precision"]) and none["relabel_recall"] == 0.0
    real = relabel_audit({**records, "clean": torch.full((4,), -1)}, given, final, None)   # no clean labels
    assert math.isnan(real["relabel_precision"]) and math.isnan(real["relabel_recall"])
    assert math.isnan(real["noise_after"]) and real["relabeled"] == 4


# ---- the warm start, the mapped learning-rate decay and the L_sup / queue counters ---------------------------------
def test_mapped_decay_counters_and_a_warm_start_shared_across_poolings():
    from fernb.methods.scl import load_shared_weights, run_job

    data = _tiny()
    res = train_scl(models.create("resnet_mini_arm", 3, img_size=48), data, epochs=2, batch_size=16, queue_size=32,
                    lr=1e-3, lr_decay=0.9, decay_in_paper_epochs=True, alpha=30, progress=False, seed=0)
    h = res.history
    steps = h["total_steps"]
    # the rate after each epoch: 0.9 ** (paper epochs elapsed), 50 after the first of two and 100 at the end
    assert h["lr"] == pytest.approx([1e-3 * 0.9 ** 50, 1e-3 * 0.9 ** 100])
    # lambda > beta exactly while the paper epoch of the step is <= alpha = 30: steps with 100 (t + 1) / T <= 30
    assert h["sup_on_steps"] == sum(1 for t in range(steps) if 100 * (t + 1) / steps <= 30)
    assert h["sup_on_full_queue_steps"] <= h["sup_on_steps"] and h["queue_full_step"] == 1   # 32 slots, 16 a step
    warm = run_job(train=data, test=data, model_name="resnet_mini_arm", img_size=48, seed=0, epochs=1, batch_size=16,
                   use_scl=False, use_cuem=False, progress=False, keep_model_state=True)
    arm = models.create("resnet_mini_arm", 3, img_size=48)
    load_shared_weights(arm, {k: v for k, v in warm["model_state"].items() if not k.startswith("pool.")})
    assert torch.equal(arm.state_dict()["fc.weight"], warm["model_state"]["fc.weight"])   # pool.* may be absent
    with pytest.raises(ValueError, match="shapes differ"):           # plain pooling's classifier reads 256 values
        load_shared_weights(models.create("resnet_mini_arm", 3, img_size=48, pooling="avg"), warm["model_state"])
    with pytest.raises(ValueError, match="does not fit"):
        load_shared_weights(arm, {**warm["model_state"], "trunk.nonsense": torch.zeros(1)})
    cont = run_job(train=data, test=data, model_name="resnet_mini_arm", img_size=48, seed=0, epochs=1, batch_size=16,
                   use_scl=False, use_cuem=False, progress=False, init_state=warm["model_state"], lr=0.0,
                   keep_model_state=True)
    weights = [k for k, v in warm["model_state"].items() if v.is_floating_point() and "running" not in k]
    assert all(torch.equal(cont["model_state"][k], warm["model_state"][k]) for k in weights)   # lr 0: it started there
