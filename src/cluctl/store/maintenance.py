"""Store maintenance: ``verify`` (integrity and link checks) and ``gc`` (reachability).

Links between objects are 64-hex strings: a checkpoint's meta names its ``parent``,
``root``, ``manifest`` and ``scores``; JSON objects name others in fields such as
``scores``, ``checkpoints``, ``objects``, ``children``.  For reachability every 64-hex
string found anywhere inside a reachable JSON object or checkpoint meta (keys and
values) that is the id of an existing object counts as a link; objects that are neither
JSON nor checkpoints (or cannot be parsed) are scanned as text, conservatively.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Iterator

from cluctl.errors import CorruptObject, StoreError, UsageError
from cluctl.store.checkpoint import header_length, sniff_checkpoint_meta
from cluctl.store.core import GcReport, Problem, Store, VerifyResult, is_oid

CHECKPOINT_LINKS = ("parent", "root", "manifest", "scores")
SMALL = 16 << 20  # objects up to this size are read whole (JSON, small checkpoints)
_CHUNK = 1 << 20
_HEX_TOKEN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


@dataclass
class ObjectInfo:
    oid: str
    size: int
    actual: str | None  # sha256 of the bytes, when asked for
    kind: str  # "checkpoint" | "json" | "blob"
    doc: Any  # checkpoint meta / parsed JSON / None
    raw: bytes | None  # the whole bytes when small


def inspect_object(store: Store, oid: str, verify_hash: bool = True) -> ObjectInfo:
    """Read an object once: optional hash, and what kind of object it is."""
    path = store.object_path(oid)
    h = hashlib.sha256() if verify_hash else None
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= SMALL:
            raw = f.read()
            if h is not None:
                h.update(raw)
            prefix = raw
        else:
            raw = None
            first = f.read(8)
            n = header_length(first, size)
            prefix = first + (f.read(n) if n else b"")
            if h is not None:
                h.update(prefix)
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
    actual = h.hexdigest() if h is not None else None
    meta = sniff_checkpoint_meta(prefix, size)
    if meta is not None:
        return ObjectInfo(oid, size, actual, "checkpoint", meta, raw)
    if raw is not None and raw[:1] == b"{":
        try:
            return ObjectInfo(oid, size, actual, "json", json.loads(raw.decode("utf-8")), raw)
        except (UnicodeDecodeError, ValueError):
            pass
    return ObjectInfo(oid, size, actual, "blob", None, raw)


def iter_hex_ids(value: Any) -> Iterator[str]:
    """Every 64-hex string inside a JSON value (dict keys and values, lists), recursively."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if is_oid(v):
                yield v
        elif isinstance(v, dict):
            for k, x in v.items():
                if is_oid(k):
                    yield k
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)


def object_links(info: ObjectInfo) -> set[str]:
    if info.kind in ("checkpoint", "json"):
        return set(iter_hex_ids(info.doc))
    if info.raw is not None:
        return {m.decode("ascii") for m in _HEX_TOKEN.findall(info.raw)}
    return set()


