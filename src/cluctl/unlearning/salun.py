"""SalUn weight-saliency mask (SPEC §3): keep the top ``strength`` fraction of all
parameter entries by |gradient of CE (true labels) over the forget task's unlearn buffer|,
with one global threshold. Ties at the threshold are all kept."""

from __future__ import annotations

import math

import torch


def salun_mask(abs_grad: torch.Tensor, strength: float) -> torch.Tensor:
    """0/1 float mask, same shape as the flat gradient."""
    p = abs_grad.numel()
    k = max(1, min(p, int(math.ceil(strength * p - 1e-9))))
    if k >= p:
        return torch.ones_like(abs_grad)
    thr = torch.topk(abs_grad.reshape(-1), k, sorted=False).values.min()
    return (abs_grad >= thr).to(abs_grad.dtype)
