"""Fault injection for tests: ``CLUCTL_FAULT=<point>[:<n>]`` makes the process kill
itself with SIGKILL the n-th time (default 1st) it reaches the named point.

Points used in the code base:

- ``object-write-mid``: half of an object's bytes are in its temp file.
- ``after-object-write``: an object is in place, its ref not yet updated.
- ``train-step``: inside a training step (learn or unlearn).
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("CLUCTL_FAULT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
