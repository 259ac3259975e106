"""CUDA graphs of the grouped pass (:class:`GraphedRefGrads`): captured once per operation's
buffers and replayed at every later step; :func:`release_graphs` drops them."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from . import options as _opts
from .core import TaskBatch, param_list
from .grouped import _stacked, _Stacked, _want_channels_last, ref_grads_grouped
from .precision import _PRECISION


def _want_cuda_graphs(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    opt = _opts.FAST_OPTIONS.get("cuda_graphs")
    if opt is None:
        return os.environ.get("CLUCTL_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")
    return bool(opt)


class GraphedRefGrads:
    """The grouped pass over one operation's buffers, captured as a CUDA graph.

    Within one learn or unlearn operation the retained tasks and their buffers do not
    change; only the weights do, and SGD updates them in place. So the whole grouped
    forward/backward (a few hundred small kernels for the reduced ResNet-18, launch-bound
    on a GPU at nf = 20) is captured once and replayed at every later step: the replay
    reads the current weights from the same memory and writes the [t, p] gradients into
    the same output, which is cloned for the caller. Call 1 of a new key runs eagerly; call
    2 runs eagerly on a side stream (the warm-up that capture needs; its result is
    returned) and captures; later calls replay. The key is the model, the identity and
    version of every buffer tensor and of every parameter's storage, the precision and the
    fast-path options, so anything that changes them (a new operation, weights loaded into
    new tensors) makes a new capture. A capture that fails switches graphs off for the
    rest of the process with one warning; the eager path is then used.
    """

    def __init__(self, key: tuple, model: nn.Module, batches: list[TaskBatch]):
        self.key = key
        self.calls = 0
        self.graph = None
        self.out: torch.Tensor | None = None
        # strong references: the ids in the key cannot be reused by other objects, and the
        # memory the graph reads (buffers, their concatenation) stays allocated
        self.model, self.batches = model, list(batches)
        self.stacked: _Stacked | None = None
        self.stream = None

    def release(self) -> None:
        self.graph = self.out = self.stacked = self.model = self.stream = None
        self.batches = []


# the latest keys' graphs, most recent last; the engine releases them when an operation
# ends (within one operation there is one key). Four, so that a benchmark alternating
# settings (fp32, bf16, cuDNN benchmark mode) keeps them all instead of recapturing.
_GRAPH_CACHE: list[GraphedRefGrads] = []
_GRAPH_CACHE_SIZE = 4
_GRAPHS_BROKEN: list[str] = []
GRAPH_STATS = {"captures": 0, "replays": 0}  # counters for tests and benchmarks


def release_graphs() -> None:
    """Drop every captured graph and the memory pools behind them (the engine calls this
    at the end of each operation: its buffers are not used again)."""
    for entry in _GRAPH_CACHE:
        entry.release()
    _GRAPH_CACHE.clear()


def _graph_key(model: nn.Module, batches: list[TaskBatch]) -> tuple:
    params = param_list(model)
    return (id(model), tuple((id(b.x), b.x._version, id(b.y), b.y._version, id(b.classes), b.classes._version)
                             for b in batches),
            tuple((p.data_ptr(), tuple(p.shape)) for p in params), _PRECISION.get(),
            tuple(sorted((k, str(v)) for k, v in _opts.FAST_OPTIONS.items())))


def _graphed_ref_grads(model: nn.Module, batches: list[TaskBatch]) -> torch.Tensor:
    dev = param_list(model)[0].device
    # everything on the model's GPU, which need not be the current one (launch workers on
    # cuda:1 never call set_device): its streams, the capture and the replays
    with torch.cuda.device(dev):
        return _graphed_on_device(model, batches, dev)


def _graphed_on_device(model: nn.Module, batches: list[TaskBatch], dev: torch.device) -> torch.Tensor:
    key = _graph_key(model, batches)
    entry = next((e for e in _GRAPH_CACHE if e.key == key), None)
    if entry is None:
        while len(_GRAPH_CACHE) >= _GRAPH_CACHE_SIZE:
            _GRAPH_CACHE.pop(0).release()
        entry = GraphedRefGrads(key, model, batches)
    else:
        _GRAPH_CACHE.remove(entry)
    _GRAPH_CACHE.append(entry)
    entry.calls += 1
    if entry.graph is not None:
        entry.graph.replay()
        GRAPH_STATS["replays"] += 1
        return entry.out.clone()
    if entry.calls == 1:
        return ref_grads_grouped(model, batches)
    cur = torch.cuda.current_stream(dev)
    # the stacked buffers the graph will read: built (or found) on the current stream and
    # pinned by the entry before anything is captured
    entry.stacked = _stacked(batches, _want_channels_last(batches[0].x))
    # warm-up (its result is this step's) and capture on the entry's own stream: graphs
    # that share a capture stream share cuBLAS workspaces, which releasing one can free
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        result = ref_grads_grouped(model, batches)
    cur.wait_stream(side)
    result.record_stream(cur)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(side):  # restores the caller's stream even if capture fails
            with torch.cuda.graph(graph, stream=side):
                out = ref_grads_grouped(model, batches, autocast_cache=False)
    except Exception as exc:  # noqa: BLE001 - any capture failure: eager from now on
        _GRAPHS_BROKEN.append(f"{type(exc).__name__}: {exc}")
        release_graphs()
        torch.cuda.synchronize(dev)
        import logging

        logging.getLogger(__name__).warning(
            "warning: CUDA graph capture of the reference gradients failed (%s: %s); using the eager fast path from "
            "now on (if this process misbehaves later, rerun it with CLUCTL_CUDA_GRAPHS=0)",
            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return result
    entry.graph, entry.out, entry.stream = graph, out, side
    GRAPH_STATS["captures"] += 1
    return result
