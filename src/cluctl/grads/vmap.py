"""The previous fast path: ``torch.func.vmap`` over tasks of ``grad(masked CE)``; kept for
models the grouped path cannot handle and for benchmarks."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call, grad, vmap

from . import options as _opts
from .core import TaskBatch, _bn_modules, masked_ce, n_params, param_list, reference_mode


def ref_grads_vmap(model: nn.Module, batches: list[TaskBatch], chunk_samples: int = 8192) -> torch.Tensor:
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
                g = gfn(params, X, Y, C)  # float32 even under bf16 (autocast breaks grad in vmap)
                flat = torch.cat([g[n].reshape(len(idx), -1) for n in names], dim=1)
                for r, j in enumerate(idx):
                    out[j] = flat[r]
    if _opts.REF_BN_UPDATE and _bn_modules(model):
        # vmap cannot update module buffers: one forward per task, in order, updates the
        # running statistics as the classic passes do (only this fallback pays for it)
        was = model.training
        model.train()
        with torch.no_grad():
            for b in batches:
                model(b.x)
        model.train(was)
    return torch.stack(out)  # type: ignore[arg-type]
