"""SynthFER (fernb.data.synthfer): determinism, shapes, argument checks, face boxes, cache, and the variant pools."""

import pytest
import torch

from fernb.data import synthfer as S
from fernb.data.dataset import UNLABELED
from fernb.data.labels import CLASSES_7, CLASSES_8


def _small(split="train", n=48, **kw):
    kw.setdefault("size", 48)
    kw.setdefault("cache", False)
    return S.synthfer(split, n, **kw)


# ---- determinism -----------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_tensors():
    a = _small(seed=5)
    b = _small(seed=5)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.identities, b.identities)
    assert torch.equal(a.soft_labels, b.soft_labels)


def test_different_seed_gives_different_data():
    a = _small(seed=5)
    c = _small(seed=6)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.boxes, c.boxes)


# ---- shapes and argument checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("size,channels,n", [(48, 1, 16), (48, 3, 16), (224, 1, 3), (224, 3, 3)])
def test_shape_and_dtype(size, channels, n):
    ds = S.synthfer("val", n, size=size, channels=channels, cache=False)
    assert ds.images.shape == (n, channels, size, size)
    assert ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    assert ds.boxes.shape == (n, 4) and ds.boxes.dtype == torch.float32
    assert (ds.boxes >= 0).all() and (ds.boxes <= size).all()
    assert (ds.boxes[:, 2] > ds.boxes[:, 0]).all() and (ds.boxes[:, 3] > ds.boxes[:, 1]).all()
    assert ds.images.float().std() > 10  # not a blank canvas
    assert ds.classes == CLASSES_7


def test_eight_classes_include_contempt():
    ds = _small(n=32, num_classes=8)
    assert ds.classes == CLASSES_8
    assert set(ds.labels.tolist()) == set(range(8))
    assert ds.soft_labels.shape == (32, 8)


@pytest.mark.parametrize("kwargs,word", [
    (dict(size=32), "size"), (dict(size=256), "size"), (dict(channels=2), "channels"),
    (dict(split="training"), "split"), (dict(domain="C"), "domain"), (dict(split="web", domain="B"), "domain"),
    (dict(split="web", size=32), "size"),
])
def test_invalid_arguments_raise_value_error_naming_the_problem(kwargs, word):
    kwargs = {"split": "val", "n": 4, "cache": False, **kwargs}
    with pytest.raises(ValueError, match=word):
        S.synthfer(**kwargs)


# ---- face boxes -------------------------------------------------------------------------------------------------
def _mask_extent(mask: torch.Tensor):
    """Pixel-edge bounding box (x0, y0, x1, y1) of mask > 0.5 for each image (N, H, W)."""
    inside = mask > 0.5
    n, h, w = mask.shape
    xs = torch.arange(w).view(1, 1, w).expand(n, h, w)
    ys = torch.arange(h).view(1, h, 1).expand(n, h, w)
    big = 10**6
    x0 = torch.where(inside, xs, big).amin((1, 2))
    y0 = torch.where(inside, ys, big).amin((1, 2))
    x1 = torch.where(inside, xs, -big).amax((1, 2)) + 1
    y1 = torch.where(inside, ys, -big).amax((1, 2)) + 1
    return torch.stack([x0, y0, x1, y1], 1).float()


@pytest.mark.parametrize("size", [48, 96])
def test_face_boxes_enclose_the_rendered_face_tightly(size):
    n = 64
    params = S.sample_params(n, seed=11, identities=torch.arange(n))
    ident = S.identity_table(params["identity"], seed=0)
    img, boxes, masks = S.render(params, ident, size, return_masks=True)
    face = masks["face"]
    assert img.shape == (n, 3, size, size) and face.shape == (n, size, size) and boxes.shape == (n, 4)
    assert ((face > 0.5).flatten(1).sum(1) > 0.1 * size * size).all()  # every image shows a face
    extent = _mask_extent(face)
    tol = 1.0
    # every face pixel lies inside its box (to one pixel) ...
    assert (extent[:, 0] >= boxes[:, 0] - tol).all()
    assert (extent[:, 1] >= boxes[:, 1] - tol).all()
    assert (extent[:, 2] <= boxes[:, 2] + tol).all()
    assert (extent[:, 3] <= boxes[:, 3] + tol).all()
    # ... and the face reaches close to every side of its box (a loose box would fail here)
    gap = torch.stack([extent[:, 0] - boxes[:, 0], extent[:, 1] - boxes[:, 1],
                       boxes[:, 2] - extent[:, 2], boxes[:, 3] - extent[:, 3]], 1)
    tight = (gap <= 3.0).all(1)
    assert tight.float().mean() >= 0.95, gap.max(0)


def test_dataset_boxes_match_render_boxes():
    ds = _small("test", 16, seed=2)
    # the same box comes out of the batched dataset builder: boxes move with pose, so they vary across images
    assert ds.boxes[:, 0].std() > 0.3 and ds.boxes[:, 2].std() > 0.3
    centres = (ds.boxes[:, :2] + ds.boxes[:, 2:]) / 2
    assert ((centres - 24).abs() < 10).all()  # faces sit near the middle of a 48 px image


