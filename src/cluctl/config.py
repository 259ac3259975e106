"""Options: defaults and value checks (the algorithm-aware part, names and rule defaults,
is :mod:`cluctl.resolve`, on top of the algorithm registries).

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


def check_learn(cfg: dict) -> dict:
    """The learning options' values (the algorithm's name is checked by its registry:
    :func:`cluctl.resolve.validate_learn`)."""
    cfg = dict(cfg)
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


def check_unlearn(cfg: dict) -> dict:
    """The unlearning options' values, once the algorithm's name is canonical and its rule
    defaults are filled in (:func:`cluctl.resolve.validate_unlearn`)."""
    cfg = dict(cfg)
    cfg["unlearning_rate"] = _float_in(cfg["unlearning_rate"], "--unlearning-rate", 0.0, math.inf, lo_open=True)
    cfg["unlearn_batch_size"] = _positive_int(cfg["unlearn_batch_size"], "--unlearn-batch-size")
    cfg["unlearn_mem_strength"] = _float_in(cfg["unlearn_mem_strength"], "--unlearn-mem-strength", 0.0, math.inf)
    cfg["alpha"] = _float_in(cfg["alpha"], "--alpha", 0.0, 1.0)
    cfg["forget_loss_scale"] = _float_in(cfg["forget_loss_scale"], "--forget-loss-scale", 0.0, math.inf, lo_open=True)
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
