"""Options: defaults, validation and the resolved config stored with every checkpoint.

One name per option across all commands (SPEC §8). Some defaults depend on other options
(the unlearning rate and forget-loss scale on the algorithm, the stop accuracy on the
number of classes per task, the model on the dataset): these are *rules*, resolved afresh
at every operation from the options the user gave (:func:`resolve_unlearn`), never frozen
into a lineage. A checkpoint records both: ``given`` (the options given explicitly,
inherited along ``--from``) and ``config`` (the values its operation used).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import UsageError

LEARN_ALGOS = ("naive", "gem", "agem")
UNLEARN_ALGOS = ("neggem", "negagem", "rl-gem", "rl-agem", "alt-neggem", "neggrad")
LEARN_BUFFER_TYPES = ("first", "random", "most", "least")
UNLEARN_BUFFER_TYPES = ("same", "random", "most", "least")
SALUN_MODES = ("gradient", "update")
IMPLS = ("fast", "classic")
PRECISIONS = ("fp32", "bf16")

# Scientific options: they define what a checkpoint/run *is*. Anything not listed here
# (device, threads, store, output, progress) never changes results' identity.
LEARN_DEFAULTS: dict[str, Any] = {
    "learn_algo": "gem",
    "lr": 0.1,
    "batch_size": 10,
    "epochs": 3,
    "memories": 256,
    "mem_strength": 0.5,
    "agem_sample": None,
    "learn_buffer_type": "least",
    "learn_buffer_split": 0.2,
    "unlearn_buffer_type": "most",
    "unlearn_buffer_split": 0.2,
    "mem_scores": None,
}
UNLEARN_DEFAULTS: dict[str, Any] = {
    "algo": "neggem",
    "unlearning_rate": None,  # 0.01; 0.03 for rl-*
    "unlearn_batch_size": 10,
    "unlearn_mem_strength": 0.5,
    "alpha": 0.5,
    "forget_loss_scale": None,  # 5 for neggem, rl-gem, rl-agem; 1 otherwise
    "stop_acc": None,  # chance + (1 - chance) / 6
    "max_epochs": 48,
    "salun_strength": None,
    "salun_on": "gradient",
}
RUN_DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "tasks": None,  # dataset's default
    "model": None,  # the dataset's default (digits: mlp; CIFAR: resnet18)
    "width": None,  # model's default
    "seed": 0,
}
# Options that change how, not what, is computed (kept out of a run's identity).
# impl/precision are equivalent up to float rounding; they are recorded, not hashed.
EXECUTION_KEYS = ("impl", "precision", "device", "threads")
EXECUTION_DEFAULTS: dict[str, Any] = {"impl": "fast", "precision": "fp32", "device": None, "threads": None}

# Unlearning options whose default is a rule (depends on the algorithm or the classes).
DERIVED_UNLEARN_KEYS = ("unlearning_rate", "forget_loss_scale", "stop_acc")
# Options that can be given (and so recorded as given): run, learning and unlearning.
OPTION_KEYS = ("dataset", "tasks", "model", "width", "seed") + tuple(LEARN_DEFAULTS) + tuple(UNLEARN_DEFAULTS)

_ALGO_ALIASES = {
    "neggem": "neggem", "negagem": "negagem", "rl-gem": "rl-gem", "rlgem": "rl-gem",
    "rl_gem": "rl-gem", "rl-agem": "rl-agem", "rlagem": "rl-agem", "rl_agem": "rl-agem",
    "alt-neggem": "alt-neggem", "altneggem": "alt-neggem", "alt_neggem": "alt-neggem",
    "neggrad": "neggrad", "neggrad+": "neggrad", "neggradplus": "neggrad",
}


def canonical_unlearn_algo(name: str) -> str:
    key = str(name).strip().lower()
    if key in _ALGO_ALIASES:
        return _ALGO_ALIASES[key]
    raise UsageError(
        f"unknown unlearning algorithm '{name}'",
        f"choose one of: {', '.join(UNLEARN_ALGOS)} (case-insensitive)",
    )


def canonical_learn_algo(name: str) -> str:
    key = str(name).strip().lower()
    if key in LEARN_ALGOS:
        return key
    raise UsageError(f"unknown learning algorithm '{name}'", f"choose one of: {', '.join(LEARN_ALGOS)}")


def _choice(value: str, valid: tuple[str, ...], flag: str) -> str:
    v = str(value).strip().lower()
    if v not in valid:
        raise UsageError(f"{flag} '{value}' is not valid", f"choose one of: {', '.join(valid)}")
    return v


def _positive_int(value: Any, flag: str) -> int:
    try:
        iv = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} must be a positive integer, got '{value}'") from None
    if iv != value and not (isinstance(value, str) and value.strip().isdigit()) and iv != float(value):
        raise UsageError(f"{flag} must be a positive integer, got '{value}'")
    if iv <= 0:
        raise UsageError(f"{flag} must be a positive integer, got {value}")
    return iv


def _float_in(value: Any, flag: str, lo: float, hi: float, lo_open=False, hi_open=False) -> float:
    try:
        fv = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} must be a number, got '{value}'") from None
    bad = (
        not math.isfinite(fv)
        or (fv < lo or (lo_open and fv == lo))
        or (fv > hi or (hi_open and fv == hi))
    )
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise UsageError(f"{flag} must be in {lb}{lo:g}, {hi:g}{rb}, got {value}")
    return fv


def validate_learn(cfg: dict) -> dict:
    cfg = dict(cfg)
    cfg["learn_algo"] = canonical_learn_algo(cfg["learn_algo"])
    cfg["lr"] = _float_in(cfg["lr"], "--lr", 0.0, math.inf, lo_open=True)
    cfg["batch_size"] = _positive_int(cfg["batch_size"], "--batch-size")
    cfg["epochs"] = _positive_int(cfg["epochs"], "--epochs")
    cfg["memories"] = _positive_int(cfg["memories"], "--memories")
    cfg["mem_strength"] = _float_in(cfg["mem_strength"], "--mem-strength", 0.0, math.inf)
    if cfg.get("agem_sample") is not None:
        cfg["agem_sample"] = _positive_int(cfg["agem_sample"], "--agem-sample")
    cfg["learn_buffer_type"] = _choice(cfg["learn_buffer_type"], LEARN_BUFFER_TYPES, "--learn-buffer-type")
    cfg["unlearn_buffer_type"] = _choice(cfg["unlearn_buffer_type"], UNLEARN_BUFFER_TYPES, "--unlearn-buffer-type")
    cfg["learn_buffer_split"] = _float_in(cfg["learn_buffer_split"], "--learn-buffer-split", 0.0, 1.0)
    cfg["unlearn_buffer_split"] = _float_in(cfg["unlearn_buffer_split"], "--unlearn-buffer-split", 0.0, 1.0)
    return cfg


def unlearn_rule_defaults(algo: str, classes_per_task: int | None = None) -> dict:
    """The rule defaults of SPEC §8 for ``algo``: unlearning rate 0.01 (0.03 for rl-*),
    forget-loss scale 5 for neggem/rl-gem/rl-agem (1 otherwise), stop accuracy
    chance + (1 - chance)/6 (None without the number of classes)."""
    algo = canonical_unlearn_algo(algo)
    out = {"unlearning_rate": 0.03 if algo.startswith("rl-") else 0.01,
           "forget_loss_scale": 5.0 if algo in ("neggem", "rl-gem", "rl-agem") else 1.0,
           "stop_acc": None}
    if classes_per_task:
        chance = 1.0 / classes_per_task
        out["stop_acc"] = chance + (1.0 - chance) / 6.0
    return out


def resolve_unlearn(base: dict, given: dict, classes_per_task: int | None) -> dict:
    """The unlearning options one operation uses: ``base`` (the state's other options),
    every unlearning option from ``given`` or its static default, and the rule defaults
    resolved for this operation's algorithm and classes. Validated."""
    cfg = dict(base)
    for k, v in UNLEARN_DEFAULTS.items():
        cfg[k] = given[k] if given.get(k) is not None else v
    return validate_unlearn(cfg, classes_per_task=classes_per_task)


def given_from_resolved(config: dict, classes_per_task: int | None) -> dict:
    """For checkpoints written before ``given`` was recorded: every option except those
    whose value equals the rule default for the recorded algorithm (those are taken as
    defaults, and resolved afresh from now on)."""
    given = {k: config[k] for k in OPTION_KEYS if config.get(k) is not None}
    try:
        rules = unlearn_rule_defaults(config.get("algo") or "neggem", classes_per_task)
    except UsageError:
        return given
    for k in DERIVED_UNLEARN_KEYS:
        if k in given and rules.get(k) is not None and abs(float(given[k]) - rules[k]) < 1e-12:
            del given[k]
    return given


def validate_unlearn(cfg: dict, classes_per_task: int | None = None) -> dict:
    cfg = dict(cfg)
    algo = canonical_unlearn_algo(cfg["algo"])
    cfg["algo"] = algo
    rules = unlearn_rule_defaults(algo, classes_per_task)
    if cfg.get("unlearning_rate") is None:
        cfg["unlearning_rate"] = rules["unlearning_rate"]
    cfg["unlearning_rate"] = _float_in(cfg["unlearning_rate"], "--unlearning-rate", 0.0, math.inf, lo_open=True)
    cfg["unlearn_batch_size"] = _positive_int(cfg["unlearn_batch_size"], "--unlearn-batch-size")
    cfg["unlearn_mem_strength"] = _float_in(cfg["unlearn_mem_strength"], "--unlearn-mem-strength", 0.0, math.inf)
    cfg["alpha"] = _float_in(cfg["alpha"], "--alpha", 0.0, 1.0)
    if cfg.get("forget_loss_scale") is None:
        cfg["forget_loss_scale"] = rules["forget_loss_scale"]
    cfg["forget_loss_scale"] = _float_in(cfg["forget_loss_scale"], "--forget-loss-scale", 0.0, math.inf, lo_open=True)
    if cfg.get("stop_acc") is None and classes_per_task:
        cfg["stop_acc"] = rules["stop_acc"]
    if cfg.get("stop_acc") is not None:
        cfg["stop_acc"] = _float_in(cfg["stop_acc"], "--stop-acc", 0.0, 1.0)
    cfg["max_epochs"] = _positive_int(cfg["max_epochs"], "--max-epochs")
    if cfg.get("salun_strength") is not None:
        cfg["salun_strength"] = _float_in(cfg["salun_strength"], "--salun-strength", 0.0, 1.0, lo_open=True)
    cfg["salun_on"] = _choice(cfg["salun_on"], SALUN_MODES, "--salun-on")
    return cfg


def validate_execution(cfg: dict) -> dict:
    cfg = dict(cfg)
    cfg["impl"] = _choice(cfg.get("impl") or "fast", IMPLS, "--impl")
    cfg["precision"] = _choice(cfg.get("precision") or "fp32", PRECISIONS, "--precision")
    if cfg.get("threads") is not None:
        cfg["threads"] = _positive_int(cfg["threads"], "--threads")
    return cfg
