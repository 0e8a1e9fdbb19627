"""Datasets: SynthFER (embedded), real-dataset readers, splits, batched augmentation; all return `FERDataset`."""
from .dataset import UNLABELED, FERDataset
from .labels import CLASSES_7, CLASSES_8, classes

__all__ = ["FERDataset", "UNLABELED", "CLASSES_7", "CLASSES_8", "classes"]
