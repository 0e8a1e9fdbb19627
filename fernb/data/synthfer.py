"""SynthFER: procedurally rendered faces driven by facial action units (our own renderer; no library renders FACS
faces batched on tensors, which is what makes 1,000+ images/s on two CPU cores possible).

How an image is made
--------------------
1. An *expression* is a vector of action-unit (AU) intensities in [0, 1]. Each class has its EMFACS prototype
   (`PROTOTYPES`): happiness AU6+12; sadness AU1+4+15; surprise AU1+2+5+26; fear AU1+2+4+5+7+20+26;
   anger AU4+5+7+23; disgust AU9+15+16; contempt unilateral AU12+14 (AU "12L", "14L"); neutral none.
   Per image the prototype is scaled by an *intensity*, each AU jittered, a few off-prototype AUs leak in weakly,
   and with probability `blend_prob` a second expression is mixed in; the mixing weights are the soft label.
2. An *identity* fixes face shape, eye/brow/nose/mouth geometry, skin/hair/iris colours, hair style, glasses and a
   small *resting* AU offset (some people look a little sad or cross at rest, one source of real ambiguity).
3. A *pose* (yaw, roll, scale, translation) places the face; the face box is the rotated face ellipse's bounding box.
4. The face is composited layer by layer from soft-edged shapes evaluated on the pixel grid for a whole chunk of
   images at once (background, hair, skin, wrinkles, brows, eyes, nose, mouth, glasses, occluder), then lighting,
   blur and noise are applied.

Every random draw comes from a seeded `torch.Generator`, so the same arguments give bit-identical tensors.
The AU -> geometry mapping below is a deliberately simple cartoon of FACS: it keeps the *relations* that make FER
hard (fear and surprise share AU1+2+5+26; anger and disgust both lower the brows/tighten; low-intensity sadness is
close to neutral) without pretending to be photo-real. SynthFER numbers illustrate a method; they are not a
paper's numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.nn import functional as F

from .dataset import UNLABELED, FERDataset
from .labels import CLASSES_8, classes as class_names

VERSION = 2  # bump when rendering changes, so caches are rebuilt

AUS = ("1", "2", "4", "5", "6", "7", "9", "12", "12L", "14", "14L", "15", "16", "20", "23", "26")
AU_NAMES = {
    "1": "inner brow raiser", "2": "outer brow raiser", "4": "brow lowerer", "5": "upper lid raiser",
    "6": "cheek raiser", "7": "lid tightener", "9": "nose wrinkler", "12": "lip corner puller",
    "12L": "lip corner puller (left only)", "14": "dimpler", "14L": "dimpler (left only)",
    "15": "lip corner depressor", "16": "lower lip depressor", "20": "lip stretcher", "23": "lip tightener",
    "26": "jaw drop",
}
PROTOTYPES = {
    "neutral": (),
    "happiness": ("6", "12"),
    "sadness": ("1", "4", "15"),
    "surprise": ("1", "2", "5", "26"),
    "fear": ("1", "2", "4", "5", "7", "20", "26"),
    "disgust": ("9", "15", "16"),
    "anger": ("4", "5", "7", "23"),
    "contempt": ("12L", "14L"),
}
_A = {name: i for i, name in enumerate(AUS)}


def prototype_matrix(num_classes: int = 8) -> torch.Tensor:
    """(num_classes, len(AUS)) 0/1 matrix of the EMFACS prototypes in canonical class order."""
    m = torch.zeros(num_classes, len(AUS))
    for c, name in enumerate(class_names(num_classes)):
        for au in PROTOTYPES[name]:
            m[c, _A[au]] = 1.0
    return m


# ---------------------------------------------------------------------------------------------------------------
# Configuration: what varies, and by how much. Domains A and B are shifted copies of the default.
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    intensity: tuple = (0.45, 1.0)      # expression intensity, uniform
    au_jitter: float = 0.3              # each active AU x U(1 - j, 1 + j/2)
    leak_prob: float = 0.25             # each inactive AU leaks in with this probability ...
    leak_max: float = 0.2               # ... at intensity U(0, leak_max)
    resting: float = 0.2                # identity's resting AU offsets up to this
    blend_prob: float = 0.15            # probability of a two-expression blend
    blend_weight: tuple = (0.2, 0.45)   # weight of the secondary expression
    yaw_deg: float = 15.0               # std of yaw, clipped to 2.2 std
    roll_deg: float = 8.0               # std of roll
    scale: tuple = (0.9, 1.05)          # face scale
    shift: float = 0.07                 # max translation (fraction of half image)
    light: float = 0.45                 # strength of a directional light gradient
    brightness: tuple = (0.75, 1.15)
    blur_prob: float = 0.2              # probability of Gaussian blur (sigma in px at 64 px, scaled with size)
    blur_sigma: tuple = (0.5, 1.3)
    noise_std: tuple = (0.0, 0.05)
    occlusion_prob: float = 0.15
    glasses_prob: float = 0.2
    skin: tuple = (0.15, 1.0)           # skin-tone range on the palette axis (dark .. light)
    grayscale_prob: float = 0.0         # chance an RGB image is rendered grey (domain B)


DEFAULT = SynthConfig()
DOMAINS = {
    "default": DEFAULT,
    # A: a posed, studio-like domain (KDEF/CK+-like): frontal, even light, strong expressions, clean images.
    "A": replace(DEFAULT, intensity=(0.6, 1.0), yaw_deg=6.0, roll_deg=3.0, light=0.15, blur_prob=0.05,
                 noise_std=(0.0, 0.015), occlusion_prob=0.0, glasses_prob=0.05, blend_prob=0.05,
                 skin=(0.55, 1.0), leak_prob=0.15),
    # B: an in-the-wild-like domain (RAF-DB/SFEW-like): wide pose, hard light, blur, occluders, subtle expressions.
    "B": replace(DEFAULT, intensity=(0.25, 0.85), yaw_deg=24.0, roll_deg=12.0, light=0.7, blur_prob=0.5,
                 noise_std=(0.02, 0.07), occlusion_prob=0.3, glasses_prob=0.3, blend_prob=0.25,
                 skin=(0.0, 0.7), grayscale_prob=0.3, scale=(0.7, 1.0), shift=0.12),
}


def _u(g, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=g)


# ---------------------------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------------------------
_SKIN_DARK = torch.tensor([0.32, 0.20, 0.14])
_SKIN_LIGHT = torch.tensor([0.98, 0.84, 0.74])
_HAIR = torch.tensor([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.55, 0.38, 0.20], [0.85, 0.72, 0.45],
                      [0.55, 0.55, 0.55], [0.50, 0.16, 0.08]])
_IRIS = torch.tensor([[0.25, 0.15, 0.08], [0.10, 0.07, 0.05], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30]])


def identity_table(ids: torch.Tensor, seed: int, cfg: SynthConfig = DEFAULT) -> dict:
    """Per-identity parameters for identity numbers `ids` (a pure function of (id, seed, domain skin range))."""
    out = {}
    rows = []
    for i in ids.tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(i) * 7919 + 17)
        r = torch.rand(32, generator=g)
        rows.append(r)
    r = torch.stack(rows) if rows else torch.zeros(0, 32)
    lerp = lambda k, lo, hi: lo + (hi - lo) * r[:, k]
    out["face_a"] = lerp(0, 0.56, 0.68)
    out["face_b"] = lerp(1, 0.74, 0.86)
    out["jaw"] = lerp(2, 0.05, 0.30)
    out["eye_x"] = lerp(3, 0.23, 0.30)
    out["eye_y"] = lerp(4, -0.16, -0.08)
    out["eye_w"] = lerp(5, 0.095, 0.13)
    out["eye_h"] = lerp(6, 0.040, 0.062)
    out["brow_gap"] = lerp(7, 0.10, 0.15)
    out["brow_thick"] = lerp(8, 0.018, 0.034)
    out["nose_len"] = lerp(9, 0.17, 0.26)
    out["nose_w"] = lerp(10, 0.045, 0.075)
    out["mouth_y"] = lerp(11, 0.38, 0.48)
    out["mouth_w"] = lerp(12, 0.16, 0.23)
    out["lip"] = lerp(13, 0.022, 0.045)
    tone = lerp(14, cfg.skin[0], cfg.skin[1])
    out["skin"] = _SKIN_DARK + (_SKIN_LIGHT - _SKIN_DARK) * tone[:, None]
    out["hair_color"] = _HAIR[(r[:, 15] * len(_HAIR)).long().clamp(max=len(_HAIR) - 1)]
    out["hair_style"] = (r[:, 16] * 4).long().clamp(max=3)          # 0 bald, 1 short, 2 long, 3 fringe
    out["iris"] = _IRIS[(r[:, 17] * len(_IRIS)).long().clamp(max=len(_IRIS) - 1)]
    out["glasses"] = r[:, 18] < cfg.glasses_prob
    out["lip_color"] = out["skin"] * torch.tensor([0.85, 0.55, 0.55]) + torch.tensor([0.12, 0.0, 0.02])
    rest = torch.zeros(len(r), len(AUS))
    # resting face: a slight AU4 (frown), AU15 (down-turned mouth) or AU12 (smiley) for some identities
    rest[:, _A["4"]] = torch.where(r[:, 19] < 0.3, r[:, 20] * cfg.resting, torch.zeros(()))
    rest[:, _A["15"]] = torch.where(r[:, 21] < 0.3, r[:, 22] * cfg.resting, torch.zeros(()))
    rest[:, _A["12"]] = torch.where(r[:, 23] < 0.25, r[:, 24] * cfg.resting, torch.zeros(()))
    out["resting"] = rest
    return out


# ---------------------------------------------------------------------------------------------------------------
# Sampling per-image parameters
# ---------------------------------------------------------------------------------------------------------------
def sample_params(n: int, *, num_classes: int = 7, seed: int = 0, identities=None, cfg: SynthConfig = DEFAULT,
                  classes_=None, balanced: bool = True) -> dict:
    """Draw labels, AU vectors, soft labels and nuisances for `n` images.

    identities: int tensor (n,) of identity numbers (default: 0..n-1 cycled over 200 ids).
    classes_: optional int tensor (n,) forcing the primary class (used by the tour's per-class grids).
    balanced: classes in near-equal shares (shuffled) rather than i.i.d. draws.
    """
    g = torch.Generator().manual_seed(seed)
    if classes_ is not None:
        label = torch.as_tensor(classes_).long()
    elif balanced:
        label = torch.arange(n) % num_classes
        label = label[torch.randperm(n, generator=g)]
    else:
        label = torch.randint(num_classes, (n,), generator=g)
    protos = prototype_matrix(8)
    intensity = _u(g, n, *cfg.intensity)
    jitter = _u(g, n * len(AUS), 1 - cfg.au_jitter, 1 + cfg.au_jitter / 2).view(n, len(AUS))
    primary = protos[label] * jitter
    # blends: a second expression (never the same class) with weight w2
    is_blend = torch.rand(n, generator=g) < cfg.blend_prob
    second = (label + 1 + torch.randint(num_classes - 1, (n,), generator=g)) % num_classes
    w2 = torch.where(is_blend, _u(g, n, *cfg.blend_weight), torch.zeros(n))
    aus = (1 - w2)[:, None] * primary + w2[:, None] * protos[second]
    aus = aus * intensity[:, None]
    leak = (torch.rand(n, len(AUS), generator=g) < cfg.leak_prob) & (aus == 0)
    aus = aus + leak * torch.rand(n, len(AUS), generator=g) * cfg.leak_max
    if identities is None:
        identities = torch.arange(n) % 200
    identities = torch.as_tensor(identities).long()
    soft = torch.zeros(n, num_classes)
    soft[torch.arange(n), label] = 1 - w2
    soft[torch.arange(n), second] += w2
    deg = math.pi / 180
    p = {
        "label": label, "aus": aus.clamp(0, 1), "intensity": intensity, "soft": soft, "identity": identities,
        "blend": is_blend, "second": second,
        "yaw": (torch.randn(n, generator=g) * cfg.yaw_deg).clamp(-2.2 * cfg.yaw_deg, 2.2 * cfg.yaw_deg) * deg,
        "roll": (torch.randn(n, generator=g) * cfg.roll_deg).clamp(-2.5 * cfg.roll_deg, 2.5 * cfg.roll_deg) * deg,
        "scale": _u(g, n, *cfg.scale),
        "tx": _u(g, n, -cfg.shift, cfg.shift), "ty": _u(g, n, -cfg.shift, cfg.shift),
        "light_angle": _u(g, n, 0, 2 * math.pi), "light": _u(g, n, 0, cfg.light),
        "brightness": _u(g, n, *cfg.brightness),
        "blur": torch.where(torch.rand(n, generator=g) < cfg.blur_prob, _u(g, n, *cfg.blur_sigma), torch.zeros(n)),
        "noise": _u(g, n, *cfg.noise_std),
        "bg": torch.rand(n, 3, generator=g) * 0.8 + 0.1, "bg2": torch.rand(n, 3, generator=g) * 0.8 + 0.1,
        "occluded": torch.rand(n, generator=g) < cfg.occlusion_prob,
        "occ_box": torch.rand(n, 4, generator=g), "occ_color": torch.rand(n, 3, generator=g),
        "gray": torch.rand(n, generator=g) < cfg.grayscale_prob,
        "noise_seed": torch.randint(2**31 - 1, (1,), generator=g),
    }
    return p


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------
def _ramp(d, soft):
    """Soft step: 1 inside (d < 0), 0 outside, linear over one `soft` width (cheaper than a sigmoid)."""
    return (0.5 - d / soft).clamp_(0, 1)


def _blend(img, mask, color):
    """Paint `color` (N, 3) over img (N, 3, H, W) where mask (N, H, W) is 1."""
    m = mask.unsqueeze(1)
    return img + m * (color[:, :, None, None] - img)


def _segment_dist(x, y, x0, y0, x1, y1):
    """Distance from points (x, y) (N, H, W) to segments (x0, y0)-(x1, y1) given per image (N, 1, 1)."""
    dx, dy = x1 - x0, y1 - y0
    t = (((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-8)).clamp(0, 1)
    return torch.sqrt((x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2 + 1e-12)


def _gaussian_blur(img, sigma_px):
    """Blur each image with its own sigma, batched by rounding sigma to 0.25 px steps."""
    out = img.clone()
    levels = (sigma_px * 4).round() / 4
    for s in levels.unique().tolist():
        if s <= 0:
            continue
        idx = (levels == s).nonzero().flatten()
        radius = max(1, int(math.ceil(2.5 * s)))
        k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * s * s))
        k = k / k.sum()
        c = img.shape[1]
        x = img[idx]
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        out[idx] = x
    return out


def render(params: dict, ident: dict, size: int = 64, return_masks: bool = False):
    """Render images for `params` (from `sample_params`) with identity rows `ident` aligned to the images.

    Returns (images float (N, 3, H, W) in [0, 1], boxes (N, 4) pixels x0 y0 x1 y1[, face masks (N, H, W)]).
    """
    n = params["label"].shape[0]
    H = W = size
    soft = 2.0 / size * 1.2                        # one pixel and a bit, in normalized units
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = lin.view(1, H, 1), lin.view(1, 1, W)
    v = lambda t: t.view(n, 1, 1)
    au = {name: v(params["aus"][:, i] + ident["resting"][:, i]).clamp(0, 1) for i, name in enumerate(AUS)}
    s, roll = v(params["scale"]), v(params["roll"])
    cos_r, sin_r = torch.cos(roll), torch.sin(roll)
    px, py = gx - v(params["tx"]), gy - v(params["ty"])
    # face coordinates: undo translation, roll and scale
    X = (cos_r * px + sin_r * py) / s
    Y = (-sin_r * px + cos_r * py) / s
    yaw = v(params["yaw"])
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    a = v(ident["face_a"]) * (0.86 + 0.14 * cy)
    b = v(ident["face_b"])
    jaw = v(ident["jaw"])

    # background: a vertical two-colour gradient
    t = (gy + 1) / 2
    img = params["bg"][:, :, None, None] * (1 - t.unsqueeze(1)) + params["bg2"][:, :, None, None] * t.unsqueeze(1)
    img = img.expand(n, 3, H, W).contiguous()

    face_shift = 0.10 * sy                          # the outline moves less than the features under yaw
    Xf = X - face_shift
    a_eff = a * (1 - jaw * (Y.clamp(min=0) / b) ** 2)
    face_d = (torch.sqrt((Xf / a_eff) ** 2 + (Y / b) ** 2) - 1) * torch.minimum(a, b)

    style = ident["hair_style"]
    hair_color = ident["hair_color"]
    # hair behind the face (long hair reaches below the ears)
    has_hair = v((style > 0).float())
    long_hair = v((style == 2).float())
    hair_d = (torch.sqrt((Xf / (a * 1.14)) ** 2 + ((Y + 0.07) / (b * 1.07)) ** 2) - 1) * a
    hair_region = _ramp(hair_d, soft) * _ramp(Y - (-0.15 + 0.75 * long_hair), soft) * has_hair
    img = _blend(img, hair_region, hair_color)

    face = _ramp(face_d, soft)
    skin = ident["skin"]
    img = _blend(img, face, skin)

    dark = lambda k: skin * k
    # features move with yaw by their depth in front of the face's vertical axis
    fx = lambda x0, depth: x0 * cy + depth * sy
    ex, ey = v(ident["eye_x"]), v(ident["eye_y"])
    ew, eh0 = v(ident["eye_w"]) * cy, v(ident["eye_h"])

    # forehead lines (AU1 + AU2) and the vertical frown lines between the brows (AU4)
    fl = (au["1"] + au["2"]) / 2
    for k, yy in enumerate((-0.40, -0.48)):
        d = _segment_dist(X, Y, fx(-0.22, 0.3), ey + yy + 0.02 * k, fx(0.22, 0.3), ey + yy + 0.02 * k)
        img = _blend(img, _ramp(d - 0.008, soft) * face * fl * 0.8, dark(0.55))
    for side in (-1, 1):
        d = _segment_dist(X, Y, fx(side * 0.035, 0.35), ey - 0.16, fx(side * 0.03, 0.35), ey - 0.06)
        img = _blend(img, _ramp(d - 0.008, soft) * face * au["4"] * 0.9, dark(0.5))

    # brows: inner end raised by AU1, outer by AU2, both lowered (and pulled together) by AU4 and AU9
    gap = v(ident["brow_gap"])
    thick = v(ident["brow_thick"])
    lower = 0.07 * au["4"] + 0.035 * au["9"]
    for side in (-1, 1):
        inner_x = side * (gap - 0.035 * au["4"])
        outer_x = side * (gap + 0.2)
        inner_y = ey - 0.12 - 0.085 * au["1"] + lower + 0.02 * au["4"]
        outer_y = ey - 0.13 - 0.075 * au["2"] + lower * 0.6 + 0.03 * au["1"] * (1 - au["2"])
        d = _segment_dist(X, Y, fx(inner_x, 0.3), inner_y, fx(outer_x, 0.25), outer_y)
        img = _blend(img, _ramp(d - thick, soft) * face, hair_color * 0.8)

    # eyes: opening raised by AU5, narrowed by AU7 (lid tightener) and AU6 (cheek raiser, lower lid up)
    opening = eh0 * (1 + 1.0 * au["5"] - 0.5 * au["7"] - 0.45 * au["6"] - 0.25 * au["9"]).clamp(min=0.15)
    lower_lift = 0.35 * au["6"] + 0.2 * au["7"]
    iris = ident["iris"]
    for side in (-1, 1):
        cx = fx(side * ex, 0.25)
        w = ew * (1 - 0.25 * sy * side)
        dy = Y - ey
        top = opening * (1 + 0.25 * au["5"])
        bottom = opening * (1 - lower_lift)
        hh = torch.where(dy < 0, top, bottom)
        ed = (torch.sqrt(((X - cx) / w) ** 2 + (dy / hh) ** 2) - 1) * hh
        eye = _ramp(ed, soft * 0.8) * face
        img = _blend(img, eye, torch.full_like(skin, 0.95))
        ir = torch.sqrt((X - cx - 0.02 * sy) ** 2 + dy ** 2)
        img = _blend(img, eye * _ramp(ir - 0.048 * cy.clamp(min=0.8), soft), iris)
        img = _blend(img, eye * _ramp(ir - 0.02, soft), torch.full_like(skin, 0.05))
        # lash line along the upper lid
        lash = _ramp((torch.sqrt(((X - cx) / w) ** 2 + (dy / hh) ** 2) - 1).abs() * hh - 0.006, soft)
        img = _blend(img, lash * face * (dy < 0.01).float(), torch.full_like(skin, 0.08))
        # cheek raise (AU6): a shaded bulge under the eye
        cd = torch.sqrt(((X - cx) / (w * 1.1)) ** 2 + ((Y - ey - 0.13) / 0.06) ** 2) - 1
        img = _blend(img, _ramp(cd * 0.06, soft * 3) * face * au["6"] * 0.5, dark(0.78))

    # nose: bridge shading, tip and nostrils; AU9 wrinkles the bridge and flares/raises the nostrils
    nl = v(ident["nose_len"])
    nw = v(ident["nose_w"]) * (1 + 0.35 * au["9"])
    tip_y = ey + nl - 0.03 * au["9"]
    d = _segment_dist(X, Y, fx(0.0, 0.45), ey + 0.05, fx(0.01, 0.6), tip_y - 0.02)
    img = _blend(img, _ramp(d - 0.012, soft * 2) * face * 0.35, dark(0.7))
    for k in range(3):
        d = _segment_dist(X, Y, fx(-0.045, 0.45), ey + 0.035 + 0.022 * k, fx(0.045, 0.45), ey + 0.03 + 0.022 * k)
        img = _blend(img, _ramp(d - 0.006, soft) * face * au["9"], dark(0.5))
    for side in (-1, 1):
        nd = torch.sqrt(((X - fx(side * nw, 0.5)) / 0.028) ** 2 + ((Y - tip_y) / 0.016) ** 2) - 1
        img = _blend(img, _ramp(nd * 0.016, soft) * face, dark(0.35))

    # mouth: corners up (AU12 / AU12L left only) or down (AU15, AU20); width +AU20 +AU12 -AU23 -AU14;
    # opening from AU26 (+AU16, and a little with a broad smile); lips thinned by AU23
    my = v(ident["mouth_y"])
    mw = v(ident["mouth_w"]) * (1 + 0.28 * au["20"] + 0.18 * au["12"] - 0.22 * au["23"] - 0.12 * au["14"]) * cy
    mx = fx(0.0, 0.35)
    t = (X - mx) / mw
    left = (t < 0).float()                            # image-left is the subject's right; "L" AUs act on t < 0
    up = 0.085 * au["12"] + 0.03 * au["14"] + left * (0.09 * au["12L"] + 0.035 * au["14L"])
    down = 0.07 * au["15"] + 0.03 * au["20"] + 0.02 * au["16"]
    corner = down - up                                # positive = corners below the centre
    centre = my + corner * t * t - 0.02 * au["9"]     # AU9 lifts the upper lip a little
    open_ = 0.01 + 0.17 * au["26"] + 0.05 * au["16"] + 0.035 * au["12"] * au["6"]
    half_open = open_ / 2 * torch.sqrt((1 - t * t).clamp(min=0))
    lip = v(ident["lip"]) * (1 - 0.6 * au["23"])
    inside_x = _ramp((t.abs() - 1) * mw, soft)
    upper_top = centre - half_open - lip * (1 - 0.4 * t * t)
    lower_bot = centre + half_open + lip * 1.25 * (1 - 0.4 * t * t)
    lips = inside_x * _ramp(upper_top - Y, soft) * _ramp(Y - lower_bot, soft) * face
    img = _blend(img, lips, ident["lip_color"])
    hole = inside_x * _ramp(centre - half_open - Y, soft) * _ramp(Y - centre - half_open, soft) * face
    img = _blend(img, hole, torch.full_like(skin, 0.12))
    teeth = hole * _ramp(Y - (centre - half_open + 0.35 * open_.clamp(max=0.06)), soft)
    img = _blend(img, teeth * (au["12"] + au["16"]).clamp(max=1), torch.full_like(skin, 0.92))
    # nasolabial folds deepen with AU6, AU9, AU12; dimples with AU14
    for side in (-1, 1):
        fold = 0.25 + 0.8 * au["12"] + 0.5 * au["9"] + 0.3 * au["6"] + (0.8 * au["12L"] if side < 0 else 0)
        d = _segment_dist(X, Y, fx(side * (nw + 0.03), 0.45), tip_y - 0.01,
                          mx + side * (mw + 0.035), my + corner - 0.01)
        img = _blend(img, _ramp(d - 0.007, soft) * face * (fold.clamp(max=1.0) * 0.6), dark(0.62))
        dimple = au["14"] + (au["14L"] if side < 0 else 0)
        dd = torch.sqrt((X - mx - side * (mw + 0.03)) ** 2 + (Y - my - corner) ** 2)
        img = _blend(img, _ramp(dd - 0.016, soft) * face * dimple.clamp(max=1) * 0.7, dark(0.6))

    # hair fringe over the forehead
    fringe = v((style == 3).float()) * _ramp(Y - (-b * 0.5 + 0.08 * (Xf / a) ** 2), soft) * face
    short_top = v((style == 1).float() + (style == 2).float()) * _ramp(Y - (-b * 0.78 + 0.15 * (Xf / a) ** 2), soft) * face
    img = _blend(img, torch.maximum(fringe, short_top), hair_color)

    # glasses: two rings and a bridge
    gl = v(ident["glasses"].float())
    for side in (-1, 1):
        cx = fx(side * ex, 0.3)
        rd = torch.sqrt(((X - cx) / (ew * 1.35)) ** 2 + ((Y - ey) / 0.085) ** 2)
        img = _blend(img, _ramp((rd - 1).abs() * 0.08 - 0.007, soft) * gl, torch.full_like(skin, 0.1))
    d = _segment_dist(X, Y, fx(-ex + ew * 1.3, 0.35), ey - 0.02, fx(ex - ew * 1.3, 0.35), ey - 0.02)
    img = _blend(img, _ramp(d - 0.008, soft) * gl, torch.full_like(skin, 0.1))

    # lighting: a directional gradient over the image, then global brightness
    la = v(params["light_angle"])
    shade = 1 + v(params["light"]) * (torch.cos(la) * gx + torch.sin(la) * gy) * 0.5
    img = img * shade.unsqueeze(1) * params["brightness"][:, None, None, None]

    # occluder (hand, scarf, cup ...): an axis-aligned rounded box over part of the face
    ob = params["occ_box"]
    ocx = params["tx"] + (ob[:, 0] - 0.5) * 0.8 * params["scale"]
    ocy = params["ty"] + (ob[:, 1] - 0.3) * 0.9 * params["scale"]
    ow, oh = 0.15 + 0.25 * ob[:, 2], 0.12 + 0.2 * ob[:, 3]
    od = torch.maximum((gx - v(ocx)).abs() - v(ow), (gy - v(ocy)).abs() - v(oh))
    occ = _ramp(od, soft) * v(params["occluded"].float())
    img = _blend(img, occ, params["occ_color"] * 0.8 + 0.1)

    blur_px = params["blur"] * size / 64.0
    if (blur_px > 0).any():
        img = _gaussian_blur(img, blur_px)
    gen = torch.Generator().manual_seed(int(params["noise_seed"][0]))
    img = img + torch.randn(img.shape, generator=gen) * params["noise"][:, None, None, None]
    gray = params["gray"]
    if gray.any():
        lum = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        img = torch.where(gray[:, None, None, None], lum.expand_as(img), img)
    img = img.clamp_(0, 1)

    # face box: bounding box of the rotated, scaled, translated face ellipse (outline shift under yaw included)
    A = params["scale"] * a.flatten()
    B = params["scale"] * b.flatten()
    r = params["roll"]
    hw = torch.sqrt((A * torch.cos(r)) ** 2 + (B * torch.sin(r)) ** 2)
    hh = torch.sqrt((A * torch.sin(r)) ** 2 + (B * torch.cos(r)) ** 2)
    shift = params["scale"] * face_shift.flatten()
    cx = params["tx"] + shift * torch.cos(r)
    cyb = params["ty"] + shift * torch.sin(r)
    to_px = lambda z: (z + 1) / 2 * size
    boxes = torch.stack([to_px(cx - hw), to_px(cyb - hh), to_px(cx + hw), to_px(cyb + hh)], 1).clamp(0, size)
    if return_masks:
        return img, boxes, face
    return img, boxes


# ---------------------------------------------------------------------------------------------------------------
# Dataset builders
# ---------------------------------------------------------------------------------------------------------------
SPLIT_IDS = {"train": (0, 400), "val": (400, 460), "test": (460, 560), "unlabeled": (560, 900),
             "web": (900, 1100), "identity": (1100, 1900)}
DEFAULT_SIZES = {"train": 6000, "val": 1000, "test": 2000, "unlabeled": 10000, "web": 4000, "identity": 8000}


def render_images(params: dict, ident: dict, size: int, channels: int, chunk: int | None = None):
    """Render in chunks sized so a chunk's pixel count stays near 64 images of 64 px (the working set then stays
    in the CPU caches: measured 1.3x faster than chunks of 256 at 64 px, 3x faster at 224 px than a fixed 64), returning uint8 (N, C, H, W) and boxes (N, 4)."""
    n = params["label"].shape[0]
    chunk = chunk or max(4, round(64 * (64 / size) ** 2))
    images = torch.empty(n, channels, size, size, dtype=torch.uint8)
    boxes = torch.empty(n, 4)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        p = {k: (v[sl] if (torch.is_tensor(v) and v.shape[:1] == (n,)) else v) for k, v in params.items()}
        if start:
            p["noise_seed"] = params["noise_seed"] + start
        idn = {k: v[sl] for k, v in ident.items()}
        img, box = render(p, idn, size)
        if channels == 1:
            img = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        images[sl] = (img * 255).round_().to(torch.uint8)
        boxes[sl] = box
    return images, boxes


def _nonfaces(n: int, size: int, channels: int, seed: int) -> torch.Tensor:
    """Non-face distractors for the web pool: textures of random ellipses, bars and gradients."""
    g = torch.Generator().manual_seed(seed)
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    gy, gx = lin.view(1, size, 1), lin.view(1, 1, size)
    img = torch.rand(n, 3, 1, 1, generator=g) * (1 + 0.5 * gx.unsqueeze(1)) * 0.8
    img = img.expand(n, 3, size, size).contiguous()
    soft = 2.0 / size
    for _ in range(6):
        c = torch.rand(n, 2, generator=g) * 2 - 1
        r = torch.rand(n, 2, generator=g) * 0.5 + 0.05
        d = torch.sqrt(((gx - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2 +
                       ((gy - c[:, 1, None, None]) / r[:, 1, None, None]) ** 2) - 1
        img = _blend(img, _ramp(d * 0.1, soft), torch.rand(n, 3, generator=g))
        k = torch.rand(n, 1, 1, generator=g) * 10
        bars = (torch.sin(k * (gx + gy)) > 0.6).float() * (torch.rand(n, 1, 1, generator=g) < 0.3)
        img = _blend(img, bars, torch.rand(n, 3, generator=g))
    img = img.clamp(0, 1)
    if channels == 1:
        img = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return (img * 255).round().to(torch.uint8)


def default_cache_dir() -> Path:
    """FERNB_CACHE, else <repo>/data/cache when the package runs from a checkout, else ~/.cache/fernb."""
    if os.environ.get("FERNB_CACHE"):
        return Path(os.environ["FERNB_CACHE"])
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "data" / "cache"
    return Path.home() / ".cache" / "fernb"


def synthfer(split: str = "train", n: int | None = None, *, size: int = 64, channels: int = 3,
             num_classes: int = 7, seed: int = 0, domain: str = "default", cache: bool = True,
             cache_dir: str | Path | None = None, num_identities: int | None = None) -> FERDataset:
    """A SynthFER split as a `FERDataset` (cached under data/cache/ after the first render).

    split: "train" | "val" | "test" (labeled; subject-independent: disjoint identity ranges), "unlabeled"
           (labels hidden, clean labels kept), "identity" (labels = identity number, for face-recognition
           pre-training; the expression is kept in meta["expression"]), "web" (see `synthfer_web`).
    domain: "default", "A" (posed, studio-like) or "B" (in-the-wild-like); A and B draw from other identities.
    """
    if split == "web":
        if domain != "default":  # the web pool is drawn from the default domain; say so rather than ignore it
            raise ValueError(f"the SynthFER web pool has only the default domain, got domain={domain!r}")
        return synthfer_web(n, size=size, channels=channels, num_classes=num_classes, seed=seed, cache=cache,
                            cache_dir=cache_dir)
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown SynthFER split {split!r}; expected one of {', '.join(SPLIT_IDS)}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown SynthFER domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if not 48 <= size <= 224:
        raise ValueError(f"SynthFER renders 48..224 px images, got size={size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    n = n or DEFAULT_SIZES[split]
    args = dict(split=split, n=n, size=size, channels=channels, num_classes=num_classes, seed=seed, domain=domain,
                num_identities=num_identities, version=VERSION)
    path = None
    if cache:
        key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
        path = Path(cache_dir or default_cache_dir()) / f"synthfer-{split}-{domain}-{key}.pt"
        if path.is_file():
            return FERDataset.load(path)
    cfg = DOMAINS[domain]
    lo, hi = SPLIT_IDS[split]
    if num_identities is not None:
        hi = lo + num_identities
    # domains use their own identity numbers (offset), so A, B and default never share a person
    offset = {"default": 0, "A": 10_000, "B": 20_000}[domain]
    split_seed = seed * 1009 + {"train": 1, "val": 2, "test": 3, "unlabeled": 4, "identity": 5}[split] * 97 + offset
    g = torch.Generator().manual_seed(split_seed)
    ids = lo + torch.randint(hi - lo, (n,), generator=g)
    if split == "identity":
        ids = lo + torch.arange(n) % (hi - lo)
    params = sample_params(n, num_classes=num_classes, seed=split_seed, identities=ids, cfg=cfg)
    uniq, inverse = ids.unique(return_inverse=True)
    table = identity_table(uniq + offset, seed, cfg)
    ident = {k: v[inverse] for k, v in table.items()}
    images, boxes = render_images(params, ident, size, channels)
    labels = params["label"].clone()
    classes = class_names(num_classes)
    meta = {"aus": params["aus"], "intensity": params["intensity"], "yaw": params["yaw"], "roll": params["roll"],
            "blend": params["blend"], "occluded": params["occluded"], "blur": params["blur"]}
    if split == "unlabeled":
        labels = torch.full_like(labels, UNLABELED)
    if split == "identity":
        meta["expression"] = params["label"].clone()
        labels = ids - lo
        classes = tuple(f"id{i:04d}" for i in range(hi - lo))
    ds = FERDataset(images=images, labels=labels, classes=classes,
                    clean_labels=params["label"].clone() if split != "identity" else labels.clone(),
                    soft_labels=params["soft"] if split != "identity" else None, boxes=boxes, identities=ids,
                    meta=meta, name=f"synthfer-{split}" + ("" if domain == "default" else f"-{domain}"),
                    info={"source": "SynthFER", "split": split, "domain": domain, "seed": seed, "version": VERSION})
    if path is not None:
        ds.save(path)
    return ds


def synthfer_web(n: int | None = None, *, size: int = 64, channels: int = 3, num_classes: int = 7, seed: int = 0,
                 noise_rate: float = 0.4, nonface_fraction: float = 0.2, cache: bool = True,
                 cache_dir=None) -> FERDataset:
    """A noisy "web" pool: faces whose given label is wrong with probability `noise_rate` (symmetric), plus
    `nonface_fraction` non-face distractors carrying random labels (is_face False, clean label -1)."""
    from .splits import inject_label_noise

    n = n or DEFAULT_SIZES["web"]
    n_nonface = int(round(n * nonface_fraction))
    faces = synthfer("unlabeled", n - n_nonface, size=size, channels=channels, num_classes=num_classes,
                     seed=seed + 7, cache=cache, cache_dir=cache_dir)
    clean = faces.clean_labels
    noisy = inject_label_noise(clean, noise_rate, num_classes=num_classes, kind="symmetric", seed=seed)
    g = torch.Generator().manual_seed(seed + 11)
    junk = _nonfaces(n_nonface, size, channels, seed + 13)
    images = torch.cat([faces.images, junk])
    labels = torch.cat([noisy, torch.randint(num_classes, (n_nonface,), generator=g)])
    clean_all = torch.cat([clean, torch.full((n_nonface,), UNLABELED)])
    perm = torch.randperm(n, generator=g)
    is_face = torch.cat([torch.ones(n - n_nonface, dtype=torch.bool), torch.zeros(n_nonface, dtype=torch.bool)])
    return FERDataset(images=images[perm], labels=labels[perm], classes=class_names(num_classes),
                      clean_labels=clean_all[perm], is_face=is_face[perm], name="synthfer-web",
                      info={"source": "SynthFER", "split": "web", "noise_rate": noise_rate,
                            "nonface_fraction": nonface_fraction, "seed": seed})


def render_face(aus: dict | None = None, *, identity: int = 0, size: int = 128, yaw_deg: float = 0.0,
                roll_deg: float = 0.0, seed: int = 0, clean: bool = True, channels: int = 3) -> torch.Tensor:
    """One face for explanation and widgets: AU intensities by name (e.g. {"6": 1, "12": 1}) -> float (C, H, W).

    clean=True turns off lighting, blur, noise and occluders so only the AUs and pose change the picture.
    """
    aus = aus or {}
    unknown = set(aus) - set(AUS)
    if unknown:
        raise ValueError(f"unknown AUs {sorted(unknown)}; known: {', '.join(AUS)}")
    cfg = replace(DEFAULT, light=0.0, blur_prob=0.0, noise_std=(0.0, 0.0), occlusion_prob=0.0) if clean else DEFAULT
    p = sample_params(1, num_classes=8, seed=seed, identities=torch.tensor([identity]), cfg=cfg,
                      classes_=torch.tensor([0]))
    p["aus"] = torch.tensor([[float(aus.get(k, 0.0)) for k in AUS]])
    p["yaw"], p["roll"] = torch.tensor([yaw_deg * math.pi / 180]), torch.tensor([roll_deg * math.pi / 180])
    if clean:
        p.update(scale=torch.tensor([0.95]), tx=torch.zeros(1), ty=torch.zeros(1), brightness=torch.ones(1))
    ident = identity_table(torch.tensor([identity]), seed, cfg)
    if clean:
        ident["resting"] = torch.zeros_like(ident["resting"])
    img, _ = render(p, ident, size)
    if channels == 1:
        img = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return img[0]


def prototype_table():
    """The AU prototype table as a pandas DataFrame (rows: classes, columns: AU number and name)."""
    import pandas as pd

    rows = []
    for name in CLASSES_8:
        rows.append({"expression": name, "AUs": " + ".join(PROTOTYPES[name]) or "(none)",
                     "what moves": "; ".join(AU_NAMES[a] for a in PROTOTYPES[name]) or "resting face"})
    return pd.DataFrame(rows)
