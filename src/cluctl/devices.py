"""Devices: the one parser of a device name (``cpu``, ``cuda``, ``cuda:N``) used by every
layer (the engine, the memorization estimator, launch's per-seed devices) and the one
parser of a device list (``--devices``/``--gpus`` of launch, ``memorize --devices``)."""

from __future__ import annotations

import re

from .errors import UsageError


def resolve_device(name: str | None) -> "torch.device":
    """The torch device for ``name`` (None/""/auto: cuda:0 if visible, else cpu); one-line
    UsageError for an unknown or invisible device."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device '{name}'", "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device '{name}' requested but no CUDA GPU is visible", "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"device '{name}' requested but only {torch.cuda.device_count()} CUDA GPU(s) are visible",
                "use --device cpu or a visible GPU",
            )
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device '{name}'", "use cpu, cuda or cuda:N")
    return dev


def visible_gpus() -> int:
    """CUDA GPUs this process can see (0 when torch sees none or the driver is broken)."""
    import torch

    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - broken driver
        return 0


def parse_device_list(devices=None, gpus: int | None = None, unique: bool = False) -> list[str]:
    """Canonical device names from ``--devices`` (``"cpu"``, ``"cuda:0,cuda:1"`` or a
    sequence; ``cuda`` -> ``cuda:0``), which wins, or ``--gpus N`` (``cuda:0..N-1``; 0 ->
    cpu); neither: the default device (cuda:0 if visible, else cpu). ``unique``: a device
    listed twice is an error (launch's one process per device slot). One-line UsageError
    naming what is visible otherwise."""
    if devices is not None and devices != "" and devices != ():
        if isinstance(devices, str) or not hasattr(devices, "__iter__"):
            items = [d for d in re.split(r"[\s,]+", str(devices).strip()) if d]
        else:
            items = [str(d).strip() for d in devices if str(d).strip()]
        if not items:
            raise UsageError("--devices is empty", "write e.g. --devices cpu or --devices cuda:0,cuda:1")
        out: list[str] = []
        for item in items:
            text = item.strip().lower()
            if text == "cpu":
                dev = "cpu"
            elif re.fullmatch(r"cuda(:\d+)?", text):
                n_vis = visible_gpus()
                idx = int(text.split(":")[1]) if ":" in text else 0
                if idx >= n_vis:
                    raise UsageError(
                        f"--devices names {text} but {n_vis} CUDA GPU(s) are visible",
                        "use --devices cpu, or visible GPUs" + (f" (cuda:0..cuda:{n_vis - 1})" if n_vis else ""),
                    )
                dev = f"cuda:{idx}"
            else:
                raise UsageError(f"--devices: unknown device {item!r}", "write cpu or cuda:N, comma-separated")
            if unique and dev in out:
                raise UsageError(f"--devices lists {dev} twice", "use --per-device K to run K seeds at once on one device")
            out.append(dev)
        return out
    if gpus is not None:
        n = int(gpus)
        if n == 0:
            return ["cpu"]
        n_vis = visible_gpus()
        if n > n_vis:
            raise UsageError(
                f"--gpus {n} asks for {n} GPU(s) but {n_vis} {'is' if n_vis == 1 else 'are'} visible",
                "run on the CPU with --devices cpu" + (f", or ask for at most {n_vis}" if n_vis else ""),
            )
        return [f"cuda:{i}" for i in range(n)]
    return ["cuda:0"] if visible_gpus() else ["cpu"]


__all__ = ["resolve_device", "parse_device_list", "visible_gpus"]
