from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import UNLEARN_ALGOS, canonical_unlearn_algo
from ..errors import UsageError


@dataclass(frozen=True)
class UnlearnAlgorithm:
    name: str
    forget: str  # "neg" (ascent on true labels) or "rl" (descent on random labels)
    combine: Callable  # (g_f, RefContext, cfg) -> (x, ProjectionInfo | None)


REGISTRY: dict[str, UnlearnAlgorithm] = {}


def register(alg: UnlearnAlgorithm) -> UnlearnAlgorithm:
    REGISTRY[alg.name] = alg
    return alg


def get(name: str) -> UnlearnAlgorithm:
    key = canonical_unlearn_algo(name)
    if key not in REGISTRY:  # pragma: no cover - registry and config list agree
        raise UsageError(f"unknown unlearning algorithm '{name}'", f"choose one of: {', '.join(UNLEARN_ALGOS)}")
    return REGISTRY[key]


def random_labels(y: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """For each masked target y in 0..k-1, a label drawn uniformly from the other k-1."""
    if k < 2:
        raise UsageError("random-label unlearning needs tasks of at least 2 classes")
    r = torch.randint(0, k - 1, (len(y),), generator=gen).to(y.device)
    return r + (r >= y).long()
