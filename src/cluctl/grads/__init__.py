"""Gradients as flat vectors: the current batch's, and the per-task reference gradients.

Implementations of the reference gradients (SPEC §2, §4), selected by ``impl``:

- ``classic``: the structure of GEM's reference code — one forward/backward per retained
  task, each parameter's gradient copied into a preallocated p x t matrix.
- ``fast`` (:func:`ref_grads_fast`): all retained tasks in one forward and one backward
  pass over the concatenated buffers ("grouped" gradients). Convolutions, linear layers
  and BatchNorm are intercepted (a ``TorchFunctionMode``) and replaced by autograd
  functions that

  * normalise each task's samples with that task's own BatchNorm batch statistics
    (exactly what a separate forward per task does), and
  * in the backward pass write each task's parameter gradient straight into its row of
    the t x p output (no per-task backward, no ``.grad`` round trip, no concatenation);
    the input gradients flow through the whole concatenated batch in one call.

  Faster kernels, same sums: 4-D activations go channels-last (mkldnn convolutions ~1.3x
  faster on the reduced ResNet-18, up to 3.5x for its 20-channel 32x32 stage), and a
  convolution over a map with fewer pixels than kernel taps (the 2x2 and 1x1 stages on
  8x8 digits) is one GEMM with the unrolled convolution matrix, which leaves out the
  products with zero padding (2-9x fewer multiplications there). These change float
  rounding only (``FAST_OPTIONS`` turns them off). A model that uses a parameter in any
  other operation falls back to :func:`ref_grads_vmap`.
- :func:`ref_grads_vmap`: the previous fast path, ``torch.func.vmap`` over tasks of
  ``grad(masked CE)``; kept for models the grouped path cannot handle and for benchmarks.

On CUDA the grouped pass is captured as a CUDA graph once per operation (its buffers are
fixed; SGD updates the weights in place) and replayed at every later step
(:class:`GraphedRefGrads`; ``FAST_OPTIONS["cuda_graphs"]`` or ``CLUCTL_CUDA_GRAPHS=0`` turn
it off): the same kernels without hundreds of launches per step.

All compute reference gradients in train mode, each task's buffer normalised with its own
batch statistics, and (SPEC §2) each task's pass updates BatchNorm's running statistics in
turn, in the order of ``batches``, exactly as one forward per task does (the grouped path
calls the same native kernel per task with the running buffers, and counts
``num_batches_tracked`` once per task); they agree to float rounding, running statistics
included (tests/test_fastpath.py). ``REF_BN_UPDATE = False`` restores the earlier behaviour
(reference passes leave the running statistics alone) for benchmarks that compare the two.
Measurements that are not training steps use :func:`reference_mode` (batch statistics,
running statistics untouched).

Mixed precision: inside :func:`forward_precision` (``"bf16"``) the training forward passes
(:func:`batch_grad`, classic and grouped reference gradients; the vmap fallback stays
float32) run under ``torch.autocast``/in bf16; gradients are accumulated into float32 and
the projection is unchanged. The engine allows it on CUDA and on CPUs with native bf16
instructions (:func:`bf16_supported`: AMX or AVX512-BF16; on a 2-core AMX Xeon a
CIFAR-shaped fast step at T = 5 is 2.1x faster than in float32, an 8x8 digits step at
T = 4 1.4x), and refuses it on CPUs without hardware bf16.

Modules, one concern each (everything is re-exported here, so ``from cluctl.grads import X``
is the way to use them):

- :mod:`~cluctl.grads.options`: ``FAST_OPTIONS`` and ``REF_BN_UPDATE``, the tunables;
- :mod:`~cluctl.grads.precision`: bf16 autocast of the forward passes;
- :mod:`~cluctl.grads.core`: ``TaskBatch``, ``batch_grad``, ``apply_update``, the BatchNorm modes;
- :mod:`~cluctl.grads.classic`, :mod:`~cluctl.grads.vmap`: the two simple implementations;
- :mod:`~cluctl.grads.grouped_ops` (autograd functions) and :mod:`~cluctl.grads.grouped`
  (the pass over the concatenated buffers): the fast path;
- :mod:`~cluctl.grads.cudagraphs`: its CUDA graphs;
- :mod:`~cluctl.grads.dispatch`: ``ref_grads``/``ref_grads_fast``, which path runs.

Task masking (the masked cross-entropy, the per-sample class matrix of the grouped pass) is
:mod:`cluctl.masking`'s, the one implementation.

Module state lives in one submodule each. Reading ``cluctl.grads.NAME`` gives the submodule's
current value, and assigning it (``grads.REF_BN_UPDATE = False``,
``monkeypatch.setattr(grads, "_GRAPHS_BROKEN", [])``) assigns it there, where the code reads
it; the documented place to set the tunables is :mod:`cluctl.grads.options`.
"""

from __future__ import annotations

import sys
import types

from . import cudagraphs, dispatch, grouped, grouped_ops, options, precision
from .classic import ref_grads_classic
from .core import TaskBatch, apply_update, batch_grad, flat_grad, masked_ce, n_params, param_list, reference_mode
from .cudagraphs import GraphedRefGrads, release_graphs
from .dispatch import clear_cache, ref_grads, ref_grads_fast
from .grouped import ref_grads_grouped
from .precision import bf16_supported, cpu_bf16_native, forward_precision
from .vmap import ref_grads_vmap

# module state: read and assigned through the package, kept in its home module
_STATE = {
    "FAST_OPTIONS": options, "REF_BN_UPDATE": options,
    "GRAPH_STATS": cudagraphs, "_GRAPH_CACHE": cudagraphs, "_GRAPH_CACHE_SIZE": cudagraphs,
    "_GRAPHS_BROKEN": cudagraphs,
    "_STACK_CACHE": grouped, "_UNSUPPORTED": dispatch, "_SUPPORTED": dispatch,
    "_Unsupported": grouped_ops, "_PRECISION": precision,
}


class _Package(types.ModuleType):
    """``cluctl.grads.NAME`` for a name of ``_STATE`` is a property reading and assigning its
    home module's ``NAME`` (so a setter and the code that reads it agree, and pytest's
    ``monkeypatch.setattr(grads, NAME, ...)`` restores it). Functions are plain re-exports:
    to swap one, patch the module that calls it (e.g. ``cluctl.grads.dispatch.ref_grads_fast``,
    which :func:`ref_grads` calls)."""

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_STATE))


def _forward(name: str, home: types.ModuleType) -> property:
    return property(lambda _self: getattr(home, name), lambda _self, value: setattr(home, name, value),
                    doc=f"{home.__name__}.{name}")


for _name, _home in _STATE.items():
    setattr(_Package, _name, _forward(_name, _home))
del _name, _home
sys.modules[__name__].__class__ = _Package

__all__ = [
    "TaskBatch", "reference_mode", "forward_precision", "bf16_supported", "cpu_bf16_native", "masked_ce",
    "param_list", "n_params", "flat_grad",
    "batch_grad", "ref_grads_classic", "ref_grads_vmap", "ref_grads_grouped", "ref_grads_fast", "ref_grads",
    "apply_update", "clear_cache", "release_graphs", "FAST_OPTIONS", "REF_BN_UPDATE",
    "GraphedRefGrads", "GRAPH_STATS",
]
