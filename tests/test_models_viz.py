"""Backbones (fernb.models), figures and Grad-CAM (fernb.viz). The scorecard is tested in test_scorecard.py."""
import json

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from fernb import models, viz
from fernb.data.dataset import FERDataset
from fernb.data.labels import CLASSES_7
from fernb.engine import History

SLOW = {"resnet50", "vit_base", "vit_small"}
FAST = [name for name in models.available() if name not in SLOW]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _create(name, num_classes=7, in_chans=3, img_size=48):
    torch.manual_seed(0)
    # ViTs, ARM and DAL-Net are built for one input side (position embeddings, ARM's map size, IP1's input width)
    sized = name.startswith("vit") or "arm" in name or name.startswith("dalnet")
    kwargs = {"img_size": img_size} if sized else {}
    return models.create(name, num_classes, in_chans=in_chans, **kwargs).eval()


# ---- models -----------------------------------------------------------------------------------------------------
def test_fast_models_are_listed():
    assert {"resnet18", "resnet_mini", "vit_tiny", "vit_mini"} <= set(FAST)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_features_and_logits_convention(name, in_chans):
    # patch 16 needs a multiple of 16; resnet18's stride-32 map must be at least 3 x 3 for the ARM
    size = {"vit_tiny": 64, "resnet18_arm": 112}.get(name, 48)
    model = _create(name, 7, in_chans, img_size=size)
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        emb, logits = models.features_and_logits(model, x)
        direct = model(x)
    assert emb.shape == (2, model.num_features)
    assert logits.shape == (2, 7)
    assert torch.allclose(logits, direct, atol=1e-5)
    assert model.fernb_name == name
    assert models.count_parameters(model) > 0


def test_create_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        models.create("resnet9000", 7)


def test_load_checkpoint_missing_file(tmp_path):
    model = _create("resnet_mini")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_checkpoint(model, tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        models.create("resnet_mini", 7, checkpoint=tmp_path / "nope.pt")


@pytest.mark.parametrize("wrapped", [False, True])
def test_checkpoint_round_trip(tmp_path, wrapped):
    source = _create("resnet_mini")
    state = source.state_dict()
    path = tmp_path / "weights.pt"
    torch.save({"model": state, "epoch": 3} if wrapped else state, path)
    torch.manual_seed(123)  # a different initialization, overwritten by the checkpoint
    target = models.create("resnet_mini", 7, checkpoint=path)
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key]), key
    fresh = models.create("resnet_mini", 7)
    assert not torch.equal(fresh.state_dict()["fc.weight"], state["fc.weight"])
    models.load_checkpoint(fresh, path)
    assert torch.equal(fresh.state_dict()["fc.weight"], state["fc.weight"])


# ---- Grad-CAM ---------------------------------------------------------------------------------------------------
def _uint8_images(n=3, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", ["resnet_mini", "vit_mini"])
def test_gradcam_maps(name):
    model = _create(name, img_size=48)
    images = _uint8_images()
    maps = viz.gradcam(model, images)
    assert maps.shape == (3, 48, 48)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    targeted = viz.gradcam(model, images, targets=[0, 1, 2])
    assert targeted.shape == (3, 48, 48)


def test_vit_reshape_transform():
    tokens = torch.arange(2 * (1 + 36) * 5, dtype=torch.float32).view(2, 37, 5)
    fmap = viz.vit_reshape_transform(tokens)
    assert fmap.shape == (2, 5, 6, 6)
    assert torch.equal(fmap[:, :, 0, 1], tokens[:, 2, :])  # token 1 (after the class token) -> row 0, column 1
    layers, transform, _, _ = viz.gradcam_target_layers(_create("vit_mini"))
    assert transform is not None and len(layers) == 1
    layers, transform, _, _ = viz.gradcam_target_layers(_create("resnet_mini"))
    assert transform is None
    with pytest.raises(ValueError, match="target layer"):
        viz.gradcam_target_layers(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("size,name,side", [(48, "layer2", 6), (64, "layer2", 8), (128, "layer3", 8),
                                            (224, "layer4", 7)])
def test_gradcam_layer_is_the_deepest_with_a_map_of_at_least_6x6(size, name, side):
    model = _create("resnet_mini")
    layers, _, chosen, measured = viz.gradcam_target_layers(model, size)
    assert (chosen, measured) == (name, side)
    assert layers == [getattr(model, name)[-1]]
    assert viz.gradcam(model, _uint8_images(2, size=size)).shape == (2, size, size)


def test_localisation_score_is_one_for_a_uniform_map_and_rewards_concentration():
    face = torch.zeros(2, 10, 10)
    face[:, 1:9, 1:9] = 1                             # 64 face pixels
    region = torch.zeros(2, 10, 10)
    region[:, 1:5, 1:9] = 1                           # 32 of them: half the face
    uniform = torch.ones(2, 10, 10)
    assert torch.allclose(viz.localisation_score(uniform, region, face), torch.ones(2))
    inside = region.clone()                           # every bit of energy on the region: 1 / (1/2) = 2
    assert torch.allclose(viz.localisation_score(inside, region, face), torch.full((2,), 2.0))
    outside = face - region                           # none on it: 0
    assert torch.allclose(viz.localisation_score(outside, region, face), torch.zeros(2))
    # energy outside the face does not count, and an empty region (a neutral face) has no score
    assert torch.allclose(viz.localisation_score(uniform + 5 * (1 - face), region, face), torch.ones(2))
    assert viz.localisation_score(uniform, torch.zeros(2, 10, 10), face).isnan().all()


# ---- plots and saving -------------------------------------------------------------------------------------------
def _toy_dataset(n=14):
    images = _uint8_images(n)
    labels = torch.arange(n) % 7
    clean = labels.clone()
    clean[0] = 3
    boxes = torch.tensor([[4.0, 4.0, 40.0, 44.0]]).repeat(n, 1)
    return FERDataset(images=images, labels=labels, clean_labels=clean, boxes=boxes, classes=CLASSES_7)


def test_plot_functions_return_figures():
    data = _toy_dataset()
    confusion = np.arange(49).reshape(7, 7)
    history = History(epoch=[1, 2], train_loss=[1.0, 0.5], train_acc=[0.3, 0.5], val_acc=[0.2, 0.4])
    figures = [
        viz.plot_confusion(confusion, CLASSES_7, title="cm"),
        viz.plot_confusions({"a": confusion, "b": confusion.T}, CLASSES_7),
        viz.plot_history({"run": history, "dict": history.as_dict()}),
        viz.plot_image_grid(data.images, data.labels, data.classes, clean_labels=data.clean_labels,
                            boxes=data.boxes, ncols=5),
        viz.plot_image_grid(data.images[:3], titles=["x", "y", "z"]),
        viz.plot_gradcam_grid(_create("resnet_mini"), data, [0, 1, 2, 3], ncols=4),
    ]
    for fig in figures:
        assert isinstance(fig, matplotlib.figure.Figure)
        assert fig.axes
    # a wrong label is titled in red with the true class beside it
    title = figures[3].axes[0].title
    assert "true" in title.get_text() and title.get_color() == "red"


def test_save_writes_png_under_fernb_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNB_FIGURES", str(tmp_path))
    fig = viz.plot_confusion(np.eye(7), CLASSES_7)
    assert viz.save(fig, "99_test_notebook", "confusion") is None   # a cell ending with it prints nothing
    path = tmp_path / "99_test_notebook" / "confusion.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
