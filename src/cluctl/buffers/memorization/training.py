"""The training loop shared by the estimator's models and the proxy: SGD over cross-entropy on
all C outputs, evaluation in large inference-mode batches, torch threads for a block."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import _check_int


def _eval_batch(kind: str) -> int:
    return 8192 if kind == "mlp" else 1024


def _fit(model, X, Y, train_idx, epochs, lr, batch_size, momentum, gen, after_epoch=None, on_step=None) -> None:
    """SGD over cross-entropy on all outputs (train mode), shuffled per epoch by ``gen``;
    a last batch of one sample is dropped. ``train_idx`` lives on X's device."""
    params = [p for p in model.parameters() if p.requires_grad]
    bufs = [torch.zeros_like(p) for p in params] if momentum else None
    n = len(train_idx)
    dev = X.device
    for epoch in range(epochs):
        model.train()
        perm = train_idx[torch.randperm(n, generator=gen).to(dev)]
        for s in range(0, n, batch_size):
            b = perm[s : s + batch_size]
            if len(b) < 2:  # BatchNorm cannot normalise a single sample
                continue
            loss = F.cross_entropy(model(X[b]), Y[b])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():  # torch.optim.SGD's update (dampening 0, no Nesterov), minus its overhead
                if bufs is None:
                    torch._foreach_add_(params, grads, alpha=-lr)
                else:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, grads)
                    torch._foreach_add_(params, bufs, alpha=-lr)
            if on_step is not None:
                on_step(epoch)
        if after_epoch is not None:
            after_epoch(epoch)


def _logits_apply(model, X, batch: int, fn) -> torch.Tensor:
    """eval mode + inference_mode, ``fn(logits, start)`` per chunk, concatenated."""
    was = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(X), batch):
            out.append(fn(model(X[s : s + batch]), s))
    model.train(was)
    return torch.cat(out) if out else torch.empty(0)


class _threads:
    """Use ``n`` torch CPU threads inside the block (None: leave as is), then restore."""

    def __init__(self, n: int | None):
        self.n = None if n is None else _check_int("--threads", n, 1)

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n is not None and self.n != self.old:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.old:
            torch.set_num_threads(self.old)
        return False


def _steps_per_epoch(n: int, bs: int) -> int:
    return sum(1 for s in range(0, n, bs) if min(bs, n - s) >= 2)
