"""Memorization scores for ranked replay buffers (SPEC §5).

The learn buffer favours the least memorized samples of a task, the unlearn buffer the
most memorized. Scores come from one of three places:

``import_scores``
    Feldman & Zhang's published file (an ``.npz`` with ``tr_mem``, one score per
    training example, and usually ``tr_labels``). The labels, when present, are checked
    against the dataset's training labels: F&Z built their file from TFDS, whose order
    differs from torchvision's, and indexing scores in the wrong order was a thesis bug
    (SPEC §10).
``estimate_memorization``
    The Feldman & Zhang subsampled estimator:
    ``mem(i) = P[correct on i | i in the subset] - P[correct on i | i not in it]``,
    from K models, each trained on a random ``subset`` fraction of the *whole* training
    set as one C-way classifier (no task masking). Model j's subset, initial weights and
    shuffling are seeded by (seed, j). A sample that all or none of the K models saw has
    no estimate: it gets the mean of the other scores and is counted (``no_estimate``).
    Each finished model's result (its subset mask and per-sample correctness on the full
    training set, bit-packed in a JSON object) is kept under the ref
    ``memorize/<run-key>/model-<j>``; the run key hashes (dataset fingerprint, model,
    width, epochs, lr, batch size, momentum, subset, seed) but not K, so re-running
    skips finished models and a larger K reuses a smaller run's models.
``confidence_proxy``
    The cheap proxy: 1 - the mean true-label confidence (softmax probability of the
    true class over all C classes, eval mode) of each training sample, recorded after
    every epoch of one ordinary training run on the whole training set.
    ``cached_proxy`` computes it once per (dataset, model, width, seed) and keeps it
    under ``scores/proxy/<fingerprint[:16]>-<model>-<width>-seed<seed>``.
    ``resolve_scores`` is what a ranked buffer needs: given scores (``--mem-scores``),
    checked against the dataset, else that cached proxy.

Training (estimator and proxy): SGD over cross-entropy on all C outputs, model in train
mode, shuffled every epoch by a generator seeded per model, a last batch of a single
sample dropped (BatchNorm). The estimator uses momentum 0.9 by default: every model must
*fit* its subset (near 100 % training accuracy) for the in/out difference to expose
memorized samples, and plain SGD needs several times more epochs to get there (on
digits, MLP width 256, 20 epochs: 0.96 training accuracy without momentum, 0.99 with).
The proxy is "one ordinary training run", so it uses plain SGD (momentum 0) by default.
After training: eval mode, ``torch.inference_mode``, large batches, data kept on the
device.

Scores object (``save_scores`` / ``load_scores``): a JSON object in the store::

    {"type": "scores", "method": "feldman-zhang" | "confidence" | "imported",
     "dataset": name, "dataset_fingerprint": fp, "n": N, "scores": [N floats],
     "params": {...}, "no_estimate": count}

JSON rather than safetensors so that ``cluctl store show`` and ``gc``/``verify`` see a
typed object (CIFAR's 50,000 scores take about 1 MB). Never pickle.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cluctl.errors import CluctlError, InternalError, NotFound, UsageError

__all__ = [
    "METHODS",
    "PROXY_DEFAULTS",
    "ESTIMATE_DEFAULTS",
    "cached_proxy",
    "confidence_proxy",
    "estimate_memorization",
    "import_scores",
    "load_scores",
    "proxy_ref",
    "resolve_scores",
    "run_key",
    "save_scores",
]

METHODS = ("feldman-zhang", "confidence", "imported")
SCORES_TYPE = "scores"
MODEL_RESULT_TYPE = "memorize-model"
PROXY_DEFAULTS: dict[str, Any] = {"epochs": 5, "lr": 0.05, "batch_size": 32, "momentum": 0.0}
ESTIMATE_DEFAULTS: dict[str, Any] = {
    "models": 100, "subset": 0.7, "epochs": 10, "model": "mlp", "width": None,
    "lr": 0.05, "batch_size": 32, "momentum": 0.9, "seed": 0,
}
_FORMAT = 1
_TAG_SUBSET, _TAG_INIT, _TAG_SHUFFLE = 0x5B, 0x1D, 0x5F
_TAG_PROXY = 0x9C

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)


# ---------------------------------------------------------------- small helpers


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def _seed(seed: int, j: int, tag: int) -> int:
    """A 63-bit seed derived from (seed, j, tag)."""
    s = np.random.SeedSequence([int(seed), int(j), int(tag), 0xE5]).generate_state(2, dtype=np.uint32)
    return ((int(s[0]) >> 1) << 32) | int(s[1])


def _as_dataset(dataset):
    if isinstance(dataset, str):
        from cluctl.data import load_dataset

        return load_dataset(dataset)
    for attr in ("x_train", "y_train", "num_classes", "fingerprint", "name"):
        if not hasattr(dataset, attr):
            raise UsageError(f"expected a Dataset (or a dataset name), got {type(dataset).__name__}")
    return dataset


def _resolve_model(model: str, width) -> tuple[str, int]:
    from cluctl.models import DEFAULT_WIDTHS, canonical_kind

    kind = canonical_kind(model)
    if width is None:
        width = DEFAULT_WIDTHS[kind]
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or int(width) < 1:
        raise UsageError(f"--width must be a positive integer, got {width!r}")
    return kind, int(width)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must be an integer, got {value!r}") from None
        if not f.is_integer():
            raise UsageError(f"{name} must be an integer, got {value!r}")
        value = int(f)
    value = int(value)
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


def _check_float(name: str, value, lo: float, hi: float | None = None, lo_open=True, hi_open=True) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r}") from None
    bad = not math.isfinite(f) or (f <= lo if lo_open else f < lo)
    if hi is not None:
        bad = bad or (f >= hi if hi_open else f > hi)
    if bad:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open else "]"
        rng = f"{lo_b}{lo:g}, {hi:g}{hi_b}" if hi is not None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
        raise UsageError(f"{name} must be in {rng}, got {value!r}")
    return f


def _parse_devices(devices) -> list[str]:
    from cluctl.devices import parse_device_list

    return parse_device_list(devices)


def _pack(bits: np.ndarray) -> str:
    return base64.b64encode(np.packbits(np.asarray(bits, dtype=bool)).tobytes()).decode("ascii")


def _unpack(text: str, n: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"{len(raw)} packed bytes for {n} samples")
    return np.unpackbits(raw, count=n).astype(bool)


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


# ---------------------------------------------------------------- scores objects


def save_scores(store, scores: np.ndarray, meta: dict) -> str:
    """Store ``scores`` (one finite float per training example) with ``meta`` (method,
    dataset, dataset_fingerprint, params, no_estimate) as a JSON scores object; returns its id."""
    arr = np.asarray(scores)
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:
        raise UsageError(f"scores must be a 1-D numeric array, got dtype {arr.dtype} and shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise UsageError(f"scores hold {int((~np.isfinite(arr)).sum())} NaN/inf value(s)")
    doc = dict(meta or {})
    method = doc.get("method")
    if method not in METHODS:
        raise UsageError(f"scores meta needs a method in {', '.join(METHODS)}, got {method!r}")
    doc["type"] = SCORES_TYPE
    doc["n"] = int(len(arr))
    doc.setdefault("dataset", None)
    doc.setdefault("dataset_fingerprint", None)
    doc.setdefault("params", {})
    doc["no_estimate"] = int(doc.get("no_estimate") or 0)
    doc["scores"] = [float(v) for v in arr]
    return store.put_json(doc)


def load_scores(store, ref: str, dataset=None) -> tuple[np.ndarray, dict]:
    """(scores as float64, meta) of a scores object given by ref name, id or id prefix.
    ``meta`` is the object without its ``scores`` list, plus ``id``. With ``dataset``, the
    scores must have been made for that dataset (same length and fingerprint)."""
    oid = store.resolve(ref)
    hint = "pass the ref or id that `cluctl memorize import`/`estimate` printed"
    data = store.get_bytes(oid)
    doc = None
    if data[:1] == b"{":
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc = None
    if doc is None:
        raise UsageError(f"{ref} ({oid[:12]}) is not a memorization scores object (it is not JSON)", hint)
    if not isinstance(doc, dict) or doc.get("type") != SCORES_TYPE:
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise UsageError(f"{ref} ({oid[:12]}) is not a memorization scores object (its type is {kind!r})", hint)
    values = doc.get("scores")
    n = doc.get("n")
    if not isinstance(values, list) or not isinstance(n, int) or len(values) != n:
        raise UsageError(f"scores object {oid[:12]} is malformed: 'n' is {n!r} but it holds "
                         f"{len(values) if isinstance(values, list) else 'no'} scores", hint)
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"scores object {oid[:12]} holds non-numeric scores", hint) from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise UsageError(f"scores object {oid[:12]} holds non-finite scores", hint)
    meta = {k: v for k, v in doc.items() if k != "scores"}
    meta["id"] = oid
    if dataset is not None:
        ds = _as_dataset(dataset)
        n_ds = len(ds.y_train)
        if n != n_ds:
            raise UsageError(
                f"scores {oid[:12]} have {n:,} entries but {ds.name} has {n_ds:,} training examples",
                "use scores made for this dataset",
            )
        fp = meta.get("dataset_fingerprint")
        if fp and fp != ds.fingerprint:
            raise UsageError(
                f"scores {oid[:12]} were made for another dataset ({meta.get('dataset')}, fingerprint "
                f"{str(fp)[:12]}) than {ds.name} (fingerprint {ds.fingerprint[:12]})",
                "use scores made for this dataset",
            )
    return arr, meta


# ---------------------------------------------------------------- import


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def import_scores(store, path, dataset) -> str:
    """Import Feldman & Zhang scores from an .npz (``tr_mem``; ``tr_labels`` checked
    against the dataset's training labels when present). Returns the scores object's id,
    also kept under the ref ``scores/imported/<fingerprint[:16]>-<file sha256[:16]>``."""
    ds = _as_dataset(dataset)
    p = Path(os.path.expanduser(str(path)))
    name = str(path)
    if not p.exists():
        raise NotFound(f"no file {name}", "give the path of the .npz with tr_mem")
    if p.is_dir():
        raise UsageError(f"{name} is a directory, not an .npz file")
    not_npz = UsageError(f"{name} is not an .npz file", "give an .npz written by numpy.savez with a tr_mem array")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise not_npz from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise not_npz
    n = len(ds.y_train)
    with loaded:
        keys = list(loaded.files)
        if "tr_mem" not in keys:
            have = ", ".join(keys[:8]) or "nothing"
            raise UsageError(f"{name} has no tr_mem array (it holds: {have})",
                             "Feldman & Zhang's file keeps the scores in tr_mem")

        def read(key: str) -> np.ndarray:
            try:
                a = loaded[key]
            except ValueError:  # object arrays need pickle, which is refused
                raise UsageError(f"{key} in {name} is not numeric (it holds Python objects)") from None
            except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise UsageError(f"{key} in {name} cannot be read ({e.__class__.__name__})", "the file looks damaged") from None
            if a.dtype.kind not in "iuf":
                raise UsageError(f"{key} in {name} is not numeric (dtype {a.dtype})")
            if a.ndim != 1:
                raise UsageError(f"{key} in {name} must be 1-D, one value per training example; it has shape {a.shape}")
            return a

        mem = read("tr_mem")
        if len(mem) != n:
            raise UsageError(
                f"tr_mem in {name} has {len(mem):,} scores but {ds.name} has {n:,} training examples",
                "import the scores made for this dataset (the published CIFAR-100 file has 50,000)",
            )
        mem = mem.astype(np.float64)
        bad = ~np.isfinite(mem)
        if bad.any():
            raise UsageError(
                f"tr_mem in {name} holds {int(bad.sum()):,} NaN/inf value(s) (first at position {int(np.flatnonzero(bad)[0])})",
                "every training example needs a finite score",
            )
        labels_checked = False
        if "tr_labels" in keys:
            lab = read("tr_labels")
            if len(lab) != n:
                raise UsageError(
                    f"tr_labels in {name} has {len(lab):,} entries but {ds.name} has {n:,} training examples",
                    "import the file made for this dataset",
                )
            if lab.dtype.kind == "f" and not np.all(np.isfinite(lab) & (lab == np.round(lab))):
                raise UsageError(f"tr_labels in {name} are not whole numbers")
            y = ds.y_train.cpu().numpy() if isinstance(ds.y_train, torch.Tensor) else np.asarray(ds.y_train)
            wrong = int((lab.astype(np.int64) != y.astype(np.int64)).sum())
            if wrong:
                raise UsageError(
                    f"tr_labels in {name} disagree with {ds.name}'s training labels at {wrong:,} of {n:,} positions "
                    "— the scores are in another order (Feldman & Zhang built them from TFDS)",
                    "reorder them to torchvision's order first (match images, then permute tr_mem and tr_labels)",
                )
            labels_checked = True
    sha = _file_sha256(p)
    meta = {
        "method": "imported",
        "dataset": ds.name,
        "dataset_fingerprint": ds.fingerprint,
        "params": {"file": p.name, "file_sha256": sha, "labels_checked": labels_checked},
        "no_estimate": 0,
    }
    oid = save_scores(store, mem, meta)
    store.set_ref(f"scores/imported/{ds.fingerprint[:16]}-{sha[:16]}", oid)
    return oid


# ---------------------------------------------------------------- confidence proxy


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
                _console().print(f"warning: cached proxy {ref} is unusable ({e}); computing it again")
    from cluctl.devices import resolve_device

    dev = resolve_device(str(device) if device is not None else None)
    if not quiet:
        _console().print(
            f"memorization scores: none given, so computing the confidence proxy for {ds.name} "
            f"({kind} width {w}, seed {seed}, {PROXY_DEFAULTS['epochs']} epochs on {dev}) once; "
            f"it is cached in the store as {ref}"
        )
    t0 = time.perf_counter()
    scores = confidence_proxy(ds, kind, w, seed, device=dev, progress=progress, threads=threads, **PROXY_DEFAULTS)
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
        _console().print(f"cached confidence proxy {oid[:12]} as {ref} ({time.perf_counter() - t0:.1f} s)")
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


# ---------------------------------------------------------------- Feldman & Zhang estimator


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


# worker-process state (spawned processes only)
_WORKER: dict[str, Any] = {}


def _worker_init(data_path: str, device: str, threads: int, num_classes: int, input_shape) -> None:
    from safetensors.torch import load_file

    torch.set_num_threads(max(1, int(threads)))
    t = load_file(data_path, device=device)
    _WORKER.update(X=t["x"], Y=t["y"], num_classes=num_classes, input_shape=tuple(input_shape))


def _worker_job(j: int, cfg: dict) -> dict:
    w = _WORKER
    return _train_one(w["X"], w["Y"], w["num_classes"], w["input_shape"], j, cfg)


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
    workers = _check_int("--workers", workers, 1)
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


def _run_pool(ds, devs: Sequence[str], workers: int, todo: list[int], cfg: dict, finish, threads=None) -> None:
    """``workers`` spawned processes per device; the dataset travels once through a
    temporary safetensors file (no pickled tensors)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from safetensors.torch import save_file

    cores = os.cpu_count() or 1
    procs = len(devs) * workers
    threads = max(1, cores // procs) if threads is None else _check_int("--threads", threads, 1)
    tmp = tempfile.mkdtemp(prefix="cluctl-memorize-")
    pools: list[ProcessPoolExecutor] = []
    try:
        path = os.path.join(tmp, "train.safetensors")
        save_file({"x": ds.x_train.contiguous(), "y": ds.y_train.contiguous()}, path)
        ctx = mp.get_context("spawn")
        for d in devs:
            pools.append(ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_worker_init,
                initargs=(path, d, threads, int(ds.num_classes), tuple(ds.input_shape)),
            ))
        pending = {pools[i % len(pools)].submit(_worker_job, j, cfg) for i, j in enumerate(todo)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    doc = fut.result()
                except BrokenProcessPool:
                    raise InternalError(
                        "a memorization worker process died",
                        "re-run the same command: finished models are kept in the store and skipped",
                    ) from None
                finish(doc)
    finally:
        for p in pools:
            p.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
