"""Options: defaults, validation and the resolved config stored with every checkpoint.

One name per option across all commands (SPEC §8). ``resolve`` fills defaults that
depend on other options (the unlearning rate and forget-loss scale depend on the
algorithm, the stop accuracy on the number of classes per task) and validates ranges.
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
    "model": "resnet18",
    "width": None,  # model's default
    "seed": 0,
}
# Options that change how, not what, is computed (kept out of a run's identity).
# impl/precision are equivalent up to float rounding; they are recorded, not hashed.
EXECUTION_KEYS = ("impl", "precision", "device", "threads")
EXECUTION_DEFAULTS: dict[str, Any] = {"impl": "fast", "precision": "fp32", "device": None, "threads": None}

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


def validate_unlearn(cfg: dict, classes_per_task: int | None = None) -> dict:
    cfg = dict(cfg)
    algo = canonical_unlearn_algo(cfg["algo"])
    cfg["algo"] = algo
    if cfg.get("unlearning_rate") is None:
        cfg["unlearning_rate"] = 0.03 if algo.startswith("rl-") else 0.01
    cfg["unlearning_rate"] = _float_in(cfg["unlearning_rate"], "--unlearning-rate", 0.0, math.inf, lo_open=True)
    cfg["unlearn_batch_size"] = _positive_int(cfg["unlearn_batch_size"], "--unlearn-batch-size")
    cfg["unlearn_mem_strength"] = _float_in(cfg["unlearn_mem_strength"], "--unlearn-mem-strength", 0.0, math.inf)
    cfg["alpha"] = _float_in(cfg["alpha"], "--alpha", 0.0, 1.0)
    if cfg.get("forget_loss_scale") is None:
        cfg["forget_loss_scale"] = 5.0 if algo in ("neggem", "rl-gem", "rl-agem") else 1.0
    cfg["forget_loss_scale"] = _float_in(cfg["forget_loss_scale"], "--forget-loss-scale", 0.0, math.inf, lo_open=True)
    if cfg.get("stop_acc") is None and classes_per_task:
        chance = 1.0 / classes_per_task
        cfg["stop_acc"] = chance + (1.0 - chance) / 6.0
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
