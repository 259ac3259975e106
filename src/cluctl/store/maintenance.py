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
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cluctl import faults
from cluctl.errors import CorruptObject, StoreError, UsageError
from cluctl.store.base import (
    GcReport,
    Problem,
    VerifyResult,
    is_oid,
    loads_json,
    open_regular,
    read_regular,
)
from cluctl.store.checkpoint import header_length, manifest_problem, meta_problem, sniff_checkpoint_meta

# (the store is passed in as ``store``, a cluctl.store.core.Store, which imports this module)

CHECKPOINT_LINKS = ("parent", "root", "manifest", "scores")
SMALL = 16 << 20  # objects up to this size are read whole (JSON, small checkpoints)
_CHUNK = 1 << 20
_HEX_TOKEN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
JOURNAL = "journal"  # purge intents: cluctl.store.purge


@dataclass
class ObjectInfo:
    oid: str
    size: int
    actual: str | None  # sha256 of the bytes, when asked for
    kind: str  # "checkpoint" | "json" | "blob"
    doc: Any  # checkpoint meta / parsed JSON / None
    raw: bytes | None  # the whole bytes when small


def inspect_path(path, oid: str, verify_hash: bool = True, links_only: bool = False) -> ObjectInfo:
    """Read an object file once: optional hash, and what kind of object it is. Refuses
    anything but a regular file (NotRegularFile, an OSError). ``links_only``: a big
    object's header is enough (no hash)."""
    h = hashlib.sha256() if verify_hash else None
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size <= SMALL and not (links_only and size > (1 << 16)):
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
            elif links_only and n is None and size <= SMALL:
                raw = prefix + f.read()  # not a checkpoint: scan it whole for ids
    actual = h.hexdigest() if h is not None else None
    meta = sniff_checkpoint_meta(prefix, size)
    if meta is not None:
        return ObjectInfo(oid, size, actual, "checkpoint", meta, raw)
    if raw is not None and raw[:1] == b"{":
        try:
            return ObjectInfo(oid, size, actual, "json", loads_json(raw.decode("utf-8")), raw)
        except (UnicodeDecodeError, ValueError):
            pass
    return ObjectInfo(oid, size, actual, "blob", None, raw)


def inspect_object(store, oid: str, verify_hash: bool = True) -> ObjectInfo:
    """Read an object once: optional hash, and what kind of object it is."""
    return inspect_path(store.object_path(oid), oid, verify_hash=verify_hash)


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


#: fields whose ids are links that must resolve (a checkpoint's lineage and buffers, an
#: op-result's checkpoint, a run's lists); any other 64-hex string (a dataset fingerprint,
#: say) counts as a link for gc only when such an object exists
STRONG_KEYS = ("parent", "root", "manifest", "scores", "checkpoint", "checkpoints", "objects", "children")


def strong_links(info: ObjectInfo) -> set[str]:
    doc = info.doc
    if info.kind not in ("checkpoint", "json") or not isinstance(doc, dict):
        return set()
    out = set()
    for k in STRONG_KEYS:
        v = doc.get(k)
        for x in (v if isinstance(v, list) else [v]):
            if is_oid(x):
                out.add(x)
    return out - {info.oid}


def links_detail(store, oid: str) -> dict[str, bool]:
    """{linked id: whether it must resolve (a STRONG_KEYS field)}; empty when unreadable."""
    try:
        info = inspect_path(store.object_path(oid), oid, verify_hash=False, links_only=True)
    except OSError:
        return {}
    strong = strong_links(info)
    return {x: x in strong for x in object_links(info) - {oid}}


def links_of(store, oid: str, path=None) -> set[str]:
    """The ids an object links to (a checkpoint's header only); empty when unreadable."""
    try:
        info = inspect_path(path or store.object_path(oid), oid, verify_hash=False, links_only=True)
    except OSError:
        return set()
    return object_links(info) - {oid}


# ---------------------------------------------------------------------- journal
def read_intents(store_or_root) -> list[tuple[Path, dict | None]]:
    """(path, record) of every purge intent in journal/; record None when unreadable."""
    root = store_or_root if isinstance(store_or_root, (str, os.PathLike)) else store_or_root.root
    base = Path(root) / JOURNAL
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            rec = loads_json(read_regular(base / n, 64 << 20).decode("utf-8"))
            if not isinstance(rec, dict):
                rec = None
        except (OSError, ValueError, UnicodeDecodeError):
            rec = None
        out.append((base / n, rec))
    return out


