"""Datasets: SynthFER (embedded), real-dataset readers, splits, batched augmentation; all return `FERDataset`.

`load_splits(dataset, data_root, size=, channels=, seed=, n_train=, n_val=, n_test=)` is the one entry point the
notebooks use for train / val / test of any dataset, SynthFER or real (see `fernb.data.sources`);
`has_clean_labels(ds)` says whether a dataset's clean labels are the truth (SynthFER) or only the annotators' labels.
These two (and `Splits`, `SPLIT_RULES`, `DATASETS`) are imported from `fernb.data.sources` on first use, so
`import fernb.data`, and of any of its modules that does not need them itself (`labels`, `dataset`, `synthfer`,
...), loads neither scikit-learn nor PIL.
"""
from .dataset import UNLABELED, FERDataset
from .labels import CLASSES_7, CLASSES_8, classes

_FROM_SOURCES = ("load_splits", "Splits", "SPLIT_RULES", "has_clean_labels", "DATASETS")

__all__ = ["FERDataset", "UNLABELED", "CLASSES_7", "CLASSES_8", "classes", *_FROM_SOURCES]


def __getattr__(name):
    if name in _FROM_SOURCES:
        from . import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
