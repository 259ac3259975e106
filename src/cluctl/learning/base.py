from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..config import LEARN_ALGOS
from ..errors import UsageError
from ..grads import TaskBatch, batch_grad, masked_ce, ref_grads


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
            cl.append(b.classes.reshape(1, -1).expand(len(b.y), -1))
        X, Y, C = torch.cat(xs), torch.cat(ys), torch.cat(cl)
        pick = torch.randperm(len(Y), generator=self.gen)[: max(2, m)].to(X.device)

        def loss(model):
            logits = model(X[pick])
            return torch.nn.functional.cross_entropy(torch.gather(logits, 1, C[pick]), Y[pick])

        g, _ = batch_grad(self.model, loss, update_bn=REF_BN_UPDATE_DEFAULT())
        self._pooled[m] = g
        return g


def REF_BN_UPDATE_DEFAULT() -> bool:  # noqa: N802 - read at call time (benchmarks flip it)
    from .. import grads

    return grads.REF_BN_UPDATE


def prepare_G(refs: RefContext, cfg: dict) -> None:
    """Compute the retained tasks' reference gradients now (they run before the current
    batch's pass, in the GEM reference code's order: SPEC §2)."""
    refs.G  # noqa: B018 - computed and cached


@dataclass(frozen=True)
class LearnAlgorithm:
    name: str
    direction: Callable  # (g, RefContext, cfg) -> (x, ProjectionInfo | None)
    uses_refs: bool = True
    # computes the references a step needs before the current batch's gradient (SPEC §2 order)
    prepare: Callable = prepare_G


REGISTRY: dict[str, LearnAlgorithm] = {}


def register(alg: LearnAlgorithm) -> LearnAlgorithm:
    REGISTRY[alg.name] = alg
    return alg


def get(name: str) -> LearnAlgorithm:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown learning algorithm '{name}'", f"choose one of: {', '.join(LEARN_ALGOS)}") from None


__all__ = ["RefContext", "LearnAlgorithm", "register", "get", "REGISTRY", "masked_ce", "prepare_G"]
