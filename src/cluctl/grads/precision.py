"""Mixed precision of the training forward passes: :func:`forward_precision` (bf16 autocast
or float32) and where bf16 is allowed (:func:`bf16_supported`, :func:`cpu_bf16_native`).
The classic and grouped reference gradients and :func:`cluctl.grads.batch_grad` enter
:func:`_autocast`; the vmap fallback stays float32."""

from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager, nullcontext

import torch

_PRECISION: contextvars.ContextVar = contextvars.ContextVar("cluctl_forward_precision", default=None)


@contextmanager
def forward_precision(precision: str | None):
    """Run the training forward passes of this module under bf16 autocast (``"bf16"``) or
    in float32 (``None``/``"fp32"``). The caller checks the device (the engine allows bf16
    where :func:`bf16_supported`)."""
    if precision in (None, "fp32"):
        tok = _PRECISION.set(None)
    elif precision == "bf16":
        tok = _PRECISION.set(torch.bfloat16)
    else:
        from ..errors import UsageError

        raise UsageError(f"unknown precision {precision!r}", "use fp32 or bf16")
    try:
        yield
    finally:
        _PRECISION.reset(tok)


def cpu_bf16_native() -> bool:
    """Does this CPU have native bf16 matrix instructions (Intel AMX, or AVX512-BF16)?
    ``$CLUCTL_CPU_BF16`` = 0/1 overrides the detection (1 also allows emulated bf16)."""
    env = os.environ.get("CLUCTL_CPU_BF16", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except Exception:  # noqa: BLE001 - a torch without these probes: assume none
        return False


def bf16_supported(device: torch.device) -> bool:
    """Where ``--precision bf16`` is allowed: CUDA, and CPUs with native bf16."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_native())


def _autocast(device: torch.device, cache: bool = True):
    dt = _PRECISION.get()
    if dt is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dt, cache_enabled=cache)
