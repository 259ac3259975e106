"""``build_model(kind, width, input_shape, num_classes)`` and ``param_count``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cluctl.config import MODEL_WIDTHS
from cluctl.errors import UsageError
from cluctl.models.nets import MLP, ResNet18

__all__ = ["DEFAULT_WIDTHS", "MODEL_KINDS", "build_model", "canonical_kind", "param_count"]

MODEL_KINDS = tuple(MODEL_WIDTHS)
DEFAULT_WIDTHS = dict(MODEL_WIDTHS)
_ALIASES = {"resnet18": "resnet18", "resnet": "resnet18", "mlp": "mlp"}


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def canonical_kind(kind: str) -> str:
    """``"resnet"`` -> ``"resnet18"``; case-insensitive; UsageError for unknown kinds."""
    key = kind.strip().lower() if isinstance(kind, str) else None
    if key not in _ALIASES:
        raise UsageError(
            f"unknown model {kind!r}", f"valid: {', '.join(MODEL_KINDS)} (resnet = resnet18)"
        )
    return _ALIASES[key]


def build_model(
    kind: str, width: int | None, input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    """A freshly initialised network (uses the global torch RNG; seed it first).

    ``width``: ResNet-18's base channel count ``nf`` (default 20) or the MLP's hidden
    size (default 100); ``None`` means the default. ``input_shape`` is (C, H, W).
    The returned module carries ``.kind`` (canonical) and ``.width`` (resolved).
    """
    kind = canonical_kind(kind)
    if width is None:
        width = DEFAULT_WIDTHS[kind]
    if not _is_int(width) or width < 1:
        raise UsageError(f"model width must be a positive integer, got {width!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(_is_int(d) and d >= 1 for d in shape):
        raise UsageError(f"input shape must be (C, H, W) with positive sizes, got {shape!r}")
    if not _is_int(num_classes) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if kind == "resnet18":
        model: nn.Module = ResNet18(shape[0], num_classes, nf=width)
    else:
        model = MLP(shape, num_classes, width=width)
    model.kind = kind
    model.width = width
    return model


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those with ``requires_grad``). Buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
