"""The Dynamic Re-labeling Module: Eq. 6 relabeling, Eq. 7 margin update, the relabel log and the training loop."""
import math

import pytest
import torch

from fernb import models
from fernb.data.dataset import FERDataset
from fernb.methods.drm import DRM, RelabelLog, _batches, compute_alpha, relabel, train_drm, update_delta2


def test_relabel_rule_on_crafted_probabilities():
    # beta = 0.5 with B = 4: samples 2 and 3 (largest alpha) form the high-importance group.
    alpha = torch.tensor([0.2, 0.3, 0.9, 0.8])
    labels = torch.tensor([0, 0, 0, 2])
    probs = torch.tensor([[0.2, 0.5, 0.3],      # low, P_max - P_gt = 0.3 > 0.2 -> relabel to 1
                          [0.4, 0.5, 0.1],      # low, P_max - P_gt = 0.1       -> keep
                          [0.0, 1.0, 0.0],      # high, gap 1.0                 -> never relabeled
                          [0.1, 0.8, 0.1]])     # high, gap 0.7                 -> never relabeled
    new, changed = relabel(probs, labels, alpha, beta=0.5, delta2=0.2)
    assert new.tolist() == [1, 0, 0, 2]
    assert changed.tolist() == [True, False, False, False]
    new, changed = relabel(probs, labels, alpha, beta=0.5, delta2=0.35)     # 0.3 is not > 0.35
    assert new.tolist() == [0, 0, 0, 2] and not changed.any()


def test_update_delta2_both_branches_and_floor():
    assert update_delta2(0.2, best_val=0.8, Td=0.7, increase=0.05, decrease=0.1) == pytest.approx(0.25)
    assert update_delta2(0.2, best_val=0.6, Td=0.7, increase=0.05, decrease=0.1) == pytest.approx(0.1)
    assert update_delta2(0.2, best_val=0.7, Td=0.7, increase=0.05, decrease=0.1) == pytest.approx(0.1)  # strict >
    assert update_delta2(0.05, best_val=0.6, Td=0.7, increase=0.05, decrease=0.1) == 0.0


def test_relabel_log_precision_recall():
    initial = torch.tensor([0, 1, 2, 0, 1, 2])
    clean = torch.tensor([0, 1, 1, 1, 1, 2])             # samples 2 and 3 are noisy
    log = RelabelLog(initial, clean)
    # Epoch 0: 2: 2 -> 1 (correct), 4: 1 -> 0 (breaks a clean label), 5: 2 -> 2 (no change, not recorded).
    log.record(0, torch.tensor([2, 4, 5]), torch.tensor([2, 1, 2]), torch.tensor([1, 0, 2]))
    log.begin_epoch(1)                                    # an epoch with no change
    # Epoch 2: 3: 0 -> 1 (correct), 4: 0 -> 1 (repairs it).
    log.record(2, torch.tensor([3, 4]), torch.tensor([0, 0]), torch.tensor([1, 1]))

    frame = log.to_frame()
    assert list(frame.columns) == ["epoch", "index", "old", "new", "clean"]
    assert frame.values.tolist() == [[0, 2, 2, 1, 1], [0, 4, 1, 0, 1], [2, 3, 0, 1, 1], [2, 4, 0, 1, 1]]
    assert len(log) == 4 and log.epochs == [0, 1, 2]

    stats = log.precision_recall().set_index("epoch")
    assert stats["relabeled"].tolist() == [2, 0, 2]
    assert stats.loc[0, "precision"] == 0.5 and math.isnan(stats.loc[1, "precision"]) and stats.loc[2, "precision"] == 1
    # Noisy at the start of epoch 0: {2, 3}; epoch 0 corrects 2 -> recall 1/2, breaks 4.
    assert stats.loc[0, ["noisy_before", "corrected", "broken"]].tolist() == [2, 1, 1]
    assert stats.loc[0, "recall"] == 0.5 and stats.loc[0, "noise_rate"] == pytest.approx(2 / 6)
    assert stats.loc[1, ["noisy_before", "corrected", "recall"]].tolist() == [2, 0, 0.0]
    # Noisy at the start of epoch 2: {3, 4}; both corrected.
    assert stats.loc[2, ["noisy_before", "corrected", "broken", "recall", "noise_rate"]].tolist() == [2, 2, 0, 1.0, 0.0]


