"""Atomic file writes outside the store (results folders, figures): a uniquely named temp
file in the target's folder (``.<name>.<host>.<pid>.<random>.tmp``, which
:func:`cluctl.launch.results.clean_dead_temp_files` recognises), fsync, ``os.replace``, and
an fsync of the folder; the temp file is removed on any failure. Readers see the old file or
the new one, never a part. (The store writes its objects and refs the same way through its
own ``tmp/`` folder, with its fault-injection points: ``Store._atomic_write``.)"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path


def temp_name(final: Path) -> Path:
    return final.parent / f".{final.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(final.parent)


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


__all__ = ["write_bytes", "write_text", "temp_name", "fsync_dir"]
