"""Canonical class order shared by every dataset in fernb, and each dataset's own label map onto it.

The order follows AffectNet's (and the FUCLE paper's) listing of the basic expressions, with contempt last so
that the 7-class problem is simply the first seven indices of the 8-class one:

    0 neutral, 1 happiness, 2 sadness, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt

Every reader maps its official label codes through one of the dictionaries below; an unknown code is an error
(`UnknownLabelError`), never a silent drop.
"""
from __future__ import annotations

CLASSES_8 = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
CLASSES_7 = CLASSES_8[:7]
SHORT = {"neutral": "NE", "happiness": "HA", "sadness": "SA", "surprise": "SU", "fear": "FE",
         "disgust": "DI", "anger": "AN", "contempt": "CO"}


def classes(num_classes: int = 7) -> tuple[str, ...]:
    """The canonical class names for a 7- or 8-class problem."""
    if num_classes == 7:
        return CLASSES_7
    if num_classes == 8:
        return CLASSES_8
    raise ValueError(f"num_classes must be 7 or 8 (basic expressions, optionally + contempt), got {num_classes}")


def index(name: str) -> int:
    """Canonical index of a class name (case-insensitive; accepts common synonyms such as 'happy', 'angry')."""
    key = SYNONYMS.get(name.strip().lower(), name.strip().lower())
    if key not in CLASSES_8:
        raise UnknownLabelError(f"unknown expression name {name!r}; expected one of {', '.join(CLASSES_8)}")
    return CLASSES_8.index(key)


class UnknownLabelError(ValueError):
    """A label code or name that has no place in the canonical class order."""


SYNONYMS = {
    "happy": "happiness", "sad": "sadness", "surprised": "surprise", "afraid": "fear", "fearful": "fear",
    "disgusted": "disgust", "angry": "anger", "contemptuous": "contempt",
}

# Official code -> canonical index, one map per dataset (documented in each reader and in data/README.md).
RAFDB = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}          # 1 Surprise 2 Fear 3 Disgust 4 Happiness 5 Sadness 6 Anger 7 Neutral
FER2013 = {0: 6, 1: 5, 2: 4, 3: 1, 4: 2, 5: 3, 6: 0}        # 0 Angry 1 Disgust 2 Fear 3 Happy 4 Sad 5 Surprise 6 Neutral
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
AFFECTNET = {i: i for i in range(8)}                         # 0 Neutral 1 Happy 2 Sad 3 Surprise 4 Fear 5 Disgust 6 Anger 7 Contempt
AFFECTNET_NON_EXPRESSION = {8: "none", 9: "uncertain", 10: "non-face"}
KDEF = {"NE": 0, "HA": 1, "SA": 2, "SU": 3, "AF": 4, "DI": 5, "AN": 6}
SFEW = {"Neutral": 0, "Happy": 1, "Sad": 2, "Surprise": 3, "Fear": 4, "Disgust": 5, "Angry": 6}
CKPLUS = {0: 0, 1: 6, 2: 7, 3: 5, 4: 4, 5: 1, 6: 2, 7: 3}   # 0 neutral 1 anger 2 contempt 3 disgust 4 fear 5 happy 6 sadness 7 surprise
