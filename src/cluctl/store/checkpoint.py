"""Checkpoints: safetensors files whose ``__metadata__["cluctl"]`` holds the canonical JSON
of the checkpoint's meta (``type``, ``parent``, ``root``, ``manifest``, ``scores``, ``op``,
``learned``, ``forgotten``, ...).

Only safetensors is ever used to read tensors: never pickle, never ``torch.load``.
torch and safetensors are imported lazily so that importing the store stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cluctl.errors import CorruptObject, UsageError
from cluctl.store.core import Store, canonical_json, is_oid

if TYPE_CHECKING:  # pragma: no cover
    import torch

MAX_HEADER = 100_000_000  # safetensors' own limit
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
        parsed = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "it is not a safetensors file"
    if not isinstance(parsed, dict):
        return None, "it is not a safetensors file"
    md = parsed.get("__metadata__")
    if not isinstance(md, dict) or not isinstance(md.get("cluctl"), str):
        return None, "it is a safetensors file without cluctl metadata"
    try:
        meta = json.loads(md["cluctl"])
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
        f = open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise store.missing_error(oid) from None
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
    return meta


__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_meta",
    "sniff_checkpoint_meta",
    "header_length",
]
