"""Datasets and their split into tasks.

    from cluctl.data import load_dataset, class_order, task_classes, task_indices
    ds = load_dataset("digits")                # or "cifar10", "cifar100", "npz:PATH"
    order = class_order(ds.num_classes, seed)
    cls = task_classes(order, ds.default_tasks, task=0, dataset=ds.name)
    idx = task_indices(ds.y_train, cls)

See ``cluctl.data.datasets`` (registry, split, normalisation, fingerprint),
``cluctl.data.cifar`` and ``cluctl.data.npz`` (file formats).
"""

from cluctl.data.datasets import (
    DATASET_NAMES,
    Dataset,
    clear_cache,
    default_data_root,
    default_model,
    digits_split,
    fingerprint_arrays,
    load_dataset,
)
from cluctl.data.tasks import class_order, task_classes, task_indices

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "class_order",
    "clear_cache",
    "default_data_root",
    "default_model",
    "digits_split",
    "fingerprint_arrays",
    "load_dataset",
    "task_classes",
    "task_indices",
]