# ---- cache ------------------------------------------------------------------------------------------------------
def test_cache_roundtrip_loads_from_disk(tmp_path, monkeypatch):
    first = S.synthfer("val", 24, size=48, cache=True, cache_dir=tmp_path)
    files = list(tmp_path.glob("synthfer-val-default-*.pt"))
    assert len(files) == 1

    def no_rendering(*args, **kwargs):
        raise AssertionError("rendered again instead of loading the cache")

    monkeypatch.setattr(S, "render_images", no_rendering)
    second = S.synthfer("val", 24, size=48, cache=True, cache_dir=tmp_path)
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.boxes, second.boxes)
    assert torch.equal(first.clean_labels, second.clean_labels)
    assert torch.equal(first.meta["aus"], second.meta["aus"])
    assert second.classes == first.classes and second.name == first.name
    # other arguments get their own file
    monkeypatch.undo()
    S.synthfer("val", 24, size=48, seed=1, cache=True, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("synthfer-val-default-*.pt"))) == 2


# ---- splits and pools ------------------------------------------------------------------------------------------
def test_train_val_test_are_subject_independent():
    ids = {split: set(_small(split, 64).identities.tolist()) for split in ("train", "val", "test")}
    assert not ids["train"] & ids["val"]
    assert not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]


def test_unlabeled_split_hides_labels_and_keeps_clean_ones():
    ds = _small("unlabeled", 40)
    assert (ds.labels == UNLABELED).all()
    assert ds.clean_labels is not None
    assert ((ds.clean_labels >= 0) & (ds.clean_labels < 7)).all()
    assert len(ds.clean_labels.unique()) == 7


def test_identity_split_has_many_identities():
    lo, hi = S.SPLIT_IDS["identity"]
    ds = _small("identity", hi - lo, size=48)
    assert len(ds.identities.unique()) >= 500
    assert len(ds.labels.unique()) >= 500
    assert ds.num_classes == hi - lo
    assert (ds.labels >= 0).all() and (ds.labels < ds.num_classes).all()
    assert torch.equal(ds.labels, ds.identities - lo)
    assert ds.meta["expression"].shape == (hi - lo,) and ds.meta["expression"].max() < 7


def test_web_pool_has_nonfaces_and_forty_percent_noise_among_faces():
    ds = _small("web", 200)
    assert ds.is_face is not None
    faces = ds.is_face
    assert (~faces).sum() == 40  # nonface_fraction 0.2
    assert (ds.clean_labels[~faces] == UNLABELED).all()
    assert ((ds.labels >= 0) & (ds.labels < 7)).all()  # every row carries a given label, non-faces too
    noise = (ds.labels[faces] != ds.clean_labels[faces]).float().mean().item()
    assert abs(noise - 0.4) < 0.02


def test_domains_differ_in_pose_and_image_statistics():
    a = _small("test", 160, domain="A")
    b = _small("test", 160, domain="B")
    assert b.meta["yaw"].abs().mean() > 2 * a.meta["yaw"].abs().mean()
    assert b.meta["occluded"].float().mean() > a.meta["occluded"].float().mean()
    assert b.meta["intensity"].mean() < a.meta["intensity"].mean()
    # domain A never draws grey images; B does, so B's colour channels agree more often
    def grey_fraction(ds):
        x = ds.images.float()
        return ((x[:, 0] - x[:, 1]).abs().flatten(1).amax(1) < 2).float().mean()
    assert grey_fraction(b) > grey_fraction(a) + 0.1


def test_blends_have_two_component_soft_labels():
    ds = _small("train", 300)
    soft = ds.soft_labels
    assert torch.allclose(soft.sum(1), torch.ones(len(ds)), atol=1e-6)
    blend = ds.meta["blend"]
    assert 0.05 < blend.float().mean() < 0.3
    nonzero = (soft > 0).sum(1)
    assert (nonzero[blend] == 2).all()
    assert (nonzero[~blend] == 1).all()
    assert (soft[torch.arange(len(ds)), ds.labels] >= 0.5).all()  # the primary class keeps the larger weight
    assert torch.equal(soft[~blend].argmax(1), ds.labels[~blend])


# ---- AU prototypes and single faces -----------------------------------------------------------------------------
def test_prototype_matrix_matches_prototypes():
    m = S.prototype_matrix(8)
    assert m.shape == (8, len(S.AUS))
    for c, name in enumerate(CLASSES_8):
        active = {S.AUS[i] for i in m[c].nonzero().flatten().tolist()}
        assert active == set(S.PROTOTYPES[name]), name
    assert m[CLASSES_8.index("fear")].sum() == 7
    assert m[CLASSES_8.index("neutral")].sum() == 0
    assert torch.equal(S.prototype_matrix(7), m[:7])


