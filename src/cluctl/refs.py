"""The retained tasks' reference gradients of one step (:class:`RefContext`), shared by the
learning and unlearning algorithms."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .grads import TaskBatch, batch_grad, ref_grads
from .grads import options as grad_options
from .masking import class_index, masked_ce


@dataclass
class RefContext:
    """Reference gradients of the retained tasks at the current weights, computed lazily
    (naive never pays for them) and at most once per step."""

    model: torch.nn.Module
    batches: list[TaskBatch]
    impl: str
    gen: torch.Generator
    _G: torch.Tensor | None = field(default=None, repr=False)
    _pooled: dict = field(default_factory=dict, repr=False)

    @property
    def G(self) -> torch.Tensor:
        if self._G is None:
            self._G = ref_grads(self.model, self.batches, self.impl)
        return self._G

    def pooled_grad(self, m: int) -> torch.Tensor:
        """A-GEM paper variant: gradient of one random batch of m samples pooled from all
        retained learn buffers (each sample keeps its own task's logit mask). Computed once
        per step (a train-mode pass of the step: it updates BatchNorm's running statistics)."""
        if m in self._pooled:
            return self._pooled[m]
        xs, ys, cl = [], [], []
        for b in self.batches:
            xs.append(b.x)
            ys.append(b.y)
            cl.append(class_index(b.classes, len(b.y)))
        X, Y, C = torch.cat(xs), torch.cat(ys), torch.cat(cl)
        pick = torch.randperm(len(Y), generator=self.gen)[: max(2, m)].to(X.device)

        def loss(model):
            return masked_ce(model(X[pick]), Y[pick], C[pick])  # C: per-sample classes

        g, _ = batch_grad(self.model, loss, update_bn=_ref_bn_update())
        self._pooled[m] = g
        return g


def _ref_bn_update() -> bool:
    return grad_options.REF_BN_UPDATE  # read at call time (benchmarks flip it)


__all__ = ["RefContext"]
