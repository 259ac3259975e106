"""Devices: the one parser of a device name (``cpu``, ``cuda``, ``cuda:N``) used by every
layer (the engine, the memorization estimator, launch's per-seed devices)."""

from __future__ import annotations

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


def parse_device_list(devices) -> list[str]:
    """``"cpu"``, ``"cuda:0,cuda:1"`` or a sequence -> canonical device names (``cuda`` ->
    ``cuda:0``); None or empty -> the default device."""
    import torch

    if devices is None or devices == "" or devices == ():
        return [str(resolve_device(None))]
    if isinstance(devices, (str, torch.device)):
        items = [d.strip() for d in str(devices).split(",")]
    else:
        items = [str(d).strip() for d in devices]
    items = [d for d in items if d]
    if not items:
        raise UsageError("--devices is empty", "use cpu, cuda:0 or a comma list like cuda:0,cuda:1")
    out = []
    for d in items:
        dev = resolve_device(d)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", 0)
        out.append(str(dev))
    return out


__all__ = ["resolve_device", "parse_device_list"]