def test_render_face_rejects_unknown_aus():
    with pytest.raises(ValueError, match="99"):
        S.render_face({"6": 1.0, "99": 1.0})


def test_render_face_changes_with_aus_and_is_repeatable():
    neutral = S.render_face({}, size=64)
    smile = S.render_face({"6": 1.0, "12": 1.0}, size=64)
    assert neutral.shape == (3, 64, 64) and neutral.dtype == torch.float32
    assert 0 <= neutral.min() and neutral.max() <= 1
    assert torch.equal(neutral, S.render_face({}, size=64))
    assert (neutral - smile).abs().max() > 0.3
    assert S.render_face({}, size=64, channels=1).shape == (1, 64, 64)
    turned = S.render_face({}, size=64, yaw_deg=30)
    assert not torch.equal(neutral, turned)


def test_prototype_faces_show_each_class_on_the_same_people():
    ds = S.prototype_faces(3, size=64)
    assert ds.images.shape == (21, 3, 64, 64) and ds.classes == CLASSES_7
    assert torch.equal(ds.labels, torch.arange(21) // 3)
    assert torch.equal(ds.identities[:3], ds.identities[3:6])           # the same three people in every class
    assert (ds.identities >= S.PROTOTYPE_IDS).all()
    assert ds.boxes.shape == (21, 4) and (ds.boxes[:, 2] > ds.boxes[:, 0]).all()
    assert torch.equal(ds.images, S.prototype_faces(3, size=64).images)  # deterministic


# ---- the renderer's region masks (Grad-CAM localisation) ---------------------------------------------------------
def test_region_masks_lie_on_the_face_and_follow_subsets():
    ds = _small("test", 40)
    masks = S.region_masks(ds)
    assert set(masks) == {"face", *S.REGIONS}
    for name in S.REGIONS:
        assert masks[name].shape == (40, 48, 48)
        assert (masks[name] <= masks["face"] + 1e-6).all()             # every region lies on the face
        assert (masks[name].flatten(1).sum(1) > 0).float().mean() > 0.9  # and shows on (almost) every face
    # a subset of a relabeled copy redraws the same rows
    rows = torch.tensor([3, 17, 30])
    again = S.region_masks(ds.with_labels(torch.zeros(40, dtype=torch.long)).subset(rows))
    assert torch.equal(again["mouth"], masks["mouth"][rows])
    assert torch.equal(S.region_masks(ds, rows)["eyes"], masks["eyes"][rows])
    with pytest.raises(ValueError, match="region masks"):
        S.region_masks(S.prototype_faces(1, size=48))


def test_expression_regions_follow_the_prototype_aus():
    assert S.class_regions("neutral") == ()
    assert S.class_regions("happiness") == ("eyes", "cheeks", "mouth")      # AU6 + AU12
    assert S.class_regions("surprise") == ("brows", "eyes", "mouth")        # AU1 + 2 + 5 + 26
    assert S.class_regions("disgust") == ("nose", "mouth")                  # AU9 + 10 + 15 + 16
    masks = {name: torch.zeros(2, 4, 4) for name in ("face", *S.REGIONS)}
    masks["mouth"][:, 3] = 1
    masks["eyes"][:, 1] = 1
    union = S.expression_regions(masks, torch.tensor([0, 1]), CLASSES_7)
    assert union[0].sum() == 0                                           # neutral: no region
    assert torch.equal(union[1], masks["mouth"][1] + masks["eyes"][1])   # happiness: eyes and mouth


# ---- pose: a yaw turns the face ------------------------------------------------------------------------------------
def _region_centre_x(mask):
    xs = torch.arange(mask.shape[-1], dtype=torch.float32)
    return (mask.sum(-2) * xs).sum(-1) / mask.sum((-2, -1))


def test_yaw_turns_the_face_far_half_narrows_and_far_eye_hides():
    n = 5
    aus = torch.zeros(n, len(S.AUS))
    yaws = [0.0, 20.0, 40.0, 60.0, 75.0]
    widths, shifts = [], []
    for yaw in yaws:
        p, ident = S._posed(aus, torch.full((n,), 7), yaw_deg=yaw)
        _, _, masks = S.render(p, ident, 96, return_masks=True)
        face, eyes, nose = masks["face"][0], masks["eyes"][0], masks["nose"][0]
        mid = float(_region_centre_x(nose))
        shifts.append(mid - 48.0)
        split = int(round(mid))                                  # each eye on its side of the nose
        left, right = eyes[:, :split].sum(), eyes[:, split:].sum()   # the far eye is on the right for a positive yaw
        widths.append((float(left), float(right)))
    assert shifts[0] == pytest.approx(0, abs=0.5)                # frontal: the nose on the midline
    assert all(b > a for a, b in zip(shifts, shifts[1:]))        # it moves toward the far side as the head turns
    near, far = zip(*widths)
    assert far[1] < near[1] and far[2] < 0.8 * near[2]           # the far eye foreshortens ...
    assert far[-1] < 0.2 * far[0]                                # ... and all but disappears at 75 degrees
