"""Atomic file writes, the one implementation: a uniquely named temp file, fsync,
``os.replace`` onto the target, an fsync of the folder; the temp file is removed on any
failure (a SIGKILL leaves it for the cleaners). Readers see the old file or the new one,
never a part.

- :func:`write_bytes` / :func:`write_text`: results folders and figures; the temp file sits
  next to the target (``.<name>.<host>.<pid>.<random>.tmp``, which
  :func:`cluctl.launch.results.clean_dead_temp_files` recognises).
- :func:`write_atomic`: the general form. The store calls it with a temp path in its own
  ``tmp/`` folder, its fault-injection hook half way through the bytes, and a callback that
  makes a vanished ``tmp/`` again (``cluctl.store.core.Store._atomic_write``)."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Callable


def temp_name(final: Path) -> Path:
    return final.parent / f".{final.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def _write_all(fd: int, data: memoryview) -> None:
    while len(data):
        n = os.write(fd, data)
        data = data[n:]


def ensure_dir(path: str | os.PathLike, attempts: int = 20) -> None:
    """``os.makedirs(path, exist_ok=True)`` that survives a concurrent pruning of empty
    folders (the store's ``delete_ref`` removes ``refs/tags/`` when its last ref goes):
    makedirs raises FileExistsError when a folder it is creating vanishes between its
    ``mkdir`` and its check; that is retried. A file where a folder should be still raises."""
    for attempt in range(attempts):
        try:
            os.makedirs(path, exist_ok=True)
            return
        except FileExistsError:
            if attempt == attempts - 1:
                raise
            # a file (not a folder) in the way: a real conflict, not a race
            p = Path(path)
            for q in (p, *p.parents):
                if os.path.lexists(q) and not os.path.isdir(q):
                    raise


def write_atomic(final: str | os.PathLike, data: bytes | bytearray | memoryview, *, tmp: Path | None = None,
                 mode: int = 0o666, midway: Callable[[], None] | None = None,
                 on_missing_tmp_dir: Callable[[], None] | None = None, replace_retries: int = 5) -> None:
    """Write ``data`` to ``final`` atomically.

    ``tmp``: the temp file's path (default: next to ``final``, :func:`temp_name`); it is
    created exclusively (``O_EXCL``), so two writers never share one. ``mode``: the file's
    permissions (subject to the umask). ``midway``: called when half of the bytes are
    written (fault injection). ``on_missing_tmp_dir``: called once when the temp file's
    folder does not exist, before creating it (the store re-creates its layout there).
    The target's folder is created when missing; a replace that fails because the folder
    was removed meanwhile (a concurrent pruning of empty folders) is retried."""
    final = Path(final)
    tmp = temp_name(final) if tmp is None else Path(tmp)
    view = memoryview(data).cast("B")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = None
    try:
        try:
            fd = os.open(tmp, flags, mode)
        except FileNotFoundError:
            if on_missing_tmp_dir is not None:
                on_missing_tmp_dir()
            ensure_dir(tmp.parent)
            fd = os.open(tmp, flags, mode)
        half = len(view) // 2
        _write_all(fd, view[:half])
        if midway is not None:
            midway()
        _write_all(fd, view[half:])
        os.fsync(fd)
        os.close(fd)
        fd = None
        for attempt in range(max(1, replace_retries)):
            ensure_dir(final.parent)
            try:
                os.replace(tmp, final)
                break
            except FileNotFoundError:
                if attempt == replace_retries - 1 or not tmp.exists():
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
    fsync_dir(final.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    write_atomic(path, data)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


__all__ = ["ensure_dir", "write_atomic", "write_bytes", "write_text", "temp_name", "fsync_dir"]
