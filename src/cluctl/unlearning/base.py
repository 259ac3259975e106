"""The unlearning registry: an algorithm is one module of this package that registers an
:class:`UnlearnAlgorithm` declaring everything about it (name, thesis aliases, help line,
its rule defaults, its forget loss and how it combines the forget gradient with the
retained tasks' reference gradients). Names, aliases, CLI choices and help, the rule
defaults of SPEC §8 and the test parametrisation are all derived from the registry; the
package imports every module in it, so adding an algorithm is adding one file. Keep an
algorithm module's top-level imports light (no torch): the CLI reads the registry without
loading torch; import the math inside the functions that run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

# A forget loss: (fx, fy, classes, k, s, gen) -> (loss_fn(model) -> scalar, labels used)
ForgetLoss = Callable[..., tuple]  # (loss_fn(model) -> scalar, labels tensor)


def random_labels(y: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """For each masked target y in 0..k-1, a label drawn uniformly from the other k-1."""
    import torch

    if k < 2:
        raise UsageError("random-label unlearning needs tasks of at least 2 classes")
    r = torch.randint(0, k - 1, (len(y),), generator=gen).to(y.device)
    return r + (r >= y).long()


def neg_loss(fx, fy, classes, k, s, gen):
    """Gradient ascent: -(s * CE(forget batch)) with the true labels."""
    from ..grads import masked_ce

    return (lambda m: -(s * masked_ce(m(fx), fy, classes))), fy


def rl_loss(fx, fy, classes, k, s, gen):
    """Descent on s * CE(forget batch) with random labels from the task's other classes."""
    from ..grads import masked_ce

    ry = random_labels(fy, k, gen)
    return (lambda m: s * masked_ce(m(fx), ry, classes)), ry


FORGET_LOSSES: dict[str, ForgetLoss] = {"neg": neg_loss, "rl": rl_loss}


@dataclass(frozen=True)
class UnlearnAlgorithm:
    """One unlearning algorithm (SPEC §3).

    ``combine(g_f, refs, cfg) -> (x, ProjectionInfo | None)`` turns the forget gradient into
    the applied update given the retained tasks' reference gradients (``refs.G``);
    ``forget`` is ``"neg"``, ``"rl"``, a :data:`ForgetLoss`, or None (no forget term: g_f =
    0); ``uses_refs``: whether ``combine`` reads ``refs.G`` (computed before the forget
    batch's pass, SPEC §2 order). ``unlearning_rate`` and ``forget_loss_scale`` are the
    algorithm's defaults (used unless the user gives them)."""

    name: str
    combine: Callable
    forget: str | ForgetLoss | None = "neg"
    help: str = ""
    aliases: tuple[str, ...] = ()
    unlearning_rate: float = 0.01
    forget_loss_scale: float = 1.0
    uses_refs: bool = True
    order: int = 100  # position in listings (built-ins first, in SPEC order)

    def forget_loss(self, fx, fy, classes, k, s, gen):
        """(loss_fn, labels) of the forget batch, or None without a forget term."""
        if self.forget is None:
            return None
        fn = FORGET_LOSSES[self.forget] if isinstance(self.forget, str) else self.forget
        return fn(fx, fy, classes, k, s, gen)


REGISTRY: dict[str, UnlearnAlgorithm] = {}
_ALIASES: dict[str, str] = {}


def _squash(name: str) -> str:
    return str(name).strip().lower().replace("_", "").replace("-", "")


def register(alg: UnlearnAlgorithm) -> UnlearnAlgorithm:
    if alg.forget is not None and isinstance(alg.forget, str) and alg.forget not in FORGET_LOSSES:
        raise ValueError(f"unlearning algorithm {alg.name}: unknown forget loss {alg.forget!r}")
    keys = [str(key).strip().lower() for key in (alg.name, *alg.aliases)]
    for key in keys:  # check every spelling first: a refused algorithm leaves no trace
        owner = _ALIASES.get(key) or _ALIASES.get(_squash(key))
        if owner is not None and owner != alg.name:
            raise ValueError(f"unlearning algorithm {alg.name}: name {key!r} is taken by {owner}")
    for key in keys:
        _ALIASES[key] = alg.name
        _ALIASES[_squash(key)] = alg.name
    REGISTRY[alg.name] = alg
    return alg


def names() -> tuple[str, ...]:
    """Registered names, built-ins first in SPEC order."""
    return tuple(a.name for a in sorted(REGISTRY.values(), key=lambda a: (a.order, a.name)))


def canonical(name) -> str:
    """The registered name for ``name`` (case-insensitive; ``_``/``-`` and the thesis
    spellings are accepted). UsageError names the choices."""
    key = str(name).strip().lower()
    hit = _ALIASES.get(key) or _ALIASES.get(_squash(key))
    if hit is None:
        raise UsageError(f"unknown unlearning algorithm '{name}'",
                         f"choose one of: {', '.join(names())} (case-insensitive)")
    return hit


def get(name: str) -> UnlearnAlgorithm:
    return REGISTRY[canonical(name)]


def rule_help(key: str) -> str:
    """The default of ``unlearning_rate`` or ``forget_loss_scale`` per algorithm, for help
    texts: '0.03 for rl-gem, rl-agem; 0.01 otherwise' (otherwise = the value an algorithm
    that declares nothing gets)."""
    import dataclasses

    fallback = next(f.default for f in dataclasses.fields(UnlearnAlgorithm) if f.name == key)
    groups: dict[float, list[str]] = {}
    for n in names():
        groups.setdefault(float(getattr(REGISTRY[n], key)), []).append(n)
    parts = [f"{val:g} for {', '.join(who)}" for val, who in groups.items() if val != float(fallback)]
    return "; ".join(parts + [f"{float(fallback):g} otherwise"]) if parts else f"{float(fallback):g}"


__all__ = ["UnlearnAlgorithm", "REGISTRY", "FORGET_LOSSES", "register", "names", "canonical", "get",
           "random_labels", "neg_loss", "rl_loss", "rule_help"]
