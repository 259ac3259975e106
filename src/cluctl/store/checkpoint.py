"""Checkpoints: safetensors files whose ``__metadata__["cluctl"]`` holds the canonical JSON
of the checkpoint's meta (``type``, ``parent``, ``root``, ``manifest``, ``scores``, ``op``,
``learned``, ``forgotten``, ...).

Only safetensors is ever used to read tensors: never pickle, never ``torch.load``.
torch and safetensors are imported lazily so that importing the store stays fast.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cluctl.errors import CorruptObject, UsageError
from cluctl.store.base import canonical_json, is_oid, loads_json, open_regular

if TYPE_CHECKING:  # pragma: no cover
    import torch

# the store is passed in as ``store``: a cluctl.store.core.Store, not imported here so that the
# package's modules import one way only (base <- checkpoint <- maintenance <- core <- purge)
Store = Any

MAX_HEADER = 100_000_000  # safetensors' own limit
LINKS = ("parent", "root", "manifest", "scores")
VERIFY_HINT = "run `cluctl store verify`; restore it from a copy or re-run the operation that made it"
# bounds of plausible metadata: a lying checkpoint must not make cluctl allocate a model of
# 10^9 units or index a buffer at 10^12 (the engine still checks indices against its dataset)
MAX_TASKS = 100_000
MAX_WIDTH = 1 << 14
MAX_CLASSES = 1_000_000
MAX_INDEX = (1 << 31) - 1


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_list(v: object, lo: int, hi: int, what: str, max_len: int = 10_000_000) -> str | None:
    if not isinstance(v, list):
        return f"{what} is a {type(v).__name__}, not a list"
    if len(v) > max_len:
        return f"{what} has {len(v)} entries (at most {max_len})"
    for x in v:
        if not _is_int(x):
            return f"{what} holds {str(x)[:20]!r}, not an integer"
        if not lo <= x <= hi:
            return f"{what} holds {x}, outside [{lo}, {hi}]"
    return None


def meta_problem(meta: Mapping[str, Any]) -> str | None:
    """Why a checkpoint's meta cannot be trusted (None if it can). Only the fields present
    are checked; their types and ranges must be what cluctl writes."""
    for k in LINKS:
        v = meta.get(k)
        if v is not None and not is_oid(v):
            return f"{k} is {str(v)[:70]!r}, not an object id"
    n_tasks = meta.get("n_tasks")
    if n_tasks is not None and not (_is_int(n_tasks) and 1 <= n_tasks <= MAX_TASKS):
        return f"n_tasks is {str(n_tasks)[:20]!r}, not an integer in [1, {MAX_TASKS}]"
    hi = (n_tasks - 1) if _is_int(n_tasks) else MAX_TASKS
    for k in ("learned", "forgotten"):
        if meta.get(k) is not None:
            bad = _int_list(meta[k], 0, hi, k, MAX_TASKS)
            if bad:
                return bad
    cfg = meta.get("config")
    if cfg is not None and not isinstance(cfg, dict):
        return f"config is a {type(cfg).__name__}, not an object"
    for where, w in (("width", meta.get("width")), ("config width", (cfg or {}).get("width"))):
        if w is not None and not (_is_int(w) and 1 <= w <= MAX_WIDTH):
            return f"{where} is {str(w)[:20]!r}, not an integer in [1, {MAX_WIDTH}]"
    seed = meta.get("seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**64):
        return f"seed is {str(seed)[:30]!r}, not an integer in [0, 2^64)"
    if meta.get("class_order") is not None:
        bad = _int_list(meta["class_order"], 0, MAX_CLASSES, "class_order", MAX_CLASSES)
        if bad:
            return bad
    hist = meta.get("history")
    if hist is not None and not (isinstance(hist, list) and all(isinstance(h, str) for h in hist)):
        return "history is not a list of operation names"
    for k in ("op", "dataset", "dataset_fingerprint", "model"):
        v = meta.get(k)
        if v is not None and not isinstance(v, str):
            return f"{k} is a {type(v).__name__}, not a string"
    return None


def manifest_problem(doc: object) -> str | None:
    """Why a buffer manifest cannot be trusted (None if it can): buffers maps task numbers
    to {learn, unlearn} buffers whose indices are integers in [0, 2^31)."""
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    if doc.get("scores") is not None and not is_oid(doc["scores"]):
        return f"scores is {str(doc['scores'])[:70]!r}, not an object id"
    bufs = doc.get("buffers")
    if bufs is None:
        return None
    if not isinstance(bufs, dict):
        return f"buffers is a {type(bufs).__name__}, not an object"
    for t, b in bufs.items():
        if not (t.isdigit() and int(t) < MAX_TASKS):
            return f"buffers has the key {t[:20]!r}, not a task number"
        if not isinstance(b, dict):
            return f"the buffer of task {t} is not an object"
        for kind, buf in b.items():
            if not isinstance(buf, dict):
                return f"buffer {kind} of task {t} is not an object"
            if "indices" in buf:
                bad = _int_list(buf["indices"], 0, MAX_INDEX, f"buffer {kind} of task {t}")
                if bad:
                    return bad
            if buf.get("scores") is not None and not is_oid(buf["scores"]):
                return f"buffer {kind} of task {t} names scores {str(buf['scores'])[:70]!r}, not an object id"
    return None


def _check_meta(oid: str, meta: dict) -> None:
    bad = meta_problem(meta)
    if bad:
        raise CorruptObject(f"checkpoint {oid} has invalid metadata: {bad}", VERIFY_HINT)
_CHUNK = 1 << 20


def header_length(first8: bytes, size: int) -> int | None:
    """The safetensors header length announced by the first 8 bytes, if plausible."""
    if len(first8) < 8:
        return None
    n = int.from_bytes(first8[:8], "little")
    if n < 2 or n > MAX_HEADER or 8 + n > size:
        return None
    return n


def checkpoint_meta_from_header(header: bytes) -> tuple[dict | None, str]:
    """(meta, "") for a cluctl checkpoint header, else (None, why-not)."""
    try:
        parsed = loads_json(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "it is not a safetensors file"
    if not isinstance(parsed, dict):
        return None, "it is not a safetensors file"
    md = parsed.get("__metadata__")
    if not isinstance(md, dict) or not isinstance(md.get("cluctl"), str):
        return None, "it is a safetensors file without cluctl metadata"
    try:
        meta = loads_json(md["cluctl"])
    except ValueError:
        return None, "its cluctl metadata is not valid JSON"
    if not isinstance(meta, dict):
        return None, "its cluctl metadata is not a JSON object"
    return meta, ""


def sniff_checkpoint_meta(data_prefix: bytes, size: int) -> dict | None:
    """The cluctl meta if ``data_prefix`` (the object's first bytes, header included)
    starts a cluctl checkpoint, else None. No hash check."""
    n = header_length(data_prefix[:8], size)
    if n is None or len(data_prefix) < 8 + n:
        return None
    return checkpoint_meta_from_header(data_prefix[8 : 8 + n])[0]


def _not_checkpoint(oid: str, why: str) -> UsageError:
    return UsageError(f"object {oid} is not a cluctl checkpoint: {why}", "pass the id or ref of a checkpoint (see `cluctl store ls`)")


def _as_oid(store: Store, oid: str) -> str:
    return oid.lower() if is_oid(str(oid).lower()) else store.resolve(oid)


def save_checkpoint(store: Store, tensors: Mapping[str, "torch.Tensor"], meta: Mapping[str, Any] | None = None) -> str:
    """Serialise ``tensors`` (moved to CPU, contiguous) and ``meta`` into a safetensors
    object and store it. Same tensors + meta -> same bytes -> same id."""
    import torch
    from safetensors.torch import save

    if not isinstance(tensors, Mapping):
        raise UsageError(f"checkpoint tensors must be a dict of name -> tensor, not {type(tensors).__name__}")
    prepared: dict[str, torch.Tensor] = {}
    for name in sorted(tensors, key=str):
        t = tensors[name]
        if not isinstance(name, str) or not name:
            raise UsageError(f"checkpoint tensor names must be non-empty strings, not {name!r}")
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"checkpoint entry {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.layout != torch.strided:
            raise UsageError(f"checkpoint tensor {name!r} has layout {t.layout}; only dense tensors can be saved", "call .to_dense() first")
        c = t.detach()
        if c.device.type == "cpu":
            # a copy, so that tensors sharing storage (tied weights, views) serialise independently
            c = c.clone(memory_format=torch.contiguous_format)
        else:
            c = c.to("cpu").contiguous()
        if c.is_conj():
            c = c.resolve_conj()
        if c.is_neg():
            c = c.resolve_neg()
        prepared[name] = c
    meta = dict(meta or {})
    if meta.setdefault("type", "checkpoint") != "checkpoint":
        raise UsageError(f"checkpoint meta has type {meta['type']!r}; a checkpoint's type must be 'checkpoint'")
    bad = meta_problem(meta)
    if bad:
        raise UsageError(f"invalid checkpoint metadata: {bad}")
    # the objects it links to become young again (and come back from a concurrent gc's
    # quarantine), so that gc cannot take them while this checkpoint has no ref yet
    store.keep([meta[k] for k in LINKS if is_oid(meta.get(k))], missing_ok=True)
    meta_json = canonical_json(meta).decode("utf-8")
    try:
        data = save(prepared, metadata={"cluctl": meta_json})
    except Exception as e:  # safetensors raises several types
        raise UsageError(f"cannot save checkpoint: {e}") from None
    return store.put_bytes(data)


def load_checkpoint(store: Store, oid: str) -> tuple[dict[str, "torch.Tensor"], dict]:
    """(tensors, meta) of a checkpoint; the object's hash is verified first."""
    from safetensors.torch import load

    oid = _as_oid(store, oid)
    data = store.get_bytes(oid)
    n = header_length(data[:8], len(data))
    if n is None:
        raise _not_checkpoint(oid, "it is not a safetensors file")
    meta, why = checkpoint_meta_from_header(data[8 : 8 + n])
    if meta is None:
        raise _not_checkpoint(oid, why)
    _check_meta(oid, meta)
    man = meta.get("manifest")
    if man and store.has_object(man):
        bad = manifest_problem(store.get_json(man))
        if bad:
            raise CorruptObject(f"manifest {man} of checkpoint {oid} is invalid: {bad}", VERIFY_HINT)
    try:
        tensors = load(data)
    except Exception as e:
        raise CorruptObject(f"checkpoint {oid} cannot be read by safetensors: {e}", "run `cluctl store verify`; re-run the operation that made it") from None
    return dict(tensors), meta


def read_checkpoint_meta(store: Store, oid: str) -> dict:
    """A checkpoint's meta from its safetensors header only (tensors are not loaded),
    still verifying the hash of the whole object (streamed)."""
    oid = _as_oid(store, oid)
    path = store.object_path(oid)
    h = hashlib.sha256()
    try:
        f = open_regular(path)
    except (FileNotFoundError, NotADirectoryError):
        raise store.missing_error(oid) from None
    except OSError as e:
        raise store.unreadable_error(oid, e) from None
    with f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        h.update(first)
        n = header_length(first, size)
        header = b""
        if n is not None:
            header = f.read(n)
            h.update(header)
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    actual = h.hexdigest()
    if actual != oid:
        raise store.corrupt_error(oid, actual, size)
    if n is None:
        raise _not_checkpoint(oid, "it is not a safetensors file")
    meta, why = checkpoint_meta_from_header(header)
    if meta is None:
        raise _not_checkpoint(oid, why)
    _check_meta(oid, meta)
    return meta


__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "sniff_checkpoint_meta",
    "header_length",
    "meta_problem",
    "manifest_problem",
]
