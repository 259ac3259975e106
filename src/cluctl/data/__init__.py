"""Datasets and their split into tasks.

    from cluctl.data import load_dataset, class_order, task_classes, task_indices
    ds = load_dataset("digits")                # or "cifar10", "cifar100", "npz:PATH"
    order = class_order(ds.num_classes, seed)
    cls = task_classes(order, ds.default_tasks, task=0, dataset=ds.name)
    idx = task_indices(ds.y_train, cls)

A dataset is one module of this package registered in :mod:`cluctl.data.registry` (digits:
:mod:`.digits`; CIFAR-10/100: :mod:`.cifar`; your arrays: :mod:`.npz`);
:mod:`.datasets` holds the loaded :class:`Dataset`, the cache, normalisation and the
fingerprint. Names are imported on first use, so reading the registry (the CLI's help)
does not load torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DATASET_NAMES": "datasets", "Dataset": "datasets", "clear_cache": "datasets", "default_data_root": "datasets",
    "digits_split": "datasets", "fingerprint_arrays": "datasets", "load_dataset": "datasets",
    "default_model": "registry", "class_order": "tasks", "task_classes": "tasks", "task_indices": "tasks",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'cluctl.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cluctl.data.{mod}"), name)
