"""The classic reference gradients: GEM reference code's structure, one forward/backward per
retained task, each parameter's gradient copied into a preallocated p x t matrix."""

from __future__ import annotations

import torch
import torch.nn as nn

from .core import TaskBatch, _ref_bn, masked_ce, param_list
from .precision import _autocast


def ref_grads_classic(model: nn.Module, batches: list[TaskBatch]) -> torch.Tensor:
    """GEM reference code's structure: per task forward/backward, store_grad into p x t."""
    params = param_list(model)
    numels = [p.numel() for p in params]
    total = sum(numels)
    grads = torch.zeros(total, len(batches), device=params[0].device, dtype=params[0].dtype)
    for j, b in enumerate(batches):
        for p in params:
            p.grad = None
        with _ref_bn(model), _autocast(params[0].device):
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
