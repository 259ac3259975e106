"""The content-addressed object store (modelled on git's object database).

Layout under ``root``::

    VERSION                      layout version, "1"
    CACHEDIR.TAG                 so backup tools skip the store
    objects/<2 hex>/<62 hex>     immutable blobs, named by the sha256 of their bytes
    refs/<name>                  "<64 hex>\\n", names like runs/a4-neggem-3f9c2e1b/seed-0/op-07
    tombstones/<2 hex>/<62 hex>  JSON records of purged objects
    tmp/                         temp files: <host>.<pid>.<random hex>.tmp; gc's quarantine:
                                 <host>.<pid>.<object id>.gc
    journal/                     purge intents (cluctl.store.purge), made by the first purge

No locks are used (NFS and Lustre make them lie).  Concurrency safety comes from
content addressing plus ``os.replace`` of fully written, fsynced temp files: two
writers of one object write identical bytes; two writers of one ref race and the
last replace wins, but a reader never sees a half-written file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import stat as _stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from cluctl import faults
from cluctl.atomic import fsync_dir, write_atomic
from cluctl.errors import CorruptObject, NotFound, StoreError, UsageError
from cluctl.store.base import (  # noqa: F401  (re-exported: cluctl.store.core was their home)
    HEX,
    HEX64,
    GcReport,
    NotRegularFile,
    Problem,
    VerifyResult,
    canonical_json,
    is_oid,
    loads_json,
    open_regular,
    read_regular,
)

LAYOUT_VERSION = "1"
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by cluctl (its experiment store).\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_LAYOUT_ENTRIES = {"VERSION", "CACHEDIR.TAG", "objects", "refs", "tombstones", "tmp"}

_HEX = HEX
_REF_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
#: a ref file is "<64 hex>\n"; ref names longer than this are refused (most filesystems
#: allow 255 bytes per component and 4096 per path)
MAX_REF_NAME = 1024
MAX_REF_COMPONENT = 200
MIN_PREFIX = 8
_CHUNK = 1 << 20
# cluctl's own temp names in tmp/: writers' temp files and gc's quarantined objects
_TEMP_NAME = re.compile(r"(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.(?P<rand>[0-9a-f]+)\.tmp")
_QUARANTINE_NAME = re.compile(r"(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.(?P<oid>[0-9a-f]{64})\.gc")

VERIFY_HINT = "run `cluctl store verify`; restore it from a copy or re-run the operation that made it"
LS_HINT = "list them with `cluctl store ls`"


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


_fsync_dir = fsync_dir  # one implementation (cluctl.atomic)


class DanglingRef(NotFound):
    """A ref whose target is neither in the store nor tombstoned (``.ref``, ``.oid``)."""

    def __init__(self, ref: str, oid: str):
        super().__init__(f"ref {ref} points to object {oid}, which is missing from the store",
                         "redo the operation that wrote it, or delete the ref (`cluctl store rm-ref`)")
        self.ref, self.oid = ref, oid


class PurgedObject(StoreError):
    """Writing an object whose id has a tombstone: it was erased on purpose."""


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



def _path_kind(p: Path, follow: bool = True) -> str | None:
    """What is at ``p``: "dir", "file", "other", or None when nothing is. One stat call
    (``follow``: through symlinks, a dangling one being "other"), so that a path removed
    between two checks cannot look like something it is not."""
    try:
        st = os.stat(p) if follow else os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        return "other" if follow and os.path.islink(p) else None
    if _stat.S_ISDIR(st.st_mode):
        return "dir"
    if _stat.S_ISREG(st.st_mode):
        return "file"
    return "other"


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
            version = read_regular(version_file, 64).decode("utf-8", errors="replace").strip()
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

    def _tmp_dir_ok(self) -> Path:
        """The store's tmp/ folder, refused when it is not a real folder of the store (a
        symlink to elsewhere is never followed: cluctl writes and deletes only inside the store)."""
        tmp = self.root / "tmp"
        try:
            st = os.lstat(tmp)
        except FileNotFoundError:
            return tmp
        if _stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, f"{tmp} is a symbolic link (cluctl never follows it)", str(tmp))
        if not _stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, f"{tmp} is not a directory", str(tmp))
        return tmp

    def _atomic_write(self, final: Path, data: bytes | bytearray | memoryview, mode: int = 0o644, fault: bool = False) -> None:
        """Write ``data`` onto ``final`` through a temp file in tmp/ (cluctl.atomic.write_atomic).
        On any failure the temp file is removed (a SIGKILL leaves it for clean_temp)."""
        self._tmp_dir_ok()

        def remake_layout() -> None:
            # tmp/ is gone: the store this process opened while it was new and empty was
            # discarded by another process's failed command (discard_new_stores); make the
            # layout again so this write leaves a valid store
            if final.parent != self.root and not (self.root / "VERSION").exists():
                self._create_layout()

        write_atomic(final, data, tmp=self._tmp_path(), mode=mode,
                     midway=(lambda: faults.point("object-write-mid")) if fault else None,
                     on_missing_tmp_dir=remake_layout)

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

    def unreadable_error(self, oid: str, e: OSError) -> CorruptObject:
        return CorruptObject(f"object {oid} cannot be read: {e.strerror or e}", VERIFY_HINT)

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
        if self.is_tombstoned(oid):
            stone = self.get_tombstone(oid) or {}
            raise PurgedObject(
                f"object {oid} was purged ({stone.get('reason', 'no reason given')}, {stone.get('deleted_at', '?')}); "
                f"writing it again would undo that erasure",
                "the data it was made from is still outside the store: leave out what was erased "
                "(e.g. --mem-scores computed without it, or --learn-buffer-type first/random)",
            )
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
        with open_regular(path) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def get_bytes(self, oid: str) -> bytes:
        """The object's bytes, verified against its id (CorruptObject on mismatch)."""
        oid = self._check_oid(oid)
        path = self.object_path(oid)
        try:
            data = read_regular(path, None)
        except (FileNotFoundError, NotADirectoryError):
            raise self.missing_error(oid) from None
        except NotRegularFile as e:
            raise self.unreadable_error(oid, e) from None
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
            return loads_json(data.decode("utf-8"))
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
            faults.point("tombstone-written")
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            _fsync_dir(path.parent)
        return record

    def is_tombstoned(self, oid: str) -> bool:
        return os.path.lexists(self.tombstone_path(oid))

    def get_tombstone(self, oid: str) -> dict | None:
        path = self.tombstone_path(oid)
        try:
            text = read_regular(path).decode("utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError):
            text = ""
        try:
            record = loads_json(text)
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
            if len(comp) > MAX_REF_COMPONENT:
                raise UsageError(f"invalid ref name {name[:40]!r}...: a part is {len(comp)} characters long "
                                 f"(at most {MAX_REF_COMPONENT})", "pick a shorter name")
        if len(name) > MAX_REF_NAME:
            raise UsageError(f"invalid ref name {name[:40]!r}...: it is {len(name)} characters long (at most {MAX_REF_NAME})",
                             "pick a shorter name")
        return name

    def check_ref_available(self, name: str) -> str:
        """Check, before any work, that ``set_ref(name, ...)`` can succeed as far as the name
        goes: a valid name that does not clash with an existing ref (``tags/a`` when
        ``tags/a/b`` exists, or ``tags/a/b`` when ``tags/a`` is a ref). An existing ref of
        that very name is fine (it is moved). Raises UsageError; returns ``name``."""
        self.check_ref_name(name)
        refs = self.root / "refs"
        parts = name.split("/")
        # one stat per path: a folder that another process prunes meanwhile (delete_ref
        # removes refs/tags/ with its last ref) is no conflict, it is simply gone
        for i in range(1, len(parts)):
            kind = _path_kind(refs.joinpath(*parts[:i]))
            if kind is not None and kind != "dir":
                raise UsageError(f"ref {name} conflicts with the existing ref {'/'.join(parts[:i])}", "pick another name or delete that ref")
        path = refs / name
        kind = _path_kind(path, follow=False)
        if kind == "dir":
            try:
                has_any = any(True for _ in os.scandir(path))
            except FileNotFoundError:
                has_any = False
            except OSError:
                has_any = True
            if has_any:
                raise UsageError(f"ref {name} conflicts with existing refs under {name}/", "pick another name")
        elif kind == "other" and _path_kind(path) == "file":
            pass  # a symlink to a regular file: set_ref replaces the link itself
        elif kind is not None and kind != "file":
            raise UsageError(f"ref {name} exists but is not a regular file", f"delete refs/{name} by hand")
        return name

    def check_tag_name(self, tag: str) -> str:
        """``check_ref_available("tags/" + tag)``: for ``--tag`` and ``store tag``, before any work."""
        return self.check_ref_available(f"tags/{tag}")

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
            raw = read_regular(path, 1024)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as e:
            raise CorruptObject(f"ref {name} cannot be read: {e.strerror or e}", f"delete refs/{name} or point it somewhere valid again") from None
        text = raw.decode("ascii", errors="replace").strip()
        if not HEX64.fullmatch(text):
            raise CorruptObject(
                f"ref {name} is corrupt: it holds {raw[:40]!r} instead of an object id",
                f"point it somewhere valid again (set_ref) or delete refs/{name}",
            )
        return text

    def get_ref(self, name: str) -> str | None:
        return self._read_ref_file(name, self._ref_path(name))

    def ref_state(self, name: str) -> str | None:
        """None when there is no such ref, else what its target is: "present", "purged"
        (tombstoned) or "dangling" (neither). A launch resuming a run redoes an operation
        whose ref is dangling."""
        oid = self.get_ref(name)
        if oid is None:
            return None
        if self.has_object(oid):
            return "present"
        if self.is_tombstoned(oid):
            return "purged"
        if self._find_quarantined(oid):
            return "present"
        return "dangling"

    def set_ref(self, name: str, oid: str) -> None:
        """Point ``name`` at ``oid``. The target and everything it links to are made young
        again before the ref is written and checked again after it: gc (which quarantines
        what it is about to delete, then reads the refs once more) can therefore never leave
        this ref dangling; when gc took the object for good in between, the ref is taken
        back and NotFound raised."""
        path = self._ref_path(name)
        oid = self._check_oid(oid)
        if not self.has_object(oid) and not self.is_tombstoned(oid) and not self._find_quarantined(oid):
            raise NotFound(f"cannot point ref {name} at {oid}: no such object in the store", LS_HINT)
        self.check_ref_available(name)
        self.keep([oid])  # NotFound when something it references is missing
        refs = self.root / "refs"
        made = [p for p in (refs.joinpath(*name.split("/")[:i]) for i in range(1, name.count("/") + 1)) if not p.exists()]
        if path.is_dir():
            try:
                os.rmdir(path)
            except OSError:
                raise UsageError(f"ref {name} conflicts with existing refs under {name}/", "pick another name") from None
        try:
            with self._writing(f"write ref {name}"):
                self._atomic_write(path, (oid + "\n").encode("ascii"))
        except BaseException:
            for d in reversed(made):  # a failed write leaves no empty folders behind
                try:
                    os.rmdir(d)
                except OSError:
                    break
            raise
        faults.point("after-ref-write")
        try:
            self.keep([oid])
        except NotFound as e:
            try:
                if self.get_ref(name) == oid:
                    self.delete_ref(name, missing_ok=True)
            except (CorruptObject, StoreError, UsageError):
                pass
            raise NotFound(f"cannot point ref {name} at {oid}: a concurrent `store gc` removed it or what it "
                           f"references ({e.what})", "nothing was written; re-run the operation that made it") from None

    def delete_ref(self, name: str, missing_ok: bool = False) -> None:
        path = self._ref_path(name)
        if not os.path.lexists(path) or path.is_dir():
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
        """Every entry under refs/ that is not a directory (symlinks, FIFOs... included:
        reading them is refused, not skipped)."""
        base = self.root / "refs"
        for dirpath, dirs, files in os.walk(base):
            dirs.sort()
            rel = os.path.relpath(dirpath, base)
            for fname in sorted(files):
                name = fname if rel == "." else f"{rel.replace(os.sep, '/')}/{fname}"
                yield name, Path(dirpath) / fname

    def list_refs(self, prefix: str = "", skip_dangling: bool = False) -> dict[str, str]:
        """All refs whose name starts with ``prefix``, sorted by name. A corrupt ref raises.
        ``skip_dangling``: leave out refs whose target is neither present nor tombstoned."""
        out: dict[str, str] = {}
        for name, path in self._iter_ref_files():
            if not name.startswith(prefix) or not self._is_valid_ref_name(name):
                continue
            oid = self._read_ref_file(name, path)
            if oid is not None:
                if skip_dangling and not (self.has_object(oid) or self.is_tombstoned(oid)):
                    continue
                out[name] = oid
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ keeping objects alive
    def _find_quarantined(self, oid: str) -> Path | None:
        """The path of ``oid`` in a gc's quarantine (tmp/<host>.<pid>.<oid>.gc), if any."""
        tmp = self.root / "tmp"
        try:
            names = os.listdir(tmp)
        except OSError:
            return None
        for n in names:
            if n.endswith(f".{oid}.gc") and _QUARANTINE_NAME.fullmatch(n):
                return tmp / n
        return None

    def _restore_quarantined(self, oid: str) -> bool:
        """Move ``oid`` back from a gc's quarantine into objects/; True when it is there now."""
        q = self._find_quarantined(oid)
        if q is None:
            return False
        final = self.object_path(oid)
        try:
            os.makedirs(final.parent, exist_ok=True)
            os.rename(q, final)
        except FileNotFoundError:
            pass  # gc moved it back or deleted it meanwhile
        return final.is_file()

    def keep(self, oids: Iterable[str], missing_ok: bool = False) -> set[str]:
        """Make each object, and everything it links to, present and young: refresh its mtime
        (gc spares objects younger than its grace period, and what they link to) and bring it
        back from a running gc's quarantine. Returns the ids found present. Tombstoned
        objects are skipped. An object missing (neither present, quarantined nor tombstoned)
        raises NotFound unless ``missing_ok``: a ref must reach everything it references.
        Called by writers that reference existing objects (set_ref, save_checkpoint)."""
        from cluctl.store.maintenance import links_detail

        seen: set[str] = set()
        present_ids: set[str] = set()
        stack: list[tuple[str, str | None, bool]] = [(self._check_oid(o), None, True) for o in oids]
        while stack:
            oid, via, strong = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            path = self.object_path(oid)
            try:
                os.utime(path)
                present = True
            except FileNotFoundError:
                present = self._restore_quarantined(oid)
                if present:
                    try:
                        os.utime(path)
                    except OSError:
                        pass
            except OSError:  # another user's object, a read-only store: present, cannot freshen
                present = path.is_file()
            if not present:
                if not strong:
                    seen.discard(oid)  # a strong link to it elsewhere must still be checked
                    continue
                if missing_ok or self.is_tombstoned(oid):
                    continue
                if via is None:
                    raise NotFound(f"no object {oid} in the store at {self.root}", LS_HINT)
                raise NotFound(f"object {via} links to {oid}, which is missing from the store", VERIFY_HINT)
            present_ids.add(oid)
            stack.extend((x, oid, must) for x, must in links_detail(self, oid).items() if x not in seen)
        return present_ids

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
                    if self.has_object(oid) or self._restore_quarantined(oid):
                        return oid
                    stone = self.get_tombstone(oid)
                    if stone is not None:
                        raise NotFound(
                            f"ref {name} points to object {oid}, which was purged ({stone.get('reason', 'no reason given')})",
                            "purged objects cannot be read; its tombstone records why",
                        )
                    raise DanglingRef(name, oid)
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
        """Remove temp files whose writer is dead (same host, pid gone) or, for other hosts,
        older than ``max_age_s``; move objects a dead gc had quarantined back into objects/
        (a crashed gc loses nothing). Only regular files whose names are cluctl's own temp
        names are touched; anything else in tmp/ is left alone, and a tmp/ that is a symlink
        is not followed at all. Returns the temp files removed."""
        try:
            base = self._tmp_dir_ok()
            names = sorted(os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError:
            return []
        now = time.time()
        removed: list[Path] = []
        for name in names:
            path = base / name
            m = _TEMP_NAME.fullmatch(name)
            q = _QUARANTINE_NAME.fullmatch(name) if m is None else None
            if m is None and q is None:
                continue  # not a name cluctl uses: not ours to delete
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not _stat.S_ISREG(st.st_mode):
                continue
            mm = m or q
            if mm.group("host") == self._host:
                stale = not _pid_alive(int(mm.group("pid")))
            else:
                stale = now - st.st_mtime > max_age_s
            if not stale:
                continue
            if q is not None:
                self._restore_quarantined(q.group("oid"))
                continue
            with self._writing(f"remove temp file {name}"):
                try:
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
