"""Basics shared by every implementation: :class:`TaskBatch`, flat parameter gradients
(:func:`batch_grad`, :func:`flat_grad`), the plain SGD step (:func:`apply_update`), and the
train modes of a reference pass (:func:`reference_mode`; ``_ref_bn`` follows
:data:`cluctl.grads.options.REF_BN_UPDATE`). The masked cross-entropy is
:func:`cluctl.masking.masked_ce` (re-exported here)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..masking import masked_ce
from . import options as _opts
from .precision import _autocast



@dataclass
class TaskBatch:
    """Inputs, masked targets (0..k-1) and the task's class ids (k) for one loss."""

    x: torch.Tensor
    y: torch.Tensor
    classes: torch.Tensor


def _bn_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def reference_mode(model: nn.Module):
    """Train mode with batch statistics, but BatchNorm running statistics untouched."""
    bns = _bn_modules(model)
    saved = [m.track_running_stats for m in bns]
    was_training = model.training
    model.train()
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s
        model.train(was_training)


@contextmanager
def _ref_bn(model: nn.Module):
    """Train mode for a reference pass: running statistics updated (SPEC §2) unless
    :data:`cluctl.grads.options.REF_BN_UPDATE` is off, in which case they are left alone."""
    if not _opts.REF_BN_UPDATE:
        with reference_mode(model):
            yield
        return
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


def param_list(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in param_list(model))


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def batch_grad(model: nn.Module, loss_fn, update_bn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat gradient of ``loss_fn(model)`` (train mode). Returns (grad, loss)."""
    params = param_list(model)
    model.train()
    for p in params:
        p.grad = None
    with _autocast(params[0].device):
        if update_bn:
            loss = loss_fn(model)
        else:
            with reference_mode(model):
                loss = loss_fn(model)
    loss.backward()
    g = flat_grad(params)
    for p in params:
        p.grad = None
    return g, loss.detach()


@torch.no_grad()
def apply_update(params: list[torch.Tensor], x: torch.Tensor, lr: float) -> None:
    """Plain SGD (no momentum, no weight decay): p <- p - lr * x, x flat."""
    views = [v.view_as(p) for v, p in zip(x.split([p.numel() for p in params]), params)]
    torch._foreach_add_(params, views, alpha=-lr)


__all__ = ["TaskBatch", "reference_mode", "masked_ce", "param_list", "n_params", "flat_grad", "batch_grad",
           "apply_update"]