def test_relabel_log_without_clean_labels():
    log = RelabelLog()
    log.record(3, torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    assert log.to_frame()["clean"].tolist() == [-1]
    row = log.precision_recall().iloc[0]
    assert row["relabeled"] == 1 and math.isnan(row["precision"]) and math.isnan(row["recall"])


def test_batches_fold_a_too_small_last_batch():
    chunks = _batches(65, 16, 0.7, torch.Generator().manual_seed(0))
    assert [c.numel() for c in chunks] == [16, 16, 16, 17]
    assert sorted(torch.cat(chunks).tolist()) == list(range(65))
    assert [c.numel() for c in _batches(66, 16, 0.7, torch.Generator().manual_seed(0))] == [16, 16, 16, 16, 2]


def tiny_dataset(n, seed, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 7, (n,), generator=g)
    flip = torch.rand(n, generator=g) < noise
    given = torch.where(flip, (clean + torch.randint(1, 7, (n,), generator=g)) % 7, clean)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    return FERDataset(images=images, labels=given, clean_labels=clean, name=f"tiny{seed}")


def test_drm_module_shapes_and_gradients():
    torch.manual_seed(0)
    drm = DRM(models.create("resnet_mini", 7, in_chans=1))
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    alpha, logits = drm(x)
    assert alpha.shape == (4,) and logits.shape == (4, 7) and ((alpha > 0) & (alpha < 1)).all()
    loss, parts, _, _ = drm.loss(x, y)
    loss.backward()
    assert set(parts) == {"loss", "rr", "wce"} and drm.head.attention.fc.weight.grad is not None


def test_train_drm_runs_and_respects_relabel_start():
    train, val = tiny_dataset(64, 0), tiny_dataset(32, 1, noise=0.0)
    given = train.labels.clone()
    torch.manual_seed(0)
    result = train_drm(models.create("resnet_mini", 7, in_chans=1), train, val, epochs=2, batch_size=16,
                       relabel_start_epoch=1, delta2=0.0, dynamic_delta2=False, progress=False, device="cpu",
                       inplace=False)
    assert result.labels.shape == (64,) and result.alpha.shape == (64,) and result.high_mask.shape == (64,)
    assert ((result.alpha > 0) & (result.alpha < 1)).all()
    assert int(result.high_mask.sum()) == 4 * 11              # floor(0.7 * 16) per batch, 4 batches
    assert all(len(v) == 2 for v in result.history.values())
    assert result.delta2_trace == [0.0, 0.0, 0.0]
    assert 0.0 <= result.history["val_acc"][-1] <= 1.0
    assert torch.equal(train.labels, given) and torch.equal(result.initial_labels, given)   # inplace=False

    frame = result.log.to_frame()
    assert len(frame) > 0 and set(frame["epoch"]) == {1}      # no decision before relabel_start_epoch
    assert result.history["relabeled"] == [0, len(frame)]
    assert not result.high_mask[torch.tensor(frame["index"].tolist())].any()   # only the low group relabels
    replayed = given.clone()
    replayed[torch.tensor(frame["index"].tolist())] = torch.tensor(frame["new"].tolist())
    assert torch.equal(replayed, result.labels)
    assert (frame["clean"].values == train.clean_labels[torch.tensor(frame["index"].tolist())].numpy()).all()
    stats = result.relabel_stats()
    assert stats["epoch"].tolist() == [1] and stats.loc[0, "noisy_before"] == int((given != train.clean_labels).sum())

    alpha, logits = compute_alpha(result.model, val)
    assert alpha.shape == (32,) and logits.shape == (32, 7)


def test_train_drm_without_relabeling_epochs_and_dynamic_delta2():
    train, val = tiny_dataset(40, 2), tiny_dataset(16, 3, noise=0.0)
    given = train.labels.clone()
    result = train_drm(models.create("resnet_mini", 7, in_chans=1), train, val, epochs=2, batch_size=20,
                       relabel_start_epoch=0, delta2=0.2, Td=2.0, increase=0.05, decrease=0.15,
                       progress=False, device="cpu", augment=lambda x: x.flip(-1))
    # Td = 2.0 can never be beaten: Eq. 7 decreases every relabeling epoch, floored at 0.
    assert result.delta2_trace == [0.2, pytest.approx(0.05), 0.0]
    assert torch.equal(train.labels, result.labels)                                      # inplace=True (default)
    assert result.log.epochs == [0, 1]

    no_relabel = train_drm(models.create("resnet_mini", 7, in_chans=1), tiny_dataset(40, 2), None, epochs=1,
                           batch_size=20, relabel_start_epoch=1, progress=False, device="cpu")
    assert len(no_relabel.log) == 0 and torch.equal(no_relabel.labels, given)
    assert math.isnan(no_relabel.history["val_acc"][0]) and no_relabel.delta2_trace == [0.2, 0.2]


def test_explain_batch_matches_a_hand_computation():
    """4 samples, beta = 0.5: the two largest alphas form the high group; only a low-group sample whose
    P_max - P_gt exceeds delta2 is relabeled; the losses are Eq. 3-5 by hand."""
    import math

    from fernb.methods.drm import explain_batch
    alpha = torch.tensor([0.9, 0.2, 0.8, 0.3])
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 0.0], [0.0, 0.5]])
    labels = torch.tensor([0, 0, 1, 0])
    table, losses = explain_batch(alpha, logits, labels, beta=0.5, delta1=0.15, gamma=0.5, delta2=0.2)
    assert table["group"].tolist() == ["high", "high", "low", "low"]            # sorted by alpha: 0.9, 0.8, 0.3, 0.2
    assert table.index.tolist() == [0, 2, 3, 1]
    # sample 1: softmax(0.2 * [0, 5]) = [1/(1+e), e/(1+e)], gap = (e - 1)/(e + 1) = 0.46 > 0.2 -> relabeled to 1
    # sample 3: softmax(0.3 * [0, 0.5]) gap = tanh(0.075) = 0.075 < 0.2 -> kept
    assert table.loc[1, "relabeled to"] == 1 and table.loc[3, "relabeled to"] == ""
    assert table.loc[1, "P_max - P_gt"] == pytest.approx((math.e - 1) / (math.e + 1), rel=1e-5)
    assert table.loc[2, "relabeled to"] == ""                                     # high group: never relabeled
    ce = lambda z, y: -z[y] + math.log(sum(math.exp(v) for v in z))
    wce = (ce([1.8, 0.0], 0) + ce([0.0, 1.0], 0) + ce([0.8, 0.0], 1) + ce([0.0, 0.15], 0)) / 4
    rr = max(0.0, 0.15 - ((0.9 + 0.8) / 2 - (0.3 + 0.2) / 2))
    assert losses["L_WCE"] == pytest.approx(wce, rel=1e-5)
    assert losses["alpha_H"] == pytest.approx(0.85) and losses["alpha_L"] == pytest.approx(0.25)
    assert losses["L_RR"] == pytest.approx(rr, abs=1e-7)
    assert losses["L_all"] == pytest.approx(0.5 * rr + 0.5 * wce, rel=1e-5)
