"""Task masking, the one implementation (one output per class; a task uses only its k
classes' logits).

For a task with classes ``[c0, .., ck-1]`` the network's logits are restricted to those k
columns, in that order: the loss is cross-entropy over the k logits with the target being
the label's position in ``classes``, the prediction is the argmax among them and the
confidence is their softmax.

Two levels, one primitive (:func:`task_logits`, a ``torch.gather`` along the class axis):

- hot paths (training steps, the grouped and vmap reference gradients, evaluation) pass
  class ids as tensors already on the device and targets already as positions 0..k-1:
  :func:`task_logits`, :func:`masked_ce`, and :func:`class_index` for the per-sample index
  matrix of a concatenation of tasks (row i: the classes of sample i's task). Nothing is
  validated there (no host synchronisation).
- :func:`masked_logits`, :func:`masked_targets`, :func:`masked_loss` and
  :func:`masked_predict` take class ids as any sequence and raw labels, and check them
  (``UsageError``); they are re-exported by :mod:`cluctl.models`.

This module sits below ``grads`` and ``models`` (tests/test_layers.py): it imports only
``errors``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cluctl.errors import UsageError

__all__ = ["class_index", "task_logits", "masked_ce", "task_accuracy", "masked_logits", "masked_loss", "masked_predict",
           "masked_targets"]

Classes = Sequence[int] | torch.Tensor


# ---------------------------------------------------------------- hot path (tensors, no checks)


def class_index(classes: torch.Tensor, n: int) -> torch.Tensor:
    """The n x k index matrix of n samples of one task (a broadcast view of ``classes``);
    ``torch.cat`` of several gives the per-sample matrix of a concatenation of tasks."""
    return classes.reshape(1, -1).expand(n, -1)


def task_logits(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The task's columns of ``logits`` (N x C), in the order of ``classes``: N x k.

    ``classes`` is a 1-D tensor of k class ids (every row belongs to that task) or an
    N x k per-sample index matrix (:func:`class_index`; row i: the classes of sample i's
    task), int64 on ``logits``' device."""
    idx = classes if classes.dim() == 2 else class_index(classes, logits.shape[0])
    return torch.gather(logits, 1, idx)


def masked_ce(logits: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, reduction: str = "mean"):
    """Cross-entropy over a task's k logits; ``y`` already holds positions 0..k-1 and
    ``classes`` is as in :func:`task_logits` (one task, or a per-sample matrix)."""
    return F.cross_entropy(task_logits(logits, classes), y, reduction=reduction)


def task_accuracy(logits: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Fraction (a 0-d float tensor) of rows whose argmax among the task's logits is ``y``
    (positions 0..k-1); ``classes`` as in :func:`task_logits`."""
    return (task_logits(logits, classes).argmax(1) == y).float().mean()


# ---------------------------------------------------------------- checked (any sequence, raw labels)


def _class_tuple(classes: Classes) -> tuple[int, ...]:
    if isinstance(classes, torch.Tensor):
        classes = classes.reshape(-1).tolist()
    cls = tuple(int(c) for c in classes)
    if not cls:
        raise UsageError("a task needs at least one class")
    if min(cls) < 0:
        raise UsageError(f"class ids must be >= 0, got {list(cls)}")
    if len(set(cls)) != len(cls):
        raise UsageError(f"task classes repeat a class: {list(cls)}")
    return cls


@functools.lru_cache(maxsize=256)
def _tables(cls: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(index tensor of the classes, lookup table class -> position or -1), cached per device."""
    index = torch.tensor(cls, dtype=torch.int64)
    table = torch.full((max(cls) + 1,), -1, dtype=torch.int64)
    table[index] = torch.arange(len(cls), dtype=torch.int64)
    return index.to(device), table.to(device)


def masked_logits(logits: torch.Tensor, classes: Classes) -> torch.Tensor:
    """``logits[:, classes]``: N x k (``classes`` checked)."""
    index, _ = _tables(_class_tuple(classes), logits.device)
    return task_logits(logits, index)


def masked_targets(y: torch.Tensor, classes: Classes) -> torch.Tensor:
    """Position of each label within ``classes`` (int64, 0..k-1), on ``y``'s device.

    Vectorised through a lookup table (``-1`` for classes outside the task); raises
    ``UsageError`` if a label is not one of ``classes`` or ``classes`` repeats a class.
    """
    cls = _class_tuple(classes)
    _, table = _tables(cls, y.device)
    size = table.numel()
    y = y.to(torch.int64)
    inside = (y >= 0) & (y < size)
    pos = torch.where(inside, table[y.clamp(0, size - 1)], torch.full_like(y, -1))
    bad = pos < 0
    if bool(bad.any()):
        first = int(y[bad][0])
        raise UsageError(f"label {first} is not one of the task's classes {list(cls)}")
    return pos


def masked_loss(
    logits: torch.Tensor, y: torch.Tensor, classes: Classes, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy over the task's logits (``reduction``: mean, sum or none)."""
    return F.cross_entropy(masked_logits(logits, classes), masked_targets(y, classes), reduction=reduction)


def masked_predict(
    logits: torch.Tensor, y: torch.Tensor, classes: Classes
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(correct, true_conf, max_conf)`` per sample, using only the task's logits.

    correct: bool, argmax among the k logits == the label's position;
    true_conf: softmax probability (over the k) of the true class;
    max_conf: the largest of those k probabilities.
    """
    sub = masked_logits(logits, classes)
    target = masked_targets(y, classes)
    probs = torch.softmax(sub.float(), dim=1)
    max_conf, pred = probs.max(dim=1)
    true_conf = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    return pred == target, true_conf, max_conf
