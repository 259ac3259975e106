"""Which implementation computes the reference gradients: :func:`ref_grads` (``impl``
classic or fast) and :func:`ref_grads_fast` (the grouped pass, from a CUDA graph where one
is captured, else the vmap fallback for a model the grouped pass cannot handle).

A benchmark that swaps the fast path patches it here: ``cluctl.grads.dispatch.ref_grads_fast``
is what :func:`ref_grads` calls."""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn

from . import cudagraphs as _cg
from . import grouped as _grouped
from .classic import ref_grads_classic
from .core import TaskBatch, n_params, param_list
from .cudagraphs import _graphed_ref_grads, _want_cuda_graphs, release_graphs
from .grouped import ref_grads_grouped
from .grouped_ops import _Unsupported
from .vmap import ref_grads_vmap

_UNSUPPORTED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
_SUPPORTED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    """Forget the cached concatenated buffers and CUDA graphs (tests, benchmarks)."""
    _grouped._STACK_CACHE.clear()
    release_graphs()


def ref_grads_fast(model: nn.Module, batches: list[TaskBatch], chunk_samples: int | None = None) -> torch.Tensor:
    """All retained tasks' reference gradients together, [t, p] (see the package docstring).
    ``chunk_samples`` is accepted for compatibility; memory is bounded by
    ``FAST_OPTIONS["chunk_mb"]``. On CUDA the grouped pass is replayed from a CUDA graph
    from an operation's third step on (:class:`GraphedRefGrads`)."""
    if not batches:
        p = param_list(model)[0]
        return torch.zeros(0, n_params(model), device=p.device, dtype=p.dtype)
    if model not in _UNSUPPORTED:
        known = model in _SUPPORTED
        # a model the grouped path meets for the first time may turn out unsupported after
        # some BatchNorm layers updated their running statistics: put them back first
        saved = None if known else [(b, b.detach().clone()) for b in model.buffers()]
        try:
            if not _cg._GRAPHS_BROKEN and _want_cuda_graphs(param_list(model)[0].device):
                out = _graphed_ref_grads(model, batches)
            else:
                out = ref_grads_grouped(model, batches)
            if not known:
                _SUPPORTED[model] = True
            return out
        except _Unsupported as err:
            _UNSUPPORTED[model] = str(err)
            with torch.no_grad():
                for b, v in saved or []:
                    b.copy_(v)
    return ref_grads_vmap(model, batches, chunk_samples or 8192)


def ref_grads(model: nn.Module, batches: list[TaskBatch], impl: str) -> torch.Tensor:
    if impl == "classic":
        return ref_grads_classic(model, batches)
    return ref_grads_fast(model, batches)
