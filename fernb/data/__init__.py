"""Datasets: SynthFER (embedded), real-dataset readers, splits, batched augmentation; all return `FERDataset`.

`load_splits(dataset, data_root, size=, channels=, seed=, n_train=, n_val=, n_test=)` is the one entry point the
notebooks use for train / val / test of any dataset, SynthFER or real (see `fernb.data.sources`);
`has_clean_labels(ds)` says whether a dataset's clean labels are the truth (SynthFER) or only the annotators' labels.
"""
from .dataset import UNLABELED, FERDataset
from .labels import CLASSES_7, CLASSES_8, classes
from .sources import DATASETS, SPLIT_RULES, Splits, has_clean_labels, load_splits

__all__ = ["FERDataset", "UNLABELED", "CLASSES_7", "CLASSES_8", "classes", "load_splits", "Splits", "SPLIT_RULES",
           "has_clean_labels", "DATASETS"]
