"""Does the memorization estimator find mislabelled samples? And how long do K models take?

Moves a random 3 % of the digits training labels each to a random other class, then
scores every training sample with the Feldman & Zhang estimator (K models on random 70 %
subsets, fresh temporary store: nothing reused) and with the confidence proxy, and
prints for each: precision among the top 3 % of scores (chance = 0.03) and the ROC AUC of
score vs "label was moved"; plus the mean training-subset accuracy the K models reached
(memorizing the moved labels needs ~100 %) and the estimator's wall time.

    .venv/bin/python benchmarks/bench_memorization.py --models 64 --workers 2

Not a test; it prints figures. ``--compare-workers`` also times workers=1 in the same
process so the two wall times can be compared on the same box.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import tempfile
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from cluctl.buffers.memorization import confidence_proxy, estimate_memorization
from cluctl.data import load_dataset
from cluctl.store import Store


def moved_labels(ds, seed: int, frac: float):
    rng = np.random.default_rng(seed)
    n, c = len(ds.y_train), ds.num_classes
    moved = rng.choice(n, int(round(frac * n)), replace=False)
    y = ds.y_train.numpy().copy()
    y[moved] = (y[moved] + rng.integers(1, c, size=len(moved))) % c
    fp = hashlib.sha256(ds.fingerprint.encode() + b"moved" + y.tobytes()).hexdigest()
    is_moved = np.zeros(n, dtype=bool)
    is_moved[moved] = True
    return dataclasses.replace(ds, y_train=torch.as_tensor(y), fingerprint=fp), is_moved


def figures(scores: np.ndarray, is_moved: np.ndarray) -> tuple[float, float]:
    k = int(is_moved.sum())
    top = np.argsort(-scores, kind="stable")[:k]
    return float(is_moved[top].mean()), float(roc_auc_score(is_moved, scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--subset", type=float, default=0.7)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--proxy-epochs", type=int, default=5)
    ap.add_argument("--proxy-lr", type=float, default=0.05)
    ap.add_argument("--proxy-batch-size", type=int, default=32)
    ap.add_argument("--frac", type=float, default=0.03, help="fraction of training labels moved")
    ap.add_argument("--seeds", default="0", help="comma list: noise + estimator seeds")
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="threads per process (default: cores / processes)")
    ap.add_argument("--compare-workers", action="store_true", help="also time workers=1 in-process")
    a = ap.parse_args()

    cores = os.cpu_count() or 1
    print(f"# {platform.node()} cores={cores} torch={torch.__version__} devices={a.devices} workers={a.workers}")
    ds = load_dataset(a.dataset)
    seeds = [int(s) for s in a.seeds.split(",")]
    for seed in seeds:
        noisy, is_moved = moved_labels(ds, seed, a.frac)
        print(f"\n{ds.name}: {len(is_moved)} training samples, {int(is_moved.sum())} labels moved (seed {seed}); "
              f"chance precision@{a.frac:.0%} = {a.frac:.2f}")
        runs = [(a.workers, a.threads)]
        if a.compare_workers and a.workers != 1:
            runs.append((1, a.threads))
        for workers, threads in runs:
            with tempfile.TemporaryDirectory() as tmp:
                st = Store.open(os.path.join(tmp, "store"))
                scores, info = estimate_memorization(
                    noisy, models=a.models, subset=a.subset, epochs=a.epochs, model=a.model, width=a.width,
                    lr=a.lr, batch_size=a.batch_size, momentum=a.momentum, seed=seed, devices=a.devices,
                    workers=workers, threads=threads, store=st,
                )
            prec, auc = figures(scores, is_moved)
            print(f"estimator  K={a.models} {a.model} w={a.width} {a.epochs} ep lr={a.lr} bs={a.batch_size} "
                  f"mom={a.momentum} workers={workers}: precision@3% {prec:.3f}  ROC AUC {auc:.3f}  "
                  f"train acc {info['train_acc_mean']:.4f}  no_estimate {info['no_estimate']}  "
                  f"wall {info['wall_s']:.1f} s ({info['wall_s'] / a.models:.2f} s/model)")
        t0 = time.perf_counter()
        proxy = confidence_proxy(noisy, a.model, a.width, seed=seed, epochs=a.proxy_epochs, lr=a.proxy_lr,
                                 batch_size=a.proxy_batch_size, device=a.devices.split(",")[0],
                                 threads=a.threads)
        wall = time.perf_counter() - t0
        prec, auc = figures(proxy, is_moved)
        print(f"proxy      {a.model} w={a.width} {a.proxy_epochs} ep lr={a.proxy_lr} bs={a.proxy_batch_size}: "
              f"precision@3% {prec:.3f}  ROC AUC {auc:.3f}  wall {wall:.1f} s")


if __name__ == "__main__":
    main()
