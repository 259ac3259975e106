"""Task masking (one output per class; task t only uses its k classes' logits).

For a task with classes ``[c0, .., ck-1]`` the network's logits are restricted to
those k columns, in that order: the loss is cross-entropy over the k logits with
the target being the label's position in ``classes``, the prediction is the
argmax among them and the confidence is their softmax.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cluctl.errors import UsageError

__all__ = ["masked_logits", "masked_loss", "masked_predict", "masked_targets"]

Classes = Sequence[int] | torch.Tensor


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
    """``logits[:, classes]``: N x k."""
    index, _ = _tables(_class_tuple(classes), logits.device)
    return logits.index_select(1, index)


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
