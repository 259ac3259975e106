"""SalUn (SPEC §3): the weight-saliency mask — keep the top ``strength`` fraction of all
parameter entries by |gradient of CE (true labels) over the forget task's unlearn buffer|,
with one global threshold; ties at the threshold are all kept — and the modifier that
applies it to an unlearning request (:class:`SalUn`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def salun_mask(abs_grad: torch.Tensor, strength: float) -> torch.Tensor:
    """0/1 float mask, same shape as the flat gradient."""
    import torch

    p = abs_grad.numel()
    k = max(1, min(p, int(math.ceil(strength * p - 1e-9))))
    if k >= p:
        return torch.ones_like(abs_grad)
    thr = torch.topk(abs_grad.reshape(-1), k, sorted=False).values.min()
    return (abs_grad >= thr).to(abs_grad.dtype)


class SalUn:
    """The SalUn modifier of an unlearning request (off unless ``salun_strength`` is set):
    the mask is computed once at the start of the request from |gradient of CE with true
    labels| over the forgotten task's whole unlearn buffer (a measurement: BatchNorm's
    running statistics are left alone); ``gradient`` mode masks g_f before the combine
    step (the thesis variant), ``update`` mode masks the final update (SalUn itself)."""

    def __init__(self, mask: torch.Tensor, mode: str):
        self.mask = mask
        self.mode = mode

    @classmethod
    def start(cls, model, unlearn_batch, cfg) -> "SalUn | None":
        if not cfg.get("salun_strength"):
            return None
        from ..grads import batch_grad, masked_ce

        b = unlearn_batch
        g, _ = batch_grad(model, lambda m: masked_ce(m(b.x), b.y, b.classes), update_bn=False)
        return cls(salun_mask(g.abs(), cfg["salun_strength"]), cfg["salun_on"])

    def on_gradient(self, g_f: torch.Tensor) -> torch.Tensor:
        return g_f * self.mask if self.mode == "gradient" else g_f

    def on_update(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask if self.mode == "update" else x
