"""Face boxes for FaceMix's kappa (SSFER Eq. 8-9), from three sources.

* "truth": SynthFER knows every face box (the bounding box of the rendered, rotated face ellipse).
* "annotation": a dataset's own boxes, mapped into the frame of the stored image. AffectNet ships one box per
  image, but its reader crops each image to that box before resizing (as the protocol does), so in the stored
  image the annotated box is the whole frame for every image: kappa would be 0 for every pair and FaceMix would
  reduce to Mixup. `face_boxes(source="auto")` therefore uses the detector on such crops.
* "haar": OpenCV's frontal-face Haar cascade, which opencv-python-headless ships in `cv2.data.haarcascades`
  (nothing is downloaded). The paper used yolo-face; a Haar cascade is the detector that installs from PyPI with
  its weights. Images are upscaled to `detect_size` before detection (the cascade's 24 px window misses faces in
  48-64 px images); the largest detection is kept. An image with no detection gets the whole frame as its box
  (the aligned-crop assumption: a FER image is a face crop), and `detection_rate` reports how often that happened.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dataset import FERDataset

__all__ = ["FaceBoxes", "haar_boxes", "face_boxes", "full_frame_boxes"]

SOURCES = ("auto", "truth", "annotation", "haar")


@dataclass
class FaceBoxes:
    boxes: torch.Tensor          # float32 (N, 4) x0, y0, x1, y1 in the stored image's pixels
    found: torch.Tensor          # bool (N,): the source gave a box (False: whole-frame fallback)
    source: str

    @property
    def detection_rate(self) -> float:
        return float(self.found.float().mean()) if len(self.found) else float("nan")


def full_frame_boxes(n: int, size: int) -> torch.Tensor:
    return torch.tensor([0.0, 0.0, float(size), float(size)]).repeat(n, 1)


def _cascade():
    import cv2

    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load its bundled Haar cascade {path}")
    return cascade


def haar_boxes(images: torch.Tensor, detect_size: int = 160, scale_factor: float = 1.1,
               min_neighbors: int = 3) -> FaceBoxes:
    """Detect one face per uint8 image (N, C, H, W) with OpenCV's bundled frontal-face Haar cascade."""
    import cv2

    cascade = _cascade()
    n, c, h, w = images.shape
    boxes = full_frame_boxes(n, w)
    boxes[:, 3] = float(h)
    found = torch.zeros(n, dtype=torch.bool)
    sx, sy = w / detect_size, h / detect_size
    arr = images.cpu().numpy()
    for i in range(n):
        img = arr[i].transpose(1, 2, 0)
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if c == 3 else img[..., 0]
        gray = cv2.resize(np.ascontiguousarray(gray), (detect_size, detect_size), interpolation=cv2.INTER_LINEAR)
        gray = cv2.equalizeHist(gray)
        faces = cascade.detectMultiScale(gray, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                         minSize=(detect_size // 4, detect_size // 4))
        if len(faces):
            x, y, bw, bh = max(faces, key=lambda f: f[2] * f[3])
            boxes[i] = torch.tensor([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy], dtype=torch.float32)
            found[i] = True
    return FaceBoxes(boxes, found, "haar")


def _boxes_are_crops(data: FERDataset) -> bool:
    return "original-image pixels" in str(data.info.get("boxes", ""))


def face_boxes(data: FERDataset, source: str = "auto", **haar_kwargs) -> FaceBoxes:
    """The face box of every row of `data` in its stored image's frame (see the module docstring).

    auto: SynthFER's truth when the data is SynthFER; the dataset's annotations when they are in the stored frame;
    otherwise the Haar cascade."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    n, size = len(data), data.image_size
    synthetic = data.info.get("source") == "SynthFER" and data.boxes is not None
    if source == "auto":
        if synthetic:
            source = "truth"
        elif data.boxes is not None and not _boxes_are_crops(data):
            source = "annotation"
        else:
            source = "haar"
    if source == "truth":
        if not synthetic:
            raise ValueError(f"{data.name}: true face boxes exist only for SynthFER")
        return FaceBoxes(data.boxes.float().cpu().clone(), torch.ones(n, dtype=torch.bool), "truth")
    if source == "annotation":
        if data.boxes is None:
            raise ValueError(f"{data.name} has no face-box annotations")
        if _boxes_are_crops(data):   # each stored image is its annotated box, resized: the box is the frame
            return FaceBoxes(full_frame_boxes(n, size), torch.ones(n, dtype=torch.bool), "annotation (crop frame)")
        return FaceBoxes(data.boxes.float().cpu().clone(), torch.ones(n, dtype=torch.bool), "annotation")
    return haar_boxes(data.images, **haar_kwargs)
