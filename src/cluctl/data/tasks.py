"""Splitting a dataset's classes into tasks.

A run draws one class order from its seed (``class_order``); task ``t`` of an
``n_tasks`` split is the ``t``-th consecutive block of ``num_classes // n_tasks``
classes of that order (``task_classes``); ``task_indices`` picks the samples of
those classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cluctl.errors import UsageError

__all__ = ["class_order", "task_classes", "task_indices"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def class_order(num_classes: int, seed: int) -> list[int]:
    """The seed's permutation of ``0..num_classes-1``.

    ``torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))``:
    the same on every machine for a given torch version, and independent of the
    global RNG state.
    """
    if not _is_int(num_classes) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not _is_int(seed):
        raise UsageError(f"seed must be an integer, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_classes, generator=gen).tolist()


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def task_classes(
    order: Sequence[int], n_tasks: int, task: int, dataset: str | None = None
) -> list[int]:
    """Classes of ``task`` (0-based): ``order[task*k:(task+1)*k]`` with ``k = len(order) // n_tasks``.

    ``n_tasks`` must divide ``len(order)``; ``task`` must be in ``0..n_tasks-1``.
    ``dataset`` only names the dataset in error messages.
    """
    order = [int(c) for c in order]
    num_classes = len(order)
    if num_classes == 0:
        raise UsageError("the class order is empty")
    if not _is_int(n_tasks) or n_tasks < 1:
        raise UsageError(f"the number of tasks must be a positive integer, got {n_tasks!r}")
    if num_classes % n_tasks != 0:
        divs = ", ".join(str(d) for d in _divisors(num_classes))
        where = f"{dataset}'s " if dataset else ""
        raise UsageError(
            f"{n_tasks} tasks do not split {where}{num_classes} classes evenly",
            f"choose a task count that divides {num_classes}: {divs}",
        )
    if not _is_int(task) or not 0 <= task < n_tasks:
        who = f"{dataset} has" if dataset else "there are"
        raise UsageError(
            f"task {task} is out of range: {who} {n_tasks} tasks (0..{n_tasks - 1})"
        )
    k = num_classes // n_tasks
    return order[task * k : (task + 1) * k]


def task_indices(y: torch.Tensor, classes: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Indices (int64, ascending, on ``y``'s device) of the samples whose label is in ``classes``."""
    cls = torch.as_tensor(classes, dtype=y.dtype, device=y.device).reshape(-1)
    mask = torch.isin(y, cls)
    return torch.nonzero(mask, as_tuple=False).reshape(-1).to(torch.int64)