# ---------------------------------------------------------------------- verify
def verify(store, erased_task: int | None = None) -> VerifyResult:
    """Check every object's hash, every ref's target, every checkpoint's links and metadata,
    every manifest; report objects that are back although tombstoned (a purged id written
    again) and purges that were interrupted (journal). Removes temp files of dead writers
    (reported in ``.info``).

    ``erased_task``: when given, also report objects still present that hold that task's
    data in any lineage (a checkpoint that learned it and did not forget it; a manifest
    with a non-empty buffer for it). ``cluctl store verify --erased T`` uses the
    lineage-aware :func:`cluctl.store.purge.erased_problems`.
    """
    problems: list[Problem] = []
    info: list[str] = []
    try:
        store._tmp_dir_ok()
    except OSError as e:
        problems.append(Problem("bad-layout", "tmp", f"the store's tmp: {e.strerror}; make it a plain folder again"))
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
            problems.append(Problem("bad-link", oid, f"{what} {oid} has an invalid {key} link {str(value)[:80]!r}"))
        elif not present(value):
            problems.append(Problem(f"missing-{key}", oid, f"{what} {oid} names {key} {value}, which is neither in the store nor tombstoned"))

    for oid in sorted(objects):
        try:
            obj = inspect_object(store, oid, verify_hash=True)
        except FileNotFoundError:
            continue  # removed concurrently (gc, purge)
        except OSError as e:
            problems.append(Problem("unreadable-object", oid, f"object {oid} cannot be read: {e.strerror or e}"))
            continue
        if obj.actual != oid:
            problems.append(Problem("corrupt-object", oid, str(store.corrupt_error(oid, obj.actual or "?", obj.size))))
            continue
        if oid in stones:
            stone = store.get_tombstone(oid) or {}
            problems.append(Problem("purged-object-present", oid,
                                    f"object {oid} was purged ({stone.get('reason', 'no reason given')}) but is in objects/ "
                                    f"again; run the purge again (`cluctl store purge`) to erase it"))
        if obj.kind == "checkpoint":
            bad = meta_problem(obj.doc)
            if bad:
                problems.append(Problem("bad-metadata", oid, f"checkpoint {oid} has invalid metadata: {bad}"))
                continue
            for key in CHECKPOINT_LINKS:
                check_link(oid, "checkpoint", key, obj.doc.get(key))
        elif obj.kind == "json" and isinstance(obj.doc, dict) and obj.doc.get("type") == "manifest":
            bad = manifest_problem(obj.doc)
            if bad:
                problems.append(Problem("bad-manifest", oid, f"manifest {oid} is invalid: {bad}"))
                continue
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

    for path, rec in read_intents(store):
        if rec is None:
            problems.append(Problem("corrupt-journal", path.name, f"purge journal entry {path.name} cannot be read; "
                                    f"delete it and run the purge again"))
        elif not rec.get("done_at"):
            problems.append(Problem("interrupted-purge", path.name,
                                    f"the purge of task {rec.get('task')} ({rec.get('label', '?')}) begun at "
                                    f"{rec.get('started_at', '?')} did not finish; run `cluctl store purge` again to complete it"))
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
def _refs_strict(store) -> dict[str, str]:
    """Every ref, or CorruptObject: gc refuses to guess reachability when a ref cannot be
    read or has a name cluctl would not write (it may be the only link to an object)."""
    out = {}
    for name, path in store._iter_ref_files():
        if not store._is_valid_ref_name(name):
            raise CorruptObject(f"refs/{name} is not a valid ref name, so gc cannot tell what it keeps",
                                "rename or delete it (`cluctl store verify` lists such refs), then run gc again")
        oid = store._read_ref_file(name, path)
        if oid is not None:
            out[name] = oid
    return out


def _regular_objects(store, odd: dict[str, str] | None = None) -> dict[str, os.stat_result]:
    """{id: stat} of the objects that are regular files (symlinks followed); the others go
    to ``odd`` ({id: what it is}): gc never deletes them and refuses when a ref reaches one."""
    stats = {}
    for oid in store.iter_objects():
        try:
            st = os.stat(store.object_path(oid))
        except FileNotFoundError:
            if odd is not None and os.path.lexists(store.object_path(oid)):
                odd[oid] = "a dangling symlink"
            continue
        except OSError as e:
            if odd is not None:
                odd[oid] = e.strerror or str(e)
            continue
        if stat.S_ISREG(st.st_mode):
            stats[oid] = st
        elif odd is not None:
            odd[oid] = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) \
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
    return stats


