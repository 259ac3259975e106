"""CIFAR-10 / CIFAR-100 from the official "python version" files.

Layout and file names are torchvision's (``torchvision.datasets.CIFAR10`` /
``CIFAR100``, read from those classes): under the data root,
``cifar-10-batches-py/data_batch_1..5`` + ``test_batch`` and
``cifar-100-python/train`` + ``test``. Each file is a pickled dict with
``data`` (uint8, N x 3072, channel-major 3 x 32 x 32 rows) and ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100), read with ``encoding="latin1"``
exactly like torchvision. The ``batches.meta`` / ``meta`` files (class names)
are not needed and not read.

Differences from torchvision, on purpose:

* The files are unpickled by a *restricted* unpickler that only resolves the
  handful of numpy globals an ndarray needs (``_reconstruct``, ``ndarray``,
  ``dtype``, ``_frombuffer``, ``scalar``, ``_codecs.encode``); anything else in a
  file is refused, so a tampered file cannot run code.
* The per-file md5 check is replaced by an existence check plus structural
  validation (dtype, shape, label range), so any file in the official format
  loads, including small fixtures, and a bad file is reported by name as one
  ``UsageError`` line.
* ``download=True`` fetches the official archive through torchvision's
  ``download_and_extract_archive`` (which does verify the archive's md5).
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cluctl.errors import NotFound, UsageError

__all__ = ["CifarInfo", "cifar_info", "read_cifar", "read_cifar_file"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 name, no warning
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class CifarInfo:
    label: str  # "CIFAR-10"
    folder: str  # "cifar-10-batches-py"
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    num_classes: int
    url: str
    archive: str
    archive_md5: str


def cifar_info(name: str) -> CifarInfo:
    """File layout of ``cifar10`` / ``cifar100``, taken from torchvision's classes."""
    from torchvision.datasets import CIFAR10, CIFAR100  # lazy: slow import

    cls, label, num_classes = {
        "cifar10": (CIFAR10, "CIFAR-10", 10),
        "cifar100": (CIFAR100, "CIFAR-100", 100),
    }[name]
    return CifarInfo(
        label=label,
        folder=cls.base_folder,
        train_files=tuple(f for f, _ in cls.train_list),
        test_files=tuple(f for f, _ in cls.test_list),
        num_classes=num_classes,
        url=cls.url,
        archive=cls.filename,
        archive_md5=cls.tgz_md5,
    )


def _missing(root: Path, info: CifarInfo) -> list[str]:
    folder = root / info.folder
    return [f for f in info.train_files + info.test_files if not (folder / f).is_file()]


def _not_found(root: Path, info: CifarInfo, missing: list[str]) -> NotFound:
    folder = root / info.folder
    if not folder.is_dir():
        what = f"{info.label} not found under {root} (expected {folder})"
    else:
        what = f"{info.label} not found under {root} ({folder} lacks {', '.join(missing)})"
    return NotFound(
        what,
        "pass --download to fetch it (needs internet) or --data-root DIR pointing at a folder that has it",
    )


def _download(root: Path, info: CifarInfo) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(
            info.url, download_root=str(root), filename=info.archive, md5=info.archive_md5
        )
    except Exception as exc:  # network, disk, md5: all one line for the user
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise NotFound(
            f"could not download {info.label} from {info.url} into {root}: {reason}",
            f"check the internet connection, or put the extracted {info.folder} folder "
            "under a directory and pass --data-root DIR",
        ) from None


def read_cifar_file(path: Path, label: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 N x 3 x 32 x 32, int64 N). One-line UsageError if bad."""
    hint = f"delete it and load with --download, or restore the original {label} files"
    try:
        with open(path, "rb") as fh:
            entry = _RestrictedUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise UsageError(f"cannot read {label} file {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise UsageError(
            f"{label} file {path} is corrupt or truncated ({type(exc).__name__}: {reason})", hint
        ) from None

    def bad(problem: str) -> UsageError:
        return UsageError(f"{label} file {path} is not in the CIFAR format: {problem}", hint)

    if not isinstance(entry, dict):
        raise bad(f"expected a pickled dict, got {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry:
        raise bad("no 'data' entry")
    # torchvision: "labels" if present, else "fine_labels"
    key = "labels" if "labels" in entry else "fine_labels"
    if key not in entry:
        raise bad("no 'labels' / 'fine_labels' entry")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise bad(f"'data' must be a uint8 N x 3072 array, got {desc}")
    try:
        labels = np.asarray(entry[key])
    except Exception:
        raise bad(f"'{key}' is not a list of integers") from None
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise bad(f"'{key}' is not a list of integers")
    if len(labels) != len(data):
        raise bad(f"{len(data)} images but {len(labels)} labels")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise bad(f"labels must be in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar(name: str, root: str | os.PathLike, download: bool = False):
    """Read ``cifar10`` / ``cifar100`` under ``root``.

    Returns ``(info, x_train, y_train, x_test, y_test)`` with x uint8 N x 3 x 32 x 32
    and y int64. Missing files: ``NotFound`` (after trying a download if asked).
    """
    info = cifar_info(name)
    root = Path(root).expanduser().absolute()
    missing = _missing(root, info)
    if missing and download:
        _download(root, info)
        missing = _missing(root, info)
    if missing:
        raise _not_found(root, info, missing)

    folder = root / info.folder
    out = []
    for files in (info.train_files, info.test_files):
        xs, ys = [], []
        for f in files:
            x, y = read_cifar_file(folder / f, info.label, info.num_classes)
            xs.append(x)
            ys.append(y)
        out.append(np.concatenate(xs) if len(xs) > 1 else xs[0])
        out.append(np.concatenate(ys) if len(ys) > 1 else ys[0])
    x_train, y_train, x_test, y_test = out
    if len(x_train) == 0 or len(x_test) == 0:
        raise UsageError(f"{info.label} under {folder} has an empty training or test set")
    return info, x_train, y_train, x_test, y_test


# ---------------------------------------------------------------- registration


def _loader(name: str):
    def load(arg: str, data_root, download: bool):
        import torch

        from .datasets import _build

        info, x_train, y_train, x_test, y_test = read_cifar(name, arg, download=download)
        raw = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        xtr = torch.from_numpy(np.ascontiguousarray(x_train)).to(torch.float32).div_(255.0)
        xte = torch.from_numpy(np.ascontiguousarray(x_test)).to(torch.float32).div_(255.0)
        return _build(name, raw, xtr, y_train, xte, y_test, info.num_classes, 20 if name == "cifar100" else 5)

    return load


def _checker(name: str):
    def check(data_root) -> None:
        from .datasets import default_data_root

        info = cifar_info(name)
        root = default_data_root(data_root)
        missing = _missing(root, info)
        if missing:
            raise _not_found(root, info, missing)

    return check


def _register() -> None:
    from .registry import DatasetKind, register

    register(DatasetKind("cifar10", _loader("cifar10"), help="torchvision's CIFAR-10 files under --data-root",
                         classes=10, default_tasks=5, default_model="resnet18", check=_checker("cifar10"),
                         uses_data_root=True, order=20))
    register(DatasetKind("cifar100", _loader("cifar100"), help="torchvision's CIFAR-100 files under --data-root",
                         classes=100, default_tasks=20, default_model="resnet18", check=_checker("cifar100"),
                         uses_data_root=True, order=30))


_register()
