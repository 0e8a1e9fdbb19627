"""The errors a real-dataset reader raises. Every message names the file (and line, where there is one) and, for
layout problems, the expected layout; nothing is dropped silently.

Per-image problems (`MissingImageError`, `CorruptImageError`, `BadFaceBoxError`) carry a ``reason``: with
``skip_bad=True`` a reader skips those images instead of raising and counts them per reason in
``info["skipped_reasons"]``. Label and layout problems always raise.
"""
from __future__ import annotations

from .labels import UnknownLabelError

__all__ = ["DatasetError", "DatasetNotFoundError", "DatasetLayoutError", "MissingImageError", "CorruptImageError",
           "BadPixelRowError", "BadFaceBoxError", "UnknownLabelError", "SKIPPABLE", "REASONS"]


class DatasetError(Exception):
    """Base class of the reader errors (UnknownLabelError, from labels.py, is a ValueError)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset root does not exist (the message names the path tried and the expected layout)."""


class DatasetLayoutError(DatasetError, ValueError):
    """The root exists but does not hold the official layout: a missing label file, a malformed line or row, a
    label file in an encoding that cannot be read, an image listed but absent."""


class MissingImageError(DatasetLayoutError):
    """An image a label file lists is not on disk (skipped, under reason "missing image", with skip_bad=True)."""

    reason = "missing image"


class CorruptImageError(DatasetError, ValueError):
    """An image PIL cannot decode (corrupt, truncated, an unsupported mode), or a FER2013 pixel row that is not
    48x48 values 0..255."""

    reason = "unreadable image"


class BadPixelRowError(CorruptImageError):
    """A FER2013 / FERPlus csv row whose ``pixels`` field is not 2304 integers 0..255."""

    reason = "bad pixel row"


class BadFaceBoxError(DatasetError, ValueError):
    """A face box (AffectNet) that is empty or lies outside its image: the image is fine, the annotation is not."""

    reason = "face box outside image"


# What `skip_bad=True` may skip, and the reason each is counted under in info["skipped_reasons"].
SKIPPABLE = (MissingImageError, BadPixelRowError, CorruptImageError, BadFaceBoxError)
REASONS = {cls.__name__: cls for cls in SKIPPABLE}