# ---------------------------------------------------------------------- verify
def verify(store: Store, erased_task: int | None = None) -> VerifyResult:
    """Check every object's hash, every ref's target, every checkpoint's links and every
    manifest's scores link. Removes temp files of dead writers (reported in ``.info``).

    ``erased_task``: when given, also report objects still present that hold that task's
    data (a checkpoint that learned it and did not forget it; a manifest with a non-empty
    buffer for it). Minimal for now; meant to be extended.
    """
    problems: list[Problem] = []
    info: list[str] = []
    try:
        for path in store.clean_temp():
            info.append(f"removed temp file {path.name} left by a dead writer")
    except StoreError as e:
        info.append(f"could not clean temp files: {e}")

    objects = set(store.iter_objects())
    stones = set(store.iter_tombstones())

    def present(x: str) -> bool:
        return x in objects or x in stones or store.has_object(x) or store.is_tombstoned(x)

    def check_link(oid: str, what: str, key: str, value: Any) -> None:
        if value is None:
            return
        if not is_oid(value):
            problems.append(Problem("bad-link", oid, f"{what} {oid} has an invalid {key} link {value!r}"))
        elif not present(value):
            problems.append(Problem(f"missing-{key}", oid, f"{what} {oid} names {key} {value}, which is neither in the store nor tombstoned"))

    for oid in sorted(objects):
        try:
            obj = inspect_object(store, oid, verify_hash=True)
        except FileNotFoundError:
            continue  # removed concurrently (gc, purge)
        except OSError as e:
            problems.append(Problem("unreadable-object", oid, f"object {oid} cannot be read: {e.strerror}"))
            continue
        if obj.actual != oid:
            problems.append(Problem("corrupt-object", oid, str(store.corrupt_error(oid, obj.actual or "?", obj.size))))
            continue
        if obj.kind == "checkpoint":
            for key in CHECKPOINT_LINKS:
                check_link(oid, "checkpoint", key, obj.doc.get(key))
        elif obj.kind == "json" and isinstance(obj.doc, dict) and obj.doc.get("type") == "manifest":
            check_link(oid, "manifest", "scores", obj.doc.get("scores"))
        if erased_task is not None:
            problems.extend(_erased_task_problems(oid, obj, erased_task))

    for name, path in store._iter_ref_files():
        if not store._is_valid_ref_name(name):
            problems.append(Problem("bad-ref-name", name, f"refs/{name} is not a valid ref name; rename or delete it"))
            continue
        try:
            target = store._read_ref_file(name, path)
        except CorruptObject as e:
            problems.append(Problem("corrupt-ref", name, str(e)))
            continue
        if target is not None and not present(target):
            problems.append(Problem("dangling-ref", name, f"ref {name} points to {target}, which is neither in the store nor tombstoned"))

    for oid in sorted(stones):
        stone = store.get_tombstone(oid)
        if stone is not None and stone.get("reason") == "unreadable tombstone":
            problems.append(Problem("corrupt-tombstone", oid, f"tombstone of {oid} is not valid JSON"))
    return VerifyResult(problems, info)


def _erased_task_problems(oid: str, obj: ObjectInfo, task: int) -> list[Problem]:
    out: list[Problem] = []
    doc = obj.doc
    if obj.kind == "checkpoint":
        learned = doc.get("learned") or []
        forgotten = doc.get("forgotten") or []
        if task in learned and task not in forgotten:
            out.append(Problem("erased-data-present", oid, f"checkpoint {oid} learned erased task {task} and has not forgotten it"))
    elif obj.kind == "json" and isinstance(doc, dict) and doc.get("type") == "manifest":
        buf = (doc.get("buffers") or {}).get(str(task))
        if isinstance(buf, dict) and any(isinstance(b, dict) and b.get("indices") for b in buf.values()):
            out.append(Problem("erased-data-present", oid, f"manifest {oid} still holds buffer indices of erased task {task}"))
    return out


# ---------------------------------------------------------------------- gc
def gc(store: Store, dry_run: bool = False, grace_s: float = 3600) -> GcReport:
    """Remove objects unreachable from refs. Objects younger than ``grace_s`` (mtime) are
    spared, and so is everything they link to (a writer may be about to point a ref at
    them). A corrupt ref makes gc refuse (CorruptObject) rather than guess."""
    if not grace_s >= 0:  # nan would spare nothing
        raise UsageError(f"gc grace period must be a number of seconds >= 0, got {grace_s}")
    refs = store.list_refs()
    stats: dict[str, os.stat_result] = {}
    for oid in store.iter_objects():
        try:
            stats[oid] = os.stat(store.object_path(oid))
        except FileNotFoundError:
            pass
    existing = set(stats)
    links_cache: dict[str, set[str]] = {}

    def links(oid: str) -> set[str]:
        if oid not in links_cache:
            try:
                links_cache[oid] = object_links(inspect_object(store, oid, verify_hash=False))
            except FileNotFoundError:
                links_cache[oid] = set()
        return links_cache[oid]

    def closure(start: set[str], seen: set[str]) -> set[str]:
        stack = [o for o in start if o in existing and o not in seen]
        seen.update(stack)
        while stack:
            for nxt in links(stack.pop()):
                if nxt in existing and nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    reach_refs = closure(set(refs.values()), set())
    now = time.time()
    young = {o for o in existing - reach_refs if now - stats[o].st_mtime < grace_s}
    reach_all = closure(young, set(reach_refs))
    report = GcReport(spared_recent=len(reach_all - reach_refs))
    for oid in sorted(existing - reach_all):
        path = store.object_path(oid)
        if dry_run:
            report.removed.append(oid)
            report.bytes_freed += stats[oid].st_size
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if time.time() - st.st_mtime < grace_s:  # freshened by a writer meanwhile
            report.spared_recent += 1
            continue
        with store._writing(f"remove unreachable object {oid}"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
        report.removed.append(oid)
        report.bytes_freed += st.st_size
    if not dry_run:
        store.clean_temp()
    return report
