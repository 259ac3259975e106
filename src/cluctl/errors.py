"""One exception family for everything a user can get wrong.

The CLI prints ``error: <what> — <hint>`` on one line of stderr and exits with
``exit_code`` (2 for bad input, 1 for internal failures). ``CLUCTL_DEBUG=1`` shows
the traceback instead.
"""

from __future__ import annotations


class CluctlError(Exception):
    """A problem the user can fix. Exit code 2."""

    exit_code = 2

    def __init__(self, what: str, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.hint = hint

    def __str__(self) -> str:  # one line, always
        text = self.what if not self.hint else f"{self.what} — {self.hint}"
        return " ".join(text.split())


class UsageError(CluctlError):
    """Bad option value, bad task id, malformed sequence..."""


class NotFound(CluctlError):
    """A ref, object, dataset file or task that does not exist."""


class CorruptObject(CluctlError):
    """A stored object whose bytes do not match its id (or cannot be parsed)."""


class StoreError(CluctlError):
    """The store cannot be used (read-only, not a store, wrong layout version)."""


class InternalError(CluctlError):
    """A bug or an unexpected failure. Exit code 1."""

    exit_code = 1


class Diverged(CluctlError):
    """An operation whose weights blew up (see ``cluctl.engine.DIVERGENCE_FACTOR``). Nothing
    is written and the state is restored to where the operation started. Exit code 1.
    ``summary``: the operation's summary with ``stopped="diverged"`` and the reason."""

    exit_code = 1

    def __init__(self, what: str, hint: str | None = None, summary: dict | None = None):
        super().__init__(what, hint)
        self.summary = dict(summary or {})
