"""The content-addressed object store (modelled on git's object database).

Layout under ``root``::

    VERSION                      layout version, "1"
    CACHEDIR.TAG                 so backup tools skip the store
    objects/<2 hex>/<62 hex>     immutable blobs, named by the sha256 of their bytes
    refs/<name>                  "<64 hex>\\n", names like runs/a4-neggem-3f9c2e1b/seed-0/op-07
    tombstones/<2 hex>/<62 hex>  JSON records of purged objects
    tmp/                         temp files: <host>.<pid>.<random hex>.tmp

No locks are used (NFS and Lustre make them lie).  Concurrency safety comes from
content addressing plus ``os.replace`` of fully written, fsynced temp files: two
writers of one object write identical bytes; two writers of one ref race and the
last replace wins, but a reader never sees a half-written file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from cluctl import faults
from cluctl.atomic import fsync_dir
from cluctl.errors import CorruptObject, NotFound, StoreError, UsageError

LAYOUT_VERSION = "1"
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by cluctl (its experiment store).\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_LAYOUT_ENTRIES = {"VERSION", "CACHEDIR.TAG", "objects", "refs", "tombstones", "tmp"}

HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_REF_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
MIN_PREFIX = 8
_CHUNK = 1 << 20

VERIFY_HINT = "run `cluctl store verify`; restore it from a copy or re-run the operation that made it"
LS_HINT = "list them with `cluctl store ls`"


def canonical_json(obj: Any) -> bytes:
    """The one byte serialisation of a JSON value used for ids (sorted keys, no spaces)."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise UsageError(f"cannot store this value as JSON: {e}", "use only dicts, lists, str, finite numbers, bools and None") from None
    return text.encode("utf-8")


def is_oid(text: object) -> bool:
    return isinstance(text, str) and HEX64.fullmatch(text) is not None


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname() or "host") or "host"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return True


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        n = os.write(fd, data)
        data = data[n:]


_fsync_dir = fsync_dir  # one implementation (cluctl.atomic)


@dataclass
class Problem:
    """One thing ``verify`` found wrong. ``object`` is an object id or a ref name."""

    kind: str
    object: str
    message: str

    def __str__(self) -> str:
        return " ".join(self.message.split())


class VerifyResult(list):
    """The list of :class:`Problem` found by ``verify``; ``info`` holds one-line notes
    (e.g. temp files of dead writers that were removed) that are not problems."""

    def __init__(self, problems=(), info=None):
        super().__init__(problems)
        self.info: list[str] = list(info or [])


@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    spared_recent: int = 0


# Stores this process created: (root, the topmost directory the creation made, None when
# root already existed, empty). A command that fails before writing anything removes them
# again (discard_new_stores), so a rejected option or a typo in --store leaves no empty
# store behind.
_NEW_STORES: list[tuple[Path, Path | None]] = []


def new_stores_mark() -> int:
    """A mark to pass to :func:`forget_new_stores` / :func:`discard_new_stores` so they only
    touch the stores created after it (one command's)."""
    return len(_NEW_STORES)


def forget_new_stores(since: int = 0) -> None:
    """Keep the stores created since ``since``, whatever happens next (a command that succeeded)."""
    del _NEW_STORES[since:]


def discard_new_stores(since: int = 0) -> list[Path]:
    """Remove each store this process created that is still exactly as created (the layout
    and nothing else: no object, ref, tombstone or temp file), and the parent directories
    its creation made; return the roots removed. Only ``rmdir`` and the two layout files
    are removed, so anything written meanwhile (another process's objects, say) keeps its
    store. A directory that existed before (empty) is left in place, emptied again; one
    that held part of the layout already is never recorded."""
    removed = []
    while len(_NEW_STORES) > since:
        root, top = _NEW_STORES.pop()
        try:
            if set(os.listdir(root)) != _LAYOUT_ENTRIES:
                continue
            subs = [root / d for d in ("objects", "refs", "tombstones", "tmp")]
            if any(d.is_symlink() or not d.is_dir() or os.listdir(d) for d in subs):
                continue
            for d in subs:
                os.rmdir(d)
            for f in ("VERSION", "CACHEDIR.TAG"):
                os.unlink(root / f)
            removed.append(root)
            if top is not None:
                d = root
                while True:
                    os.rmdir(d)  # fails (and stops) at a directory something else put a file in
                    if d == top:
                        break
                    d = d.parent
        except OSError:
            continue
    return removed


