"""Gradients as flat vectors: the current batch's, and the per-task reference gradients.

Two implementations of the reference gradients (SPEC §2, §4):

- ``classic``: the structure of GEM's reference code — one forward/backward per retained
  task, each parameter's gradient copied into a preallocated p x t matrix.
- ``fast``: all retained tasks in one call, ``torch.func.vmap`` over the task dimension
  of ``grad(loss)``, so each task's buffer is still normalised with its own BatchNorm
  batch statistics and gets its own gradient; flat gradients without per-parameter loops
  in the hot path.

Both compute reference gradients in train mode without touching BatchNorm's running
statistics (:func:`reference_mode`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


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


def masked_ce(logits: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, reduction: str = "mean"):
    """Cross-entropy over a task's k logits; ``y`` already holds positions 0..k-1."""
    idx = classes.reshape(1, -1).expand(logits.shape[0], -1)
    return F.cross_entropy(torch.gather(logits, 1, idx), y, reduction=reduction)


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


def ref_grads_classic(model: nn.Module, batches: list[TaskBatch]) -> torch.Tensor:
    """GEM reference code's structure: per task forward/backward, store_grad into p x t."""
    params = param_list(model)
    numels = [p.numel() for p in params]
    total = sum(numels)
    grads = torch.zeros(total, len(batches), device=params[0].device, dtype=params[0].dtype)
    for j, b in enumerate(batches):
        for p in params:
            p.grad = None
        with reference_mode(model):
            loss = masked_ce(model(b.x), b.y, b.classes)
        loss.backward()
        beg = 0
        for p, n in zip(params, numels):  # GEM's store_grad
            if p.grad is not None:
                grads[beg : beg + n, j].copy_(p.grad.reshape(-1))
            beg += n
    for p in params:
        p.grad = None
    return grads.t()


def ref_grads_fast(model: nn.Module, batches: list[TaskBatch], chunk_samples: int = 8192) -> torch.Tensor:
    """All tasks' gradients at once: vmap over tasks of grad(masked CE).

    Tasks are grouped by buffer size (vmap needs equal shapes); groups are processed in
    chunks of at most ``chunk_samples`` samples to bound memory.
    """
    if not batches:
        p = param_list(model)[0]
        return torch.zeros(0, n_params(model), device=p.device, dtype=p.dtype)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_fn(ps, x, y, cls):
        out = functional_call(model, ({**ps, **frozen}, buffers), (x,))
        return masked_ce(out, y, cls)

    gfn = vmap(grad(loss_fn), in_dims=(None, 0, 0, 0))
    out: list[torch.Tensor | None] = [None] * len(batches)
    groups: dict[tuple, list[int]] = {}
    for j, b in enumerate(batches):
        groups.setdefault((tuple(b.x.shape), b.classes.numel()), []).append(j)
    with reference_mode(model):
        for (shape, _k), members in groups.items():
            per = max(1, chunk_samples // max(1, shape[0]))
            for s in range(0, len(members), per):
                idx = members[s : s + per]
                X = torch.stack([batches[j].x for j in idx])
                Y = torch.stack([batches[j].y for j in idx])
                C = torch.stack([batches[j].classes for j in idx])
                g = gfn(params, X, Y, C)
                flat = torch.cat([g[n].reshape(len(idx), -1) for n in names], dim=1)
                for r, j in enumerate(idx):
                    out[j] = flat[r]
    return torch.stack(out)  # type: ignore[arg-type]


def ref_grads(model: nn.Module, batches: list[TaskBatch], impl: str) -> torch.Tensor:
    if impl == "classic":
        return ref_grads_classic(model, batches)
    return ref_grads_fast(model, batches)


@torch.no_grad()
def apply_update(params: list[torch.Tensor], x: torch.Tensor, lr: float) -> None:
    """Plain SGD (no momentum, no weight decay): p <- p - lr * x, x flat."""
    views = [v.view_as(p) for v, p in zip(x.split([p.numel() for p in params]), params)]
    torch._foreach_add_(params, views, alpha=-lr)
