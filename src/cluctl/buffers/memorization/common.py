"""Constants, argument checks and seeds shared by the memorization modules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cluctl.errors import UsageError


METHODS = ("feldman-zhang", "confidence", "imported")
SCORES_TYPE = "scores"
MODEL_RESULT_TYPE = "memorize-model"
PROXY_DEFAULTS: dict[str, Any] = {"epochs": 5, "lr": 0.05, "batch_size": 32, "momentum": 0.0}
ESTIMATE_DEFAULTS: dict[str, Any] = {
    "models": 100, "subset": 0.7, "epochs": 10, "model": "mlp", "width": None,
    "lr": 0.05, "batch_size": 32, "momentum": 0.9, "seed": 0,
}
_FORMAT = 1
_TAG_SUBSET, _TAG_INIT, _TAG_SHUFFLE = 0x5B, 0x1D, 0x5F
_TAG_PROXY = 0x9C

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)


def _seed(seed: int, j: int, tag: int) -> int:
    """A 63-bit seed derived from (seed, j, tag)."""
    s = np.random.SeedSequence([int(seed), int(j), int(tag), 0xE5]).generate_state(2, dtype=np.uint32)
    return ((int(s[0]) >> 1) << 32) | int(s[1])


def _as_dataset(dataset):
    if isinstance(dataset, str):
        from cluctl.data import load_dataset

        return load_dataset(dataset)
    for attr in ("x_train", "y_train", "num_classes", "fingerprint", "name"):
        if not hasattr(dataset, attr):
            raise UsageError(f"expected a Dataset (or a dataset name), got {type(dataset).__name__}")
    return dataset


def _resolve_model(model: str, width) -> tuple[str, int]:
    from cluctl.models import DEFAULT_WIDTHS, canonical_kind

    kind = canonical_kind(model)
    if width is None:
        width = DEFAULT_WIDTHS[kind]
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or int(width) < 1:
        raise UsageError(f"--width must be a positive integer, got {width!r}")
    return kind, int(width)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must be an integer, got {value!r}") from None
        if not f.is_integer():
            raise UsageError(f"{name} must be an integer, got {value!r}")
        value = int(f)
    value = int(value)
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


def _check_float(name: str, value, lo: float, hi: float | None = None, lo_open=True, hi_open=True) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r}") from None
    bad = not math.isfinite(f) or (f <= lo if lo_open else f < lo)
    if hi is not None:
        bad = bad or (f >= hi if hi_open else f > hi)
    if bad:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        rng = f"{lo_b}{lo:g}, {hi:g}{hi_b}" if hi is not None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
        raise UsageError(f"{name} must be in {rng}, got {value!r}")
    return f


def _parse_devices(devices) -> list[str]:
    from cluctl.devices import parse_device_list

    return parse_device_list(devices)