def gc(store, dry_run: bool = False, grace_s: float = 3600) -> GcReport:
    """Remove objects unreachable from refs. Objects younger than ``grace_s`` (mtime) are
    spared, and so is everything they link to (a writer may be about to point a ref at
    them). A corrupt ref, or one with an invalid name, makes gc refuse (CorruptObject)
    rather than guess.

    No interleaving with writers loses a referenced object: gc first moves each object it
    means to delete into a quarantine (tmp/<host>.<pid>.<id>.gc, one rename), then reads
    every ref and the objects' ages again and moves back whatever became reachable or
    young meanwhile; only then does it delete. A writer that references an existing object
    (Store.set_ref, save_checkpoint: Store.keep) refreshes it and takes it back from the
    quarantine, before and after writing its ref; when gc deleted it in between, the
    writer takes its ref back and fails (nothing dangles)."""
    if not grace_s >= 0:  # nan would spare nothing
        raise UsageError(f"gc grace period must be a number of seconds >= 0, got {grace_s}")
    refs = _refs_strict(store)
    odd: dict[str, str] = {}
    stats = _regular_objects(store, odd)
    existing = set(stats)
    links_cache: dict[str, set[str]] = {}

    def links(oid: str, path=None) -> set[str]:
        if oid not in links_cache:
            info = None
            # the object may move between objects/ and a quarantine meanwhile: try both places
            for where in ([path, store.object_path(oid), path] if path else [store.object_path(oid)]):
                try:
                    info = inspect_path(where, oid, verify_hash=False, links_only=True)
                    break
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise CorruptObject(f"object {oid} cannot be read ({e.strerror or e}), so gc cannot tell what it keeps",
                                        "run `cluctl store verify` and repair or delete it") from None
            if info is None:
                return set()  # gone: nothing to cache
            links_cache[oid] = object_links(info) - {oid}
        return links_cache[oid]

    def closure(start: set[str], seen: set[str], universe: set[str], path_of=lambda o: None) -> set[str]:
        for o in start:
            if o in odd:
                raise CorruptObject(f"object {o} cannot be read (it is {odd[o]}), so gc cannot tell what it keeps",
                                    "run `cluctl store verify` and repair or delete it") from None
        stack = [o for o in start if o in universe and o not in seen]
        seen.update(stack)
        while stack:
            cur = stack.pop()
            for nxt in links(cur, path_of(cur)):
                if nxt in odd:
                    raise CorruptObject(f"object {nxt} cannot be read (it is {odd[nxt]}), so gc cannot tell what it keeps",
                                        "run `cluctl store verify` and repair or delete it")
                if nxt in universe and nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    reach_refs = closure(set(refs.values()), set(), existing)
    now = time.time()
    young = {o for o in existing - reach_refs if now - stats[o].st_mtime < grace_s}
    reach_all = closure(young, set(reach_refs), existing)
    report = GcReport(spared_recent=len(reach_all - reach_refs))
    candidates = sorted(existing - reach_all)
    if dry_run:
        for oid in candidates:
            report.removed.append(oid)
            report.bytes_freed += stats[oid].st_size
        return report

    # 1. quarantine: out of objects/ in one rename each (a reader or writer that wants one
    #    now finds it there and moves it back: Store.keep / resolve)
    with store._writing("collect garbage"):
        tmp = store._tmp_dir_ok()
        os.makedirs(tmp, exist_ok=True)
    quarantined: dict[str, tuple[Path, os.stat_result]] = {}
    try:
        for oid in candidates:
            path = store.object_path(oid)
            q = tmp / f"{store._host}.{os.getpid()}.{oid}.gc"
            with store._writing(f"remove unreachable object {oid}"):
                try:
                    os.rename(path, q)
                except FileNotFoundError:
                    continue
            try:
                st = os.lstat(q)
            except FileNotFoundError:
                continue  # a writer took it back already
            if time.time() - st.st_mtime < grace_s:  # freshened by a writer meanwhile
                _unquarantine(q, path)
                report.spared_recent += 1
                continue
            quarantined[oid] = (q, st)
        faults.point("gc-quarantined")

        # 2. second look: refs and young objects as they are now
        refs2 = _refs_strict(store)
        stats2 = _regular_objects(store)
        now = time.time()
        universe = set(stats2) | set(quarantined)
        qpath = {o: q for o, (q, _st) in quarantined.items()}
        young2 = {o for o, st in stats2.items() if now - st.st_mtime < grace_s}
        for o in list(quarantined):
            links_cache.pop(o, None)
        keep = closure(set(refs2.values()) | young2, set(), universe, path_of=qpath.get)
    except BaseException:
        for oid, (q, _st) in quarantined.items():  # gc failed: nothing is lost
            _unquarantine(q, store.object_path(oid))
        raise

    # 3. delete what is still unreachable and old; move the rest back
    for oid, (q, st) in sorted(quarantined.items()):
        path = store.object_path(oid)
        try:
            fresh = time.time() - os.lstat(q).st_mtime < grace_s
        except FileNotFoundError:
            report.restored.append(oid)  # a writer took it back
            continue
        if oid in keep or fresh:
            _unquarantine(q, path)
            report.restored.append(oid)
            continue
        with store._writing(f"remove unreachable object {oid}"):
            try:
                os.unlink(q)
            except FileNotFoundError:
                report.restored.append(oid)
                continue
        report.removed.append(oid)
        report.bytes_freed += st.st_size
    store.clean_temp()
    return report


def _unquarantine(q: Path, path: Path) -> None:
    try:
        os.makedirs(path.parent, exist_ok=True)
        os.rename(q, path)
    except FileNotFoundError:
        pass
