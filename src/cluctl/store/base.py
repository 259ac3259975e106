"""The bottom of the store package (imports nothing from it): ids, canonical JSON, the
reports of verify/gc, and hostile-proof reading of the store's files.

Everything the store reads from disk goes through :func:`read_regular` or
:func:`open_regular`: a path that is a FIFO, a device (a symlink to ``/dev/zero``), a
directory or a socket is refused before a byte is read (``O_NONBLOCK`` so that opening a
FIFO never waits for a writer), and small files (refs, tombstones, VERSION, journal
entries) are read up to a bound. JSON is parsed with :func:`loads_json`, which turns the
RecursionError of deeply nested input into a ValueError.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cluctl.errors import UsageError

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX = re.compile(r"[0-9a-f]+")
#: refs, tombstones, journal entries and VERSION are small; a bigger one is not cluctl's
SMALL_FILE = 1 << 20


def canonical_json(obj: Any) -> bytes:
    """The one byte serialisation of a JSON value used for ids (sorted keys, no spaces)."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise UsageError(f"cannot store this value as JSON: {e}", "use only dicts, lists, str, finite numbers, bools and None") from None
    return text.encode("utf-8")


def loads_json(data: bytes | str) -> Any:
    """``json.loads`` that raises ValueError (never RecursionError) on deeply nested input."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None


def is_oid(text: object) -> bool:
    return isinstance(text, str) and HEX64.fullmatch(text) is not None


class NotRegularFile(OSError):
    """A store path that is not a regular file (FIFO, device, directory, socket)."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file (after following symlinks);
    NotRegularFile (an OSError) otherwise, FileNotFoundError when missing."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(0, f"it is {_kind(st.st_mode)}, not a regular file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int | None = SMALL_FILE) -> bytes:
    """The bytes of a regular file, refusing anything longer than ``limit`` (None: no limit)."""
    with open_regular(path) as f:
        if limit is None:
            return f.read()
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotRegularFile(0, f"it is longer than {limit} bytes", str(path))
    return data


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
    restored: list[str] = field(default_factory=list)  # quarantined, then referenced meanwhile
