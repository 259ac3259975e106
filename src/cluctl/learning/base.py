"""The learning registry: an algorithm is one module of this package that registers a
:class:`LearnAlgorithm` (name, aliases, help line, its direction and what it computes
before the current batch). Module-level imports stay light (no torch): the CLI derives its
choices and help from the registry without loading torch; the math is imported where it
runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import UsageError

if TYPE_CHECKING:
    from ..refs import RefContext


def prepare_G(refs: RefContext, cfg: dict) -> None:
    """Compute the retained tasks' reference gradients now (they run before the current
    batch's pass, in the GEM reference code's order: SPEC §2)."""
    refs.G  # noqa: B018 - computed and cached


@dataclass(frozen=True)
class LearnAlgorithm:
    """One learning algorithm (SPEC §2): ``direction(g, refs, cfg) -> (x, info)`` turns the
    current batch's gradient into the applied update; ``prepare(refs, cfg)`` computes the
    references a step needs before the current batch's pass (SPEC §2 order)."""

    name: str
    direction: Callable  # (g, RefContext, cfg) -> (x, ProjectionInfo | None)
    uses_refs: bool = True
    prepare: Callable = prepare_G
    help: str = ""
    aliases: tuple[str, ...] = ()
    order: int = 100


REGISTRY: dict[str, LearnAlgorithm] = {}
_ALIASES: dict[str, str] = {}


def register(alg: LearnAlgorithm) -> LearnAlgorithm:
    keys = [str(key).strip().lower() for key in (alg.name, *alg.aliases)]
    for k in keys:  # check every spelling first: a refused algorithm leaves no trace
        if _ALIASES.get(k, alg.name) != alg.name:
            raise ValueError(f"learning algorithm {alg.name}: name {k!r} is taken by {_ALIASES[k]}")
    for k in keys:
        _ALIASES[k] = alg.name
    REGISTRY[alg.name] = alg
    return alg


def names() -> tuple[str, ...]:
    return tuple(a.name for a in sorted(REGISTRY.values(), key=lambda a: (a.order, a.name)))


def canonical(name) -> str:
    hit = _ALIASES.get(str(name).strip().lower())
    if hit is None:
        raise UsageError(f"unknown learning algorithm '{name}'", f"choose one of: {', '.join(names())}")
    return hit


def get(name: str) -> LearnAlgorithm:
    return REGISTRY[canonical(name)]


__all__ = ["LearnAlgorithm", "register", "get", "names", "canonical", "REGISTRY", "prepare_G"]
