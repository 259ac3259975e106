"""The dataset registry: a dataset is one module of ``cluctl.data`` that registers a
:class:`DatasetKind` (its name, classes, default number of tasks, default model, help line,
loader, and the check launch runs before any work). Everything else (the ``--dataset``
choices and help, launch's early checks, the classes a results folder's plots assume, the
default model) is derived from here. This module and the dataset modules' top levels stay
light (no torch): the CLI reads the registry without loading torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from ..errors import UsageError


@dataclass(frozen=True)
class DatasetKind:
    """``load(arg, data_root, download) -> Dataset`` (``arg``: the path of ``name:PATH``
    datasets, else ""); ``check(data_root)`` raises a one-line error when files are missing
    (launch calls it before registering anything; not called with ``--download``)."""

    name: str
    load: Callable
    help: str = ""
    classes: int | None = None  # None: known only once loaded (e.g. npz files)
    default_tasks: int | None = None
    default_model: str = "resnet18"
    path_arg: bool = False  # spelled "name:PATH"
    check: Callable | None = None
    uses_data_root: bool = False  # files under --data-root (the cache key includes it)
    order: int = 100


REGISTRY: dict[str, DatasetKind] = {}
_LOADED = False


def register(kind: DatasetKind) -> DatasetKind:
    name = kind.name.strip().lower()
    if name in REGISTRY and REGISTRY[name] is not kind:
        raise ValueError(f"dataset {name!r} is registered twice")
    REGISTRY[name] = kind
    return kind


def _discover() -> None:
    """Import every module of ``cluctl.data`` (each registers its datasets)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import cluctl.data as pkg

    for m in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if m.name not in ("registry", "datasets", "tasks"):
            importlib.import_module(f"cluctl.data.{m.name}")


def kinds() -> list[DatasetKind]:
    _discover()
    return sorted(REGISTRY.values(), key=lambda k: (k.order, k.name))


def choices() -> str:
    """'digits, cifar10, cifar100 or npz:PATH' (for help texts and errors)."""
    names = [f"{k.name}:PATH" if k.path_arg else k.name for k in kinds()]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def lookup(spec) -> tuple[DatasetKind, str]:
    """(kind, argument) for a ``--dataset`` value; one-line UsageError otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"no dataset given (valid: {choices()})")
    text = spec.strip()
    _discover()
    head, sep, rest = text.partition(":")
    kind = REGISTRY.get(head.lower()) if sep else None
    if kind is not None and kind.path_arg:
        if not rest.strip():
            raise UsageError(f"{kind.name}: needs a file path", f"write {kind.name}:PATH, e.g. {kind.name}:./mydata.npz")
        return kind, rest
    kind = REGISTRY.get(text.lower())
    if kind is None or kind.path_arg:
        raise UsageError(f"unknown dataset {spec!r}", f"valid: {choices()}")
    return kind, ""


def kind_of(name: str) -> DatasetKind | None:
    """The kind of a loaded dataset's name ("digits", "npz:/abs/file.npz"), or None."""
    _discover()
    text = str(name).strip().lower()
    return REGISTRY.get(text) or REGISTRY.get(text.partition(":")[0])


def default_model(name: str) -> str:
    """The model a dataset uses unless ``--model`` is given (SPEC §1)."""
    kind = kind_of(name)
    return kind.default_model if kind is not None else "resnet18"


__all__ = ["DatasetKind", "REGISTRY", "register", "kinds", "choices", "lookup", "kind_of", "default_model"]
