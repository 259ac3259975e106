"""The confidence proxy (:func:`confidence_proxy`), its cache in the store
(:func:`cached_proxy`, :func:`proxy_ref`) and what a ranked buffer uses (:func:`resolve_scores`)."""

from __future__ import annotations

import logging

import time

import numpy as np
import torch

from cluctl.errors import CluctlError, UsageError

from .common import (
    PROXY_DEFAULTS,
    _TAG_PROXY,
    ProgressFn,
    _as_dataset,
    _check_float,
    _check_int,
    _resolve_model,
    _seed,
)
from .scores import load_scores, save_scores
from .training import _eval_batch, _fit, _logits_apply, _steps_per_epoch, _threads

log = logging.getLogger(__name__)


def confidence_proxy(dataset, model: str, width: int | None, seed: int, epochs: int = 5, lr: float = 0.05,
                     batch_size: int = 32, device="cpu", progress: ProgressFn | None = None,
                     momentum: float = 0.0, threads: int | None = None) -> np.ndarray:
    """1 - mean true-label confidence of every training sample over the epochs of one
    ordinary training run on the whole training set (C-way, recorded after each epoch in
    eval mode). Higher = more memorized. Deterministic for a seed, device and thread count
    (``threads``: torch CPU threads for the call, default: as set)."""
    from cluctl.devices import resolve_device
    from cluctl.models import build_model

    ds = _as_dataset(dataset)
    kind, width = _resolve_model(model, width)
    seed = _check_int("--seed", seed, 0)
    epochs = _check_int("--epochs", epochs, 1)
    batch_size = _check_int("--batch-size", batch_size, 2)
    lr = _check_float("--lr", lr, 0.0)
    momentum = _check_float("--momentum", momentum, 0.0, 1.0, lo_open=False)
    dev = resolve_device(str(device) if device is not None else None)
    X = ds.x_train.to(dev)
    Y = ds.y_train.to(dev)
    n = len(Y)
    if n < 2:
        raise UsageError(f"{ds.name} has {n} training example(s); at least 2 are needed")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(seed, 0, _TAG_PROXY))
        net = build_model(kind, width, ds.input_shape, ds.num_classes).to(dev)
    gen = torch.Generator().manual_seed(_seed(seed, 1, _TAG_PROXY))
    conf_sum = torch.zeros(n, dtype=torch.float64, device=dev)
    total = epochs * _steps_per_epoch(n, batch_size)
    done = [0]

    def on_step(epoch):
        done[0] += 1
        if progress is not None and (done[0] % 10 == 0 or done[0] == total):
            progress(done[0], total, f"proxy epoch {epoch + 1}/{epochs}")

    def after_epoch(epoch):
        def true_prob(logits, s):
            p = torch.softmax(logits.float(), dim=1)
            return p.gather(1, Y[s : s + len(logits)].view(-1, 1)).view(-1).double()

        conf_sum.add_(_logits_apply(net, X, _eval_batch(kind), true_prob))

    all_idx = torch.arange(n, device=dev)
    with _threads(threads):
        _fit(net, X, Y, all_idx, epochs, lr, batch_size, momentum, gen, after_epoch=after_epoch, on_step=on_step)
    return (1.0 - conf_sum / epochs).cpu().numpy()


def proxy_ref(dataset, model: str, width, seed: int) -> str:
    ds = _as_dataset(dataset)
    kind, w = _resolve_model(model, width)
    return f"scores/proxy/{ds.fingerprint[:16]}-{kind}-{w}-seed{int(seed)}"


def cached_proxy(store, dataset, model: str, width, seed: int, device=None,
                 progress: ProgressFn | None = None, quiet: bool = False,
                 threads: int | None = None) -> tuple[np.ndarray, str]:
    """The confidence proxy (default options: ``PROXY_DEFAULTS``) for this dataset, model,
    width and seed, computed once and kept under ``proxy_ref(...)``; later calls load it.
    Says on stderr when it computes. Returns (scores, id)."""
    ds = _as_dataset(dataset)
    kind, w = _resolve_model(model, width)
    seed = _check_int("--seed", seed, 0)
    ref = proxy_ref(ds, kind, w, seed)
    oid = store.get_ref(ref)
    if oid is not None:
        try:
            scores, _meta = load_scores(store, oid, dataset=ds)
            return scores, oid
        except CluctlError as e:
            if not quiet:
                log.warning("warning: cached proxy %s is unusable (%s); computing it again", ref, e)
    from cluctl.devices import resolve_device

    dev = resolve_device(str(device) if device is not None else None)
    if not quiet:
        log.info("memorization scores: none given, so computing the confidence proxy for %s once: %s width %s, "
                 "seed %s, %s epochs over all %s training images on %s (on a CPU, CIFAR-100 takes half an hour or "
                 "more; give --mem-scores or --learn-buffer-type/--unlearn-buffer-type random to skip it); it is "
                 "cached in the store as %s", ds.name, kind, w, seed, PROXY_DEFAULTS["epochs"], f"{len(ds.y_train):,}",
                 dev, ref)
    t0 = time.perf_counter()
    seen = [None]

    def track(done: int, total: int, msg: str = "") -> None:
        # a line per finished epoch (log files and Slurm outputs show no progress bar)
        if not quiet and seen[0] is not None and msg != seen[0]:
            spent = time.perf_counter() - t0
            log.info("confidence proxy: %s done after %.0f s, about %.0f s left", seen[0].replace("proxy ", ""),
                     spent, spent * (total - done) / max(done, 1))
        seen[0] = msg
        if progress is not None:
            progress(done, total, msg)

    scores = confidence_proxy(ds, kind, w, seed, device=dev, progress=track, threads=threads, **PROXY_DEFAULTS)
    meta = {
        "method": "confidence",
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint,
        "params": {"model": kind, "width": w, "seed": seed, **PROXY_DEFAULTS},
        "no_estimate": 0,
    }
    oid = save_scores(store, scores, meta)
    store.set_ref(ref, oid)
    if not quiet:
        log.info("cached confidence proxy %s as %s (%.1f s)", oid[:12], ref, time.perf_counter() - t0)
    return scores, oid


def resolve_scores(store, dataset, ref: str | None = None, model: str = "resnet18", width=None, seed: int = 0,
                   device=None, progress: ProgressFn | None = None, quiet: bool = False) -> tuple[np.ndarray, str]:
    """The scores a ranked buffer uses: ``ref`` (``--mem-scores``) when given, checked
    against ``dataset``; else the run's cached confidence proxy (``cached_proxy``).
    Returns (scores, id) -- the shape of the engine's ``scores_fn``."""
    if ref:
        scores, meta = load_scores(store, ref, dataset=dataset)
        return scores, meta["id"]
    return cached_proxy(store, dataset, model, width, seed, device=device, progress=progress, quiet=quiet)
