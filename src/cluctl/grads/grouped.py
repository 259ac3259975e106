"""The grouped fast path (:func:`ref_grads_grouped`): all retained tasks in one forward and
one backward pass over their concatenated buffers (see the package docstring). The
concatenation of one operation's buffers is cached (:func:`_stacked`); tasks are processed
in chunks whose activations fit ``FAST_OPTIONS["chunk_mb"]``."""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager

import torch
import torch.nn as nn

from ..masking import class_index, masked_ce
from . import options as _opts
from .core import TaskBatch, _bn_modules, _ref_bn, param_list
from .grouped_ops import _GroupedMode, _Plan
from .precision import _PRECISION, _autocast


class _Stacked:
    """The concatenated buffers of one list of TaskBatch (built once per operation: the
    engine reuses the same batches at every step)."""

    def __init__(self, batches: list[TaskBatch], channels_last: bool):
        self.refs = [(b.x, b.y, b.classes) for b in batches]
        self.versions = [tuple(t._version for t in r) for r in self.refs]
        self.channels_last = channels_last
        X = torch.cat([b.x for b in batches])
        if channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        self.X = X
        self.Y = torch.cat([b.y for b in batches])
        self.idx = torch.cat([class_index(b.classes, len(b.y)) for b in batches])  # per-sample classes
        sizes = [len(b.y) for b in batches]
        self.starts = [0]
        for n in sizes:
            self.starts.append(self.starts[-1] + n)
        self.weights = torch.cat([torch.full((n,), 1.0 / n, device=X.device) for n in sizes])

    def matches(self, batches: list[TaskBatch], channels_last: bool) -> bool:
        if channels_last != self.channels_last or len(batches) != len(self.refs):
            return False
        for b, r, v in zip(batches, self.refs, self.versions):
            if b.x is not r[0] or b.y is not r[1] or b.classes is not r[2]:
                return False
            if (b.x._version, b.y._version, b.classes._version) != v:
                return False
        return True


_STACK_CACHE: list[_Stacked] = []  # one entry: the latest operation's buffers
_ACT_BYTES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _stacked(batches: list[TaskBatch], channels_last: bool) -> _Stacked:
    if _STACK_CACHE and _STACK_CACHE[0].matches(batches, channels_last):
        return _STACK_CACHE[0]
    _STACK_CACHE.clear()
    st = _Stacked(batches, channels_last)
    _STACK_CACHE.append(st)
    return st


def _chunks(st: _Stacked, per_sample_bytes: float, device: torch.device) -> list[tuple[int, int]]:
    """Task ranges [a, b) whose activations fit the memory bound."""
    mb = _opts.FAST_OPTIONS.get("chunk_mb") or os.environ.get("CLUCTL_REF_CHUNK_MB")
    mb = float(mb) if mb else (12000 if device.type == "cuda" else 1500)
    budget = mb * 2**20
    out, a = [], 0
    T = len(st.starts) - 1
    while a < T:
        b = a + 1
        while b < T and (st.starts[b + 1] - st.starts[a]) * per_sample_bytes <= budget:
            b += 1
        out.append((a, b))
        a = b
    return out


def _per_sample_bytes(model: nn.Module, x: torch.Tensor) -> float:
    """A rough upper bound of the activation memory per sample of one grouped pass:
    (6 + 0.75 per conv/linear layer, at most 24 layers) float32 tensors the size of the
    widest activation (reduced ResNet-18 on 32x32: ~1.8 MB; measured ~1.5 MB)."""
    key = tuple(x.shape[1:])
    est = _ACT_BYTES.get(model)
    if est is not None and est[0] == key:
        return est[1]
    widest = x[0].numel()
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and x.dim() == 4:
            widest = max(widest, m.out_channels * x.shape[2] * x.shape[3])
        elif isinstance(m, nn.Linear):
            widest = max(widest, m.out_features)
    n_layers = sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    val = float(4 * widest * (6 + min(n_layers, 24) * 0.75))
    _ACT_BYTES[model] = (key, val)
    return val


def _want_channels_last(x: torch.Tensor) -> bool:
    opt = _opts.FAST_OPTIONS.get("channels_last")
    if x.dim() != 4:
        return False
    return True if opt is None else bool(opt)


@contextmanager
def _cudnn_benchmark(device: torch.device):
    if device.type != "cuda" or not _opts.FAST_OPTIONS.get("cudnn_benchmark"):
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def ref_grads_grouped(model: nn.Module, batches: list[TaskBatch], autocast_cache: bool = True) -> torch.Tensor:
    """The grouped fast path (package docstring). Raises
    :class:`~cluctl.grads.grouped_ops._Unsupported` for a model it cannot handle (nothing is
    changed in that case)."""
    params = param_list(model)
    p0 = params[0]
    offsets, off = {}, 0
    for p in params:
        offsets[id(p)] = (off, p.numel())
        off += p.numel()
    out = torch.empty(len(batches), off, device=p0.device, dtype=p0.dtype)
    st = _stacked(batches, _want_channels_last(batches[0].x))
    cast = _PRECISION.get()
    per = _per_sample_bytes(model, st.X) * (0.5 if cast is not None else 1.0)
    written: set[int] = set()
    bn_modules = {id(m.running_mean): m for m in _bn_modules(model) if m.running_mean is not None}
    with _ref_bn(model), torch.enable_grad(), _cudnn_benchmark(p0.device):
        for a, b in _chunks(st, per, p0.device):
            s0, s1 = st.starts[a], st.starts[b]
            segs = [(st.starts[j] - s0, st.starts[j + 1] - s0) for j in range(a, b)]
            plan = _Plan(out[a:b], offsets, segs, cast, st.channels_last)
            plan.bn_modules = bn_modules
            with _autocast(p0.device, cache=autocast_cache):
                with _GroupedMode(plan):
                    logits = model(st.X[s0:s1])
                ce = masked_ce(logits, st.Y[s0:s1], st.idx[s0:s1], reduction="none")
                loss = (ce.float() * st.weights[s0:s1]).sum()
            loss.backward()
            written = plan.written
    for pid, (o, n) in offsets.items():
        if pid not in written:  # a parameter the loss does not depend on: zero, as classic
            out[:, o : o + n].zero_()
    return out
