"""Options that depend on the algorithms: names resolved through the registries, rule
defaults (SPEC §8: the unlearning rate and forget-loss scale declared by each unlearning
algorithm, the stop accuracy chance + (1 - chance)/6) resolved per operation, and the
options a checkpoint records as given.

A checkpoint records ``given`` (the options given explicitly, inherited along ``--from``)
and ``config`` (the values its operation used); rule defaults are never frozen into a
lineage (:func:`resolve_unlearn`).
"""

from __future__ import annotations

from . import config as C
from . import learning, unlearning
from .errors import UsageError


def validate_learn(cfg: dict) -> dict:
    cfg = dict(cfg)
    cfg["learn_algo"] = learning.canonical(cfg["learn_algo"])
    return C.check_learn(cfg)


def unlearn_rule_defaults(algo: str, classes_per_task: int | None = None) -> dict:
    """The rule defaults for ``algo``: its declared unlearning rate and forget-loss scale,
    and the stop accuracy chance + (1 - chance)/6 (None without the number of classes)."""
    alg = unlearning.get(algo)
    out = {"unlearning_rate": alg.unlearning_rate, "forget_loss_scale": alg.forget_loss_scale, "stop_acc": None}
    if classes_per_task:
        chance = 1.0 / classes_per_task
        out["stop_acc"] = chance + (1.0 - chance) / 6.0
    return out


def validate_unlearn(cfg: dict, classes_per_task: int | None = None) -> dict:
    """Canonical algorithm name, rule defaults filled where None, values checked."""
    cfg = dict(cfg)
    cfg["algo"] = unlearning.canonical(cfg["algo"])
    rules = unlearn_rule_defaults(cfg["algo"], classes_per_task)
    for k in C.DERIVED_UNLEARN_KEYS:
        if cfg.get(k) is None:
            cfg[k] = rules[k]
    return C.check_unlearn(cfg)


def resolve_unlearn(base: dict, given: dict, classes_per_task: int | None) -> dict:
    """The unlearning options one operation uses: ``base`` (the state's other options),
    every unlearning option from ``given`` or its static default, and the rule defaults
    resolved for this operation's algorithm and classes. Validated."""
    cfg = dict(base)
    for k, v in C.UNLEARN_DEFAULTS.items():
        cfg[k] = given[k] if given.get(k) is not None else v
    return validate_unlearn(cfg, classes_per_task=classes_per_task)


def given_from_resolved(config: dict, classes_per_task: int | None) -> dict:
    """For checkpoints written before ``given`` was recorded: every option except those
    whose value equals the rule default for the recorded algorithm (those are taken as
    defaults, and resolved afresh from now on)."""
    given = {k: config[k] for k in C.OPTION_KEYS if config.get(k) is not None}
    try:
        rules = unlearn_rule_defaults(config.get("algo") or "neggem", classes_per_task)
    except UsageError:
        return given
    for k in C.DERIVED_UNLEARN_KEYS:
        if k in given and rules.get(k) is not None and abs(float(given[k]) - rules[k]) < 1e-12:
            del given[k]
    return given


__all__ = ["validate_learn", "validate_unlearn", "resolve_unlearn", "unlearn_rule_defaults", "given_from_resolved"]
