"""Scores objects in the store (:func:`save_scores`, :func:`load_scores`) and the import of
Feldman & Zhang's published file (:func:`import_scores`)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from cluctl.errors import NotFound, UsageError

from .common import METHODS, SCORES_TYPE, _as_dataset


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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _npy_header(npz, key: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of array ``key`` of an open .npz, read from its .npy header only."""
    fmt = np.lib.format
    names = npz.zip.namelist()
    member = key + ".npy" if key + ".npy" in names else key
    try:
        with npz.zip.open(member) as f:
            version = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dtype = read_header(f)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise UsageError(f"{key} in {name} cannot be read ({e.__class__.__name__}: its .npy header)",
                         "the file looks damaged") from None
    return tuple(int(d) for d in shape), np.dtype(dtype)


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

        def read(key: str, mismatch: tuple[str, str]) -> np.ndarray:
            """The 1-D numeric array ``key``, one value per training example. Its .npy header
            is checked first, so a file that claims more values than that (a damaged or
            hostile header: 10**12 of them) is refused before anything is allocated."""
            shape, dtype = _npy_header(loaded, key, name)
            if dtype.hasobject:  # object arrays need pickle, which is refused
                raise UsageError(f"{key} in {name} is not numeric (it holds Python objects)")
            if dtype.kind not in "iuf":
                raise UsageError(f"{key} in {name} is not numeric (dtype {dtype})")
            if len(shape) != 1:
                raise UsageError(f"{key} in {name} must be 1-D, one value per training example; it has shape {shape}")
            if shape[0] != n:
                raise UsageError(mismatch[0].format(count=shape[0]), mismatch[1])
            try:
                a = loaded[key]
            except ValueError:  # object arrays need pickle, which is refused
                raise UsageError(f"{key} in {name} is not numeric (it holds Python objects)") from None
            except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise UsageError(f"{key} in {name} cannot be read ({e.__class__.__name__})", "the file looks damaged") from None
            if a.dtype.kind not in "iuf":
                raise UsageError(f"{key} in {name} is not numeric (dtype {a.dtype})")
            if a.ndim != 1 or len(a) != n:
                raise UsageError(f"{key} in {name} must be 1-D, one value per training example; it has shape {a.shape}")
            return a

        mem = read("tr_mem", (f"tr_mem in {name} has {{count:,}} scores but {ds.name} has {n:,} training examples",
                              "import the scores made for this dataset (the published CIFAR-100 file has 50,000)"))
        mem = mem.astype(np.float64)
        bad = ~np.isfinite(mem)
        if bad.any():
            raise UsageError(
                f"tr_mem in {name} holds {int(bad.sum()):,} NaN/inf value(s) (first at position {int(np.flatnonzero(bad)[0])})",
                "every training example needs a finite score",
            )
        labels_checked = False
        if "tr_labels" in keys:
            lab = read("tr_labels", (f"tr_labels in {name} has {{count:,}} entries but {ds.name} has {n:,} training "
                                     "examples", "import the file made for this dataset"))
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
