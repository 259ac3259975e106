"""Loading a registered dataset (:mod:`cluctl.data.registry`): ``load_dataset(spec)`` ->
``Dataset``, cached per process; pre-processing and the fingerprint shared by all.

Specs
    ``digits``    scikit-learn's ``load_digits`` (1797 8x8 grey images, 10 classes,
                  pixel values 0..16 divided by 16). Ships with scikit-learn, no download.
    ``cifar10``   CIFAR-10 (3 x 32 x 32, 10 classes), see ``cluctl.data.cifar``.
    ``cifar100``  CIFAR-100 (3 x 32 x 32, 100 fine classes).
    ``npz:PATH``  your own arrays, see ``cluctl.data.npz``.

The CIFAR files are looked for under ``data_root``, else ``$CLUCTL_DATA``, else
``~/.cache/cluctl/data``; ``download=True`` fetches them when missing.

Digits train/test split (fixed, stratified, independent of any run seed)
    One ``rng = numpy.random.default_rng(12345)``; for each class ``c`` in ascending
    order, the indices of class ``c`` (in dataset order) are permuted with
    ``rng.permutation`` and the first ``floor(0.75 * n_c + 0.5)`` go to train, the rest
    to test; both index lists are then sorted ascending. That gives 1350 train and
    447 test images.

Pre-processing
    Pixels are scaled to [0, 1] and then normalised per channel with the *training*
    set's mean and (population) standard deviation; the test set uses the training
    statistics. A channel with zero spread keeps std 1.

Fingerprint
    ``sha256`` over ``b"cluctl-dataset-v1\\0"`` then, for x_train, y_train, x_test,
    y_test in that order, ``"<key>:<dtype.str>:<shape>\\0"`` and the array's raw
    C-order bytes, taken *before* any scaling or normalisation (digits: the
    float64 0..16 images; CIFAR: the uint8 N x 3 x 32 x 32 pixels and int64
    labels; npz: the arrays exactly as stored).

Task counts (``Dataset.default_tasks``)
    digits 5, cifar10 5, cifar100 20; npz: ``num_classes // 2`` if the class count
    is even (two classes per task), else ``num_classes`` (one class per task).

``load_dataset`` caches per process: the same spec (and, for CIFAR, the same
resolved data root) returns the same ``Dataset`` object. ``clear_cache()`` empties it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cluctl.data import registry
from cluctl.data.registry import default_model

__all__ = [
    "DATASET_NAMES",
    "DIGITS_SPLIT_SEED",
    "Dataset",
    "clear_cache",
    "default_data_root",
    "default_model",
    "digits_split",
    "fingerprint_arrays",
    "load_dataset",
]

DATASET_NAMES = registry.choices()  # "digits, cifar10, cifar100 or npz:PATH", from the registry
DIGITS_SPLIT_SEED = 12345



@dataclass(eq=False)
class Dataset:
    """A loaded dataset. Cached and shared within the process: do not modify its tensors in place."""

    name: str  # "digits", "cifar100", "cifar10", "npz:/abs/path.npz"
    x_train: torch.Tensor  # float32 N x C x H x W, normalised
    y_train: torch.Tensor  # int64 N
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    fingerprint: str  # sha256 hex of the raw arrays
    mean: tuple[float, ...]  # per channel, of the [0,1]-scaled training pixels
    std: tuple[float, ...]
    default_tasks: int

    @property
    def default_model(self) -> str:
        return registry.default_model(self.name)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"fingerprint={self.fingerprint[:12]}...)"
        )


_CACHE: dict[tuple, Dataset] = {}


def clear_cache() -> None:
    """Forget every loaded dataset (the next ``load_dataset`` reads the files again)."""
    _CACHE.clear()


def default_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """``data_root``, else ``$CLUCTL_DATA``, else ``~/.cache/cluctl/data`` (absolute)."""
    if data_root is not None and str(data_root) != "":
        root = Path(data_root)
    elif os.environ.get("CLUCTL_DATA"):
        root = Path(os.environ["CLUCTL_DATA"])
    else:
        root = Path("~/.cache/cluctl/data")
    return root.expanduser().absolute()


def fingerprint_arrays(arrays: Sequence[tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256(b"cluctl-dataset-v1\0")
    for key, arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(f"{key}:{arr.dtype.str}:{tuple(int(d) for d in arr.shape)}\0".encode())
        h.update(arr.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def digits_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified 75/25 split of ``y`` (see module docstring). Returns sorted index arrays."""
    y = np.asarray(y)
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        perm = rng.permutation(idx)
        n_train = int(np.floor(0.75 * len(idx) + 0.5))
        train.append(perm[:n_train])
        test.append(perm[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _normalise(x_train: torch.Tensor, x_test: torch.Tensor):
    """In place: per-channel standardisation with the training statistics."""
    means, stds = [], []
    for c in range(x_train.shape[1]):
        xc = x_train[:, c]
        m = float(xc.mean(dtype=torch.float64))
        v = float((xc - m).square().mean(dtype=torch.float64))
        s = v**0.5
        if not s > 1e-12:
            s = 1.0
        means.append(m)
        stds.append(s)
    mean_t = torch.tensor(means, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(stds, dtype=torch.float32).view(1, -1, 1, 1)
    x_train.sub_(mean_t).div_(std_t)
    x_test.sub_(mean_t).div_(std_t)
    return tuple(means), tuple(stds)


def _build(name, raw, x_train, y_train, x_test, y_test, num_classes, default_tasks) -> Dataset:
    fp = fingerprint_arrays([(k, raw[k]) for k in ("x_train", "y_train", "x_test", "y_test")])
    xtr = torch.as_tensor(np.ascontiguousarray(x_train), dtype=torch.float32).contiguous()
    xte = torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32).contiguous()
    if xtr.data_ptr() == xte.data_ptr():  # never normalise the same memory twice
        xte = xte.clone()
    mean, std = _normalise(xtr, xte)
    return Dataset(
        name=name,
        x_train=xtr,
        y_train=torch.as_tensor(np.ascontiguousarray(y_train), dtype=torch.int64),
        x_test=xte,
        y_test=torch.as_tensor(np.ascontiguousarray(y_test), dtype=torch.int64),
        num_classes=int(num_classes),
        fingerprint=fp,
        mean=mean,
        std=std,
        default_tasks=int(default_tasks),
    )


def load_dataset(spec: str, data_root: str | os.PathLike | None = None, download: bool = False) -> Dataset:
    """Load (once per process) the dataset named by ``spec`` (a registered dataset:
    :mod:`cluctl.data.registry`); see the module docstring."""
    kind, arg = registry.lookup(spec)
    if kind.path_arg:
        arg = os.path.abspath(os.path.expanduser(arg))
        key: tuple = (kind.name, arg)
    elif kind.uses_data_root:
        arg = str(default_data_root(data_root))
        key = (kind.name, arg)
    else:
        key = (kind.name,)
    ds = _CACHE.get(key)
    if ds is not None:
        return ds
    ds = kind.load(arg, data_root, download)
    _CACHE[key] = ds
    return ds
