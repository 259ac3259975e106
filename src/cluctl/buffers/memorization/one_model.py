"""One model of the Feldman & Zhang estimator: its subset, its training and its result
document (subset mask and per-sample correctness, bit-packed), shared by the in-process
loop (:mod:`.estimator`) and the worker processes (:mod:`.pool`)."""

from __future__ import annotations

import base64

import numpy as np
import torch

from .common import MODEL_RESULT_TYPE, _TAG_INIT, _TAG_SHUFFLE, _TAG_SUBSET, _seed
from .training import _eval_batch, _fit, _logits_apply


def _pack(bits: np.ndarray) -> str:
    return base64.b64encode(np.packbits(np.asarray(bits, dtype=bool)).tobytes()).decode("ascii")


def _unpack(text: str, n: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"{len(raw)} packed bytes for {n} samples")
    return np.unpackbits(raw, count=n).astype(bool)


def _subset_size(n: int, subset: float) -> int:
    return max(1, min(n - 1, int(round(subset * n))))


def _train_one(X, Y, num_classes: int, input_shape, j: int, cfg: dict) -> dict:
    """Train model j of the estimator on its subset; return its result document."""
    from cluctl.models import build_model

    dev = X.device
    n = len(Y)
    m = _subset_size(n, cfg["subset"])
    sel = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(cfg["seed"], j, _TAG_SUBSET)))[:m]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[sel] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(cfg["seed"], j, _TAG_INIT))
        net = build_model(cfg["model"], cfg["width"], tuple(input_shape), num_classes).to(dev)
    gen = torch.Generator().manual_seed(_seed(cfg["seed"], j, _TAG_SHUFFLE))
    train_idx = torch.sort(sel).values.to(dev)
    _fit(net, X, Y, train_idx, cfg["epochs"], cfg["lr"], cfg["batch_size"], cfg["momentum"], gen)
    correct = _logits_apply(net, X, _eval_batch(cfg["model"]),
                            lambda lg, s: lg.argmax(1) == Y[s : s + len(lg)]).cpu().numpy()
    mask_np = mask.numpy()
    return {
        "type": MODEL_RESULT_TYPE,
        "run_key": cfg["run_key"],
        "j": int(j),
        "n": int(n),
        "mask": _pack(mask_np),
        "correct": _pack(correct),
        "train_acc": float(correct[mask_np].mean()),
        "params": {k: cfg[k] for k in ("model", "width", "epochs", "lr", "batch_size", "momentum", "subset", "seed")},
        "dataset_fingerprint": cfg["dataset_fingerprint"],
    }


def _decode_result(doc, run_key_: str, j: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    if (not isinstance(doc, dict) or doc.get("type") != MODEL_RESULT_TYPE or doc.get("run_key") != run_key_
            or doc.get("j") != j or doc.get("n") != n):
        raise ValueError("not this run's model result")
    return _unpack(doc["mask"], n), _unpack(doc["correct"], n)