def no_new_store_on_error(fn):
    """Decorator: when ``fn`` raises, remove the stores it created that are still bare
    (:func:`discard_new_stores` for the stores created during the call)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        mark = new_stores_mark()
        try:
            return fn(*args, **kwargs)
        except BaseException:
            discard_new_stores(mark)
            raise

    return wrapper


class Store:
    """A store rooted at a directory. ``Store(path)`` and ``Store.open(path)`` create it if
    missing (parents too) and check the layout version of an existing one. A store created
    by this process is remembered until :func:`forget_new_stores`; :func:`discard_new_stores`
    removes the ones still empty (the CLI calls it when a command fails)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.abspath(os.fspath(root)))
        self._host = _host_tag()
        self._init_or_check()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike | "Store" | None = None) -> "Store":
        if isinstance(path, Store):
            return path
        if path is None:
            path = os.environ.get("CLUCTL_STORE") or "./store"
        return cls(path)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def _init_or_check(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} is not a cluctl store: it is not a directory", "pass the store's directory")
        version_file = root / "VERSION"
        if version_file.is_file():
            self._check_version(version_file)
            self._ensure_subdirs(best_effort=True)
            return
        entries: set[str] | None = None  # None: root does not exist
        if root.is_dir():
            try:
                entries = set(os.listdir(root))
            except OSError as e:
                raise StoreError(f"cannot read store directory {root}: {e.strerror}") from None
            entries = {e for e in entries if not e.startswith(".nfs")}
            # a subset of the layout is another process creating the store right now
            if entries - _LAYOUT_ENTRIES:
                raise StoreError(
                    f"{root} is not a cluctl store: it is not empty and has no VERSION file",
                    "pick an empty or new directory, or the directory of an existing store",
                )
        top = root  # the topmost directory this creation makes (root, or a missing parent)
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        for attempt in range(3):
            with self._writing("create the store"):
                self._create_layout()
            if version_file.is_file():
                break
            # another process's failed command discarded the bare store meanwhile: again
        # only a store made from nothing (no directory, or an empty one) is this process's
        # to discard; a partial layout is another process creating it, or the user's files
        if not entries and all(r != root for r, _ in _NEW_STORES):
            _NEW_STORES.append((root, top if entries is None else None))
        self._check_version(version_file)

    def _create_layout(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        self._ensure_subdirs(best_effort=False)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            self._atomic_write(tag, CACHEDIR_TAG.encode(), mode=0o644)
        version_file = self.root / "VERSION"
        if not version_file.exists():
            self._atomic_write(version_file, (LAYOUT_VERSION + "\n").encode(), mode=0o644)

    def _check_version(self, version_file: Path) -> None:
        try:
            version = version_file.read_text(encoding="utf-8", errors="replace").strip()
        except OSError as e:
            raise StoreError(f"cannot read {version_file}: {e.strerror}") from None
        if version != LAYOUT_VERSION:
            raise StoreError(
                f"store at {self.root} has layout version {version!r}, this cluctl reads version {LAYOUT_VERSION}",
                "use the cluctl version that wrote it",
            )

    def _ensure_subdirs(self, best_effort: bool) -> None:
        for sub in ("objects", "refs", "tombstones", "tmp"):
            try:
                os.makedirs(self.root / sub, exist_ok=True)
            except OSError:
                if not best_effort:
                    raise

    # ------------------------------------------------------------------ low-level writing
    def _os_error(self, e: OSError, action: str) -> StoreError:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(
                f"store at {self.root} is read-only ({e.strerror}); cannot {action}",
                "use a store you can write to (--store or CLUCTL_STORE), or copy this one",
            )
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return StoreError(f"no space left for the store at {self.root} ({e.strerror}); cannot {action}", "free space or run `cluctl store gc`")
        return StoreError(f"cannot {action} in store at {self.root}: {e.strerror or e}")

    class _Writing:
        def __init__(self, store: "Store", action: str):
            self.store, self.action = store, action

        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc is not None and isinstance(exc, OSError):
                raise self.store._os_error(exc, self.action) from exc
            return False

    def _writing(self, action: str) -> "Store._Writing":
        """Context manager turning OSErrors of a write into one-line StoreErrors."""
        return Store._Writing(self, action)

    def _tmp_path(self) -> Path:
        return self.root / "tmp" / f"{self._host}.{os.getpid()}.{secrets.token_hex(8)}.tmp"

    def _atomic_write(self, final: Path, data: bytes | bytearray | memoryview, mode: int = 0o644, fault: bool = False) -> None:
        """Write ``data`` to a temp file, fsync it, then ``os.replace`` it onto ``final``.
        On any failure the temp file is removed (a SIGKILL leaves it for clean_temp)."""
        tmp = self._tmp_path()
        view = memoryview(data).cast("B")
        fd = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                fd = os.open(tmp, flags, mode)
            except FileNotFoundError:
                # tmp/ is gone: the store this process opened while it was new and empty was
                # discarded by another process's failed command (discard_new_stores); make
                # the layout again so this write leaves a valid store
                if final.parent != self.root and not (self.root / "VERSION").exists():
                    self._create_layout()
                os.makedirs(tmp.parent, exist_ok=True)
                fd = os.open(tmp, flags, mode)
            half = len(view) // 2
            _write_all(fd, view[:half])
            if fault:
                faults.point("object-write-mid")
            _write_all(fd, view[half:])
            os.fsync(fd)
            os.close(fd)
            fd = None
            for attempt in range(5):
                os.makedirs(final.parent, exist_ok=True)
                try:
                    os.replace(tmp, final)
                    break
                except FileNotFoundError:
                    # the parent dir was removed under us (delete_ref pruning); retry
                    if attempt == 4 or not tmp.exists():
                        raise
        except BaseException:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(final.parent)

    # ------------------------------------------------------------------ objects
    def _check_oid(self, oid: object) -> str:
        if not isinstance(oid, str) or not HEX64.fullmatch(oid.lower()):
            raise UsageError(f"{oid!r} is not an object id (64 hex digits)", "resolve names and prefixes with store.resolve()")
        return oid.lower()

    def object_path(self, oid: str) -> Path:
        oid = self._check_oid(oid)
        return self.root / "objects" / oid[:2] / oid[2:]

    def tombstone_path(self, oid: str) -> Path:
        oid = self._check_oid(oid)
        return self.root / "tombstones" / oid[:2] / oid[2:]

    def has_object(self, oid: str) -> bool:
        return self.object_path(oid).is_file()

    def __contains__(self, oid: object) -> bool:
        return is_oid(oid) and self.has_object(oid)  # type: ignore[arg-type]

    def corrupt_error(self, oid: str, actual: str, size: int | None = None) -> CorruptObject:
        extra = f" ({size} bytes)" if size is not None else ""
        return CorruptObject(f"object {oid} is corrupt: its bytes{extra} hash to {actual}", VERIFY_HINT)

    def missing_error(self, oid: str) -> NotFound:
        stone = self.get_tombstone(oid)
        if stone is not None:
            return NotFound(
                f"object {oid} was purged ({stone.get('reason', 'no reason given')}, {stone.get('deleted_at', '?')})",
                "purged objects cannot be read; its tombstone records why",
            )
        return NotFound(f"no object {oid} in the store at {self.root}", LS_HINT)

    def put_bytes(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data``; return its id (sha256 hex). Idempotent; repairs a corrupt copy."""
        data = bytes(data) if not isinstance(data, bytes) else data
        oid = hashlib.sha256(data).hexdigest()
        path = self.object_path(oid)
        if not self._existing_ok(path, oid):
            with self._writing(f"write object {oid}"):
                self._atomic_write(path, data, mode=0o444, fault=True)
        faults.point("after-object-write")
        return oid

    def _existing_ok(self, path: Path, oid: str) -> bool:
        try:
            actual = self._hash_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:
            return False
        if actual != oid:
            return False
        try:  # freshen, so that gc's grace period protects a re-used old object
            os.utime(path)
        except OSError:
            pass
        return True

    @staticmethod
    def _hash_file(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def get_bytes(self, oid: str) -> bytes:
        """The object's bytes, verified against its id (CorruptObject on mismatch)."""
        oid = self._check_oid(oid)
        path = self.object_path(oid)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise self.missing_error(oid) from None
        except OSError as e:
            raise StoreError(f"cannot read object {oid}: {e.strerror}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != oid:
            raise self.corrupt_error(oid, actual, len(data))
        return data

    def put_json(self, obj: Any) -> str:
        return self.put_bytes(canonical_json(obj))

    def get_json(self, oid: str) -> Any:
        data = self.get_bytes(oid)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise CorruptObject(f"object {oid} is not valid JSON ({e.__class__.__name__}: {e})", "it is not a JSON object; check which id you passed") from None

    def iter_objects(self) -> Iterator[str]:
        base = self.root / "objects"
        try:
            fans = sorted(os.listdir(base))
        except FileNotFoundError:
            return
        for fan in fans:
            if len(fan) != 2 or not _HEX.fullmatch(fan):
                continue
            try:
                names = sorted(os.listdir(base / fan))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                if len(name) == 62 and _HEX.fullmatch(name):
                    yield fan + name

    def size_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    # ------------------------------------------------------------------ tombstones
    def tombstone(self, oid: str, reason: str, info: dict | None = None) -> dict:
        """Delete the object and leave a JSON tombstone recording why. The tombstone is
        written first, so a crash never leaves an id with neither."""
        oid = self._check_oid(oid)
        path = self.object_path(oid)
        if not path.exists() and not self.is_tombstoned(oid):
            raise NotFound(f"no object {oid} to purge", LS_HINT)
        record: dict[str, Any] = dict(self.get_tombstone(oid) or {})
        try:
            record["size"] = path.stat().st_size
        except OSError:
            pass
        record.update(info or {})
        record.update({"id": oid, "reason": str(reason), "deleted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        with self._writing(f"purge object {oid}"):
            self._atomic_write(self.tombstone_path(oid), canonical_json(record) + b"\n")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            _fsync_dir(path.parent)
        return record

    def is_tombstoned(self, oid: str) -> bool:
        return self.tombstone_path(oid).is_file()

    def get_tombstone(self, oid: str) -> dict | None:
        path = self.tombstone_path(oid)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            return {"id": self._check_oid(oid), "reason": "unreadable tombstone", "deleted_at": "?"}
        return record

    def iter_tombstones(self) -> Iterator[str]:
        base = self.root / "tombstones"
        try:
            fans = sorted(os.listdir(base))
        except FileNotFoundError:
            return
        for fan in fans:
            if len(fan) != 2 or not _HEX.fullmatch(fan):
                continue
            try:
                names = sorted(os.listdir(base / fan))
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                if len(name) == 62 and _HEX.fullmatch(name):
                    yield fan + name

    # ------------------------------------------------------------------ refs
    @staticmethod
    def check_ref_name(name: object) -> str:
        """Return ``name`` if it is a valid ref name, else raise UsageError naming it."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"invalid ref name {name!r}: it is empty", "use names like runs/<run>/seed-0/op-07 or tags/best")
        for comp in name.split("/"):
            if not comp or comp in (".", "..") or not _REF_COMPONENT.fullmatch(comp):
                raise UsageError(
                    f"invalid ref name {name!r}: each /-separated part must match [A-Za-z0-9._-]+ and not be . or ..",
                    "use names like runs/<run>/seed-0/op-07 or tags/best",
                )
        return name

    def _ref_path(self, name: str) -> Path:
        return self.root / "refs" / self.check_ref_name(name)

    @staticmethod
    def _is_valid_ref_name(name: str) -> bool:
        try:
            Store.check_ref_name(name)
            return True
        except UsageError:
            return False

    def _read_ref_file(self, name: str, path: Path) -> str | None:
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        text = raw.decode("ascii", errors="replace").strip()
        if not HEX64.fullmatch(text):
            raise CorruptObject(
                f"ref {name} is corrupt: it holds {raw[:40]!r} instead of an object id",
                f"point it somewhere valid again (set_ref) or delete refs/{name}",
            )
        return text

    def get_ref(self, name: str) -> str | None:
        return self._read_ref_file(name, self._ref_path(name))

    def set_ref(self, name: str, oid: str) -> None:
        path = self._ref_path(name)
        oid = self._check_oid(oid)
        if not self.has_object(oid) and not self.is_tombstoned(oid):
            raise NotFound(f"cannot point ref {name} at {oid}: no such object in the store", LS_HINT)
        refs = self.root / "refs"
        parts = name.split("/")
        for i in range(1, len(parts)):
            p = refs.joinpath(*parts[:i])
            if p.is_file():
                raise UsageError(f"ref {name} conflicts with the existing ref {'/'.join(parts[:i])}", "pick another name or delete that ref")
        if path.is_dir():
            try:
                os.rmdir(path)
            except OSError:
                raise UsageError(f"ref {name} conflicts with existing refs under {name}/", "pick another name") from None
        with self._writing(f"write ref {name}"):
            self._atomic_write(path, (oid + "\n").encode("ascii"))

    def delete_ref(self, name: str, missing_ok: bool = False) -> None:
        path = self._ref_path(name)
        if not path.is_file():
            if missing_ok:
                return
            raise NotFound(f"no ref named {name}", LS_HINT)
        with self._writing(f"delete ref {name}"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            refs = self.root / "refs"
            parent = path.parent
            while parent != refs:  # prune now-empty directories (best effort)
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = parent.parent

    def _iter_ref_files(self) -> Iterator[tuple[str, Path]]:
        base = self.root / "refs"
        for dirpath, dirs, files in os.walk(base):
            dirs.sort()
            rel = os.path.relpath(dirpath, base)
            for fname in sorted(files):
                name = fname if rel == "." else f"{rel.replace(os.sep, '/')}/{fname}"
                yield name, Path(dirpath) / fname

    def list_refs(self, prefix: str = "") -> dict[str, str]:
        """All refs whose name starts with ``prefix``, sorted by name. A corrupt ref raises."""
        out: dict[str, str] = {}
        for name, path in self._iter_ref_files():
            if not name.startswith(prefix) or not self._is_valid_ref_name(name):
                continue
            oid = self._read_ref_file(name, path)
            if oid is not None:
                out[name] = oid
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ resolution
    def resolve(self, ref_or_id: str) -> str:
        """A ref name, a full id, or a unique hex prefix (>= 8 digits) -> an existing object id."""
        text = str(ref_or_id).strip() if ref_or_id is not None else ""
        candidates = [text]
        if text.startswith("refs/"):
            candidates.append(text[len("refs/"):])
        for name in candidates:
            if self._is_valid_ref_name(name):
                oid = self.get_ref(name)
                if oid is not None:
                    if self.has_object(oid):
                        return oid
                    stone = self.get_tombstone(oid)
                    if stone is not None:
                        raise NotFound(
                            f"ref {name} points to object {oid}, which was purged ({stone.get('reason', 'no reason given')})",
                            "purged objects cannot be read; its tombstone records why",
                        )
                    raise NotFound(f"ref {name} points to object {oid}, which is missing from the store", VERIFY_HINT)
        low = text.lower()
        if HEX64.fullmatch(low):
            if self.has_object(low):
                return low
            raise self.missing_error(low)
        if len(low) >= MIN_PREFIX and _HEX.fullmatch(low):
            matches = self._prefix_matches(low, "objects")
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                shown = ", ".join(m[:16] for m in matches[:3])
                raise UsageError(f"id prefix {text} is ambiguous: it matches {len(matches)} objects ({shown}...)", "give more hex digits")
            stones = self._prefix_matches(low, "tombstones")
            if len(stones) == 1:
                raise self.missing_error(stones[0])
        hint = LS_HINT
        if _HEX.fullmatch(low) and len(low) < MIN_PREFIX:
            hint = f"id prefixes need at least {MIN_PREFIX} hex digits; {LS_HINT}"
        raise NotFound(f"no ref or object named {text!r}", hint)

    def _prefix_matches(self, prefix: str, area: str) -> list[str]:
        fan = self.root / area / prefix[:2]
        try:
            names = os.listdir(fan)
        except (FileNotFoundError, NotADirectoryError):
            return []
        rest = prefix[2:]
        return sorted(prefix[:2] + n for n in names if n.startswith(rest) and len(n) == 62 and _HEX.fullmatch(n))

    # ------------------------------------------------------------------ maintenance
    def clean_temp(self, max_age_s: float = 3600) -> list[Path]:
        """Remove temp files whose writer is dead (same host, pid gone) or, for other
        hosts and unparseable names, older than ``max_age_s``. Returns removed paths."""
        base = self.root / "tmp"
        try:
            names = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        now = time.time()
        removed: list[Path] = []
        for name in names:
            path = base / name
            parts = name.split(".")
            stale = False
            if len(parts) == 4 and parts[3] == "tmp" and parts[1].isdigit() and parts[0] == self._host:
                stale = not _pid_alive(int(parts[1]))
            else:
                try:
                    stale = now - path.lstat().st_mtime > max_age_s
                except FileNotFoundError:
                    continue
            if not stale:
                continue
            with self._writing(f"remove temp file {name}"):
                try:
                    if path.is_dir() and not path.is_symlink():
                        continue
                    os.unlink(path)
                except FileNotFoundError:
                    continue
            removed.append(path)
        return removed

    def verify(self, erased_task: int | None = None) -> VerifyResult:
        from cluctl.store.maintenance import verify

        return verify(self, erased_task=erased_task)

    def gc(self, dry_run: bool = False, grace_s: float = 3600) -> GcReport:
        from cluctl.store.maintenance import gc

        return gc(self, dry_run=dry_run, grace_s=grace_s)
