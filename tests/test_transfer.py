"""Two-stage transfer (Xu et al. Sec. 3.2): the freeze helper freezes exactly the bottom k conv layers, nothing else
changes during stage 1 (weights and BatchNorm statistics of the frozen layers included), weights transfer without
the classifier, and a whole two-stage run / control runs through engine.fit."""
import pytest
import torch

from fernb import engine, models
from fernb.data.dataset import FERDataset
from fernb.methods import transfer as T


def _toy(n=64, size=32, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = (torch.rand(n, 1, size, size, generator=g) * 80).to(torch.uint8)
    for c in range(classes):   # a class-dependent bright bar, so there is something to learn
        images[labels == c, :, 4 * c: 4 * c + 3, :] += 150
    return FERDataset(images=images, labels=labels, clean_labels=labels.clone(), name="toy")


def _net(bn=True):
    torch.manual_seed(0)
    return models.create("dalnet_mini", 7, in_chans=1, img_size=32, batch_norm=bn)


@pytest.mark.parametrize("k", range(6))
def test_freeze_bottom_freezes_exactly_the_bottom_k_conv_layers(k):
    net = T.freeze_bottom(_net(), k)
    expected = {f"blocks.{i}.{p}" for i in range(k) for p in ("conv.weight", "bn.weight", "bn.bias")}
    assert set(T.frozen_parameter_names(net)) == expected
    net.train()
    for i, block in enumerate(net.blocks):
        assert block.training == (i >= k)           # frozen layers (their BatchNorm too) stay in eval mode
    assert net.ip1.training and net.ip2.training
    T.unfreeze(net)
    net.train()
    assert not T.frozen_parameter_names(net) and all(b.training for b in net.blocks)


def test_freeze_rejects_bad_k_and_models_without_conv_layers():
    with pytest.raises(ValueError, match="0..5"):
        T.freeze_bottom(_net(), 6)
    with pytest.raises(TypeError, match="conv layers"):
        T.freeze_bottom(models.create("resnet_mini", 7), 1)


def test_nothing_frozen_changes_during_stage_1_batchnorm_statistics_included():
    net = T.freeze_bottom(_net(bn=True), 2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    engine.fit(net, _toy(), steps=4, batch_size=16, lr=1e-2, weight_decay=0.1, device="cpu", progress=False)
    after = net.state_dict()
    for name, value in before.items():
        frozen = name.startswith(("blocks.0.", "blocks.1."))
        if frozen:
            assert torch.equal(after[name], value), f"{name} changed while frozen"
        elif name.endswith(("weight", "running_mean")) and not name.startswith("blocks.0"):
            assert not torch.equal(after[name], value), f"{name} did not train"


def test_transfer_state_skips_the_classifier_and_checks_shapes():
    source = models.create("dalnet_mini", 500, in_chans=1, img_size=32)       # an identity classifier
    target = _net(bn=False)
    head = target.ip2.weight.clone()
    T.transfer_state(source.state_dict(), target)
    assert torch.equal(target.blocks[0].conv.weight, source.blocks[0].conv.weight)
    assert torch.equal(target.ip1.weight, source.ip1.weight)
    assert torch.equal(target.ip2.weight, head)
    with pytest.raises(ValueError, match="other shapes"):
        T.transfer_state(models.create("dalnet_mini", 7, in_chans=1, img_size=64).state_dict(), target)


def test_loss_steps_and_two_stage_run():
    data = _toy()
    with pytest.raises(ValueError, match="loss must be"):
        T.loss_step("hinge")
    source = models.create("dalnet_mini", 10, in_chans=1, img_size=32).state_dict()
    cfg = T.FinetuneConfig(model_name="dalnet_mini", stage1_steps=3, stage2_steps=2, batch_size=16)
    run = T.run_finetune(data, data, data, cfg=cfg, pretrained=source, k=3, mode="two-stage", device="cpu",
                         keep_state=True)
    assert set(run.stages) == {"stage1", "stage2"} and run.k == 3
    assert run.final is run.stages["stage2"] and run.state is not None
    assert run.stages["stage1"].confusion.sum() == len(data)
    assert run.stages["stage1"].history["samples"] == [48]
    scratch = T.run_finetune(data, None, data, cfg=cfg, pretrained=None, mode="scratch", device="cpu")
    assert set(scratch.stages) == {"final"} and sum(scratch.final.history["samples"]) == 80
    with pytest.raises(ValueError, match="needs the pre-trained"):
        T.run_finetune(data, None, data, cfg=cfg, pretrained=None, mode="one-stage", device="cpu")


def test_pretrain_face_recognition_holds_out_images_of_every_identity():
    ids = torch.arange(60) % 6
    data = FERDataset(images=torch.randint(0, 255, (60, 1, 32, 32), dtype=torch.uint8), labels=ids,
                      classes=tuple(f"id{i}" for i in range(6)), name="ids")
    res = T.pretrain_face_recognition(data, model_name="dalnet_mini", steps=2, batch_size=16, device="cpu")
    assert res.num_identities == 6 and res.n_train == 54 and 0 <= res.identity_accuracy <= 1
    assert res.state["ip2.weight"].shape[0] == 6


def _fake_run(mode, k, seed, val, test, loss="softmax_mse"):
    import numpy as np
    res = lambda v, t: T.StageResult(v, t, t, np.zeros((7, 7)), {}, 0.0)
    stages = ({"stage1": res(val - 0.1, test - 0.1), "stage2": res(val, test)} if mode == "two-stage"
              else {"final": res(val, test)})
    return T.FinetuneRun(mode, k, seed, loss, "dal", stages)


def test_runs_frame_choose_k_and_per_seed():
    runs = [_fake_run("two-stage", k, s, val=0.5 + 0.01 * (k == 2) + 0.01 * (k == 3), test=0.4 + 0.01 * k + s)
            for k in range(4) for s in (0, 1)]
    runs += [_fake_run("scratch", None, s, 0.3, 0.2 + s) for s in (0, 1)]
    frame = T.runs_frame(runs, arm="sweep")
    assert len(frame) == 4 * 2 * 2 + 2 and set(frame["arm"]) == {"sweep"}
    assert set(frame["stage"]) == {"stage1", "stage2", "final"}
    assert T.choose_k(frame) == 2                       # tie between k = 2 and 3 on val: the smaller k
    assert T.per_seed(frame, (1, 0), mode="two-stage", k=3, stage="stage2") == pytest.approx([1.43, 0.43])
    assert T.per_seed(frame, (0, 1), mode="scratch", k=None) == pytest.approx([0.2, 1.2])
    with pytest.raises(ValueError, match="rows for seed"):
        T.per_seed(frame, (0,), mode="two-stage", k=3)  # two stages match: ambiguous
    with pytest.raises(ValueError, match="no two-stage rows"):
        T.choose_k(frame[frame["mode"] == "scratch"])
