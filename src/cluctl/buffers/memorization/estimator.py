"""Feldman & Zhang's subsampled estimator (:func:`estimate_memorization`) and the key of its
models in the store (:func:`run_key`)."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from cluctl.errors import CluctlError, UsageError

from .common import (
    _FORMAT,
    ProgressFn,
    _as_dataset,
    _check_float,
    _check_int,
    _parse_devices,
    _resolve_model,
)
from .one_model import _decode_result, _train_one
from .pool import _run_pool
from .training import _threads


def run_key(dataset, model: str = "mlp", width=None, epochs: int = 10, lr: float = 0.05, batch_size: int = 32,
            subset: float = 0.7, seed: int = 0, momentum: float = 0.9) -> str:
    """Short hash of what defines the estimator's models (not K, devices or workers)."""
    from cluctl.store.core import canonical_json

    ds = _as_dataset(dataset)
    kind, w = _resolve_model(model, width)
    doc = {"v": _FORMAT, "dataset_fingerprint": ds.fingerprint, "model": kind, "width": w,
           "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size), "momentum": float(momentum),
           "subset": float(subset), "seed": int(seed)}
    return hashlib.sha256(canonical_json(doc)).hexdigest()[:16]


def estimate_memorization(dataset, models: int = 100, subset: float = 0.7, epochs: int = 10, model: str = "mlp",
                          width=None, lr: float = 0.05, batch_size: int = 32, seed: int = 0, devices=("cpu",),
                          workers: int = 1, store=None, progress: ProgressFn | None = None,
                          momentum: float = 0.9, threads: int | None = None) -> tuple[np.ndarray, dict]:
    """Feldman & Zhang's subsampled memorization estimate from ``models`` models (see the
    module docstring). With a ``store`` every finished model is kept under
    ``memorize/<run-key>/model-<j>`` and reused by a later call. Runs in-process on one
    device with ``workers=1`` (``threads``: torch CPU threads meanwhile, default: as set),
    else ``workers`` spawned processes per device, each with max(1, cores // processes)
    threads (or ``threads``).

    Returns (scores [N] float64, info) with info keys ``no_estimate``, ``train_acc_mean``
    (mean accuracy of the models on their own training subsets), ``wall_s``,
    ``models_trained``, ``models_reused``, ``run_key``, ``models``."""
    t0 = time.perf_counter()
    ds = _as_dataset(dataset)
    kind, w = _resolve_model(model, width)
    K = _check_int("--models", models, 2)
    subset = _check_float("--subset", subset, 0.0, 1.0)
    epochs = _check_int("--epochs", epochs, 1)
    lr = _check_float("--lr", lr, 0.0)
    batch_size = _check_int("--batch-size", batch_size, 2)
    momentum = _check_float("--momentum", momentum, 0.0, 1.0, lo_open=False)
    seed = _check_int("--seed", seed, 0)
    workers = _check_int("--per-device", workers, 1)
    devs = _parse_devices(devices)
    n = len(ds.y_train)
    if n < 2:
        raise UsageError(f"{ds.name} has {n} training example(s); at least 2 are needed")
    key = run_key(ds, kind, w, epochs, lr, batch_size, subset, seed, momentum)
    cfg = {"model": kind, "width": w, "epochs": epochs, "lr": lr, "batch_size": batch_size, "momentum": momentum,
           "subset": subset, "seed": seed, "run_key": key, "dataset_fingerprint": ds.fingerprint}

    masks = np.zeros((K, n), dtype=bool)
    corrects = np.zeros((K, n), dtype=bool)
    train_accs = np.zeros(K)
    todo: list[int] = []
    reused = 0
    for j in range(K):
        if store is not None:
            oid = store.get_ref(f"memorize/{key}/model-{j}")
            if oid is not None:
                try:
                    masks[j], corrects[j] = _decode_result(store.get_json(oid), key, j, n)
                    train_accs[j] = corrects[j][masks[j]].mean()
                    reused += 1
                    continue
                except (CluctlError, ValueError, KeyError, TypeError):
                    pass  # unreadable or foreign: train it again
        todo.append(j)

    done = [reused]

    def finish(doc: dict) -> None:
        j = doc["j"]
        if store is not None:
            store.set_ref(f"memorize/{key}/model-{j}", store.put_json(doc))
        masks[j], corrects[j] = _decode_result(doc, key, j, n)
        train_accs[j] = corrects[j][masks[j]].mean()
        done[0] += 1
        if progress is not None:
            progress(done[0], K, f"model {j} train acc {train_accs[j]:.3f}")

    if progress is not None:
        progress(done[0], K, f"{reused} reused" if reused else "")
    if todo:
        if len(devs) == 1 and workers == 1:
            X = ds.x_train.to(devs[0])
            Y = ds.y_train.to(devs[0])
            with _threads(threads):
                for j in todo:
                    finish(_train_one(X, Y, ds.num_classes, ds.input_shape, j, cfg))
        else:
            _run_pool(ds, devs, workers, todo, cfg, finish, threads)

    in_cnt = masks.sum(0)
    out_cnt = K - in_cnt
    valid = (in_cnt > 0) & (out_cnt > 0)
    scores = np.zeros(n, dtype=np.float64)
    if valid.any():
        p_in = (corrects & masks).sum(0)[valid] / in_cnt[valid]
        p_out = (corrects & ~masks).sum(0)[valid] / out_cnt[valid]
        scores[valid] = p_in - p_out
        scores[~valid] = scores[valid].mean()
    info = {
        "no_estimate": int((~valid).sum()),
        "train_acc_mean": float(train_accs.mean()),
        "wall_s": round(time.perf_counter() - t0, 3),
        "models_trained": len(todo),
        "models_reused": reused,
        "run_key": key,
        "models": K,
    }
    return scores, info
