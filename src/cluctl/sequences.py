"""Learn/unlearn sequences (SPEC §6).

A sequence is a list of operations: ``L3`` learns task 3, ``U3`` unlearns it.

Text form
    Tokens separated by commas and/or whitespace, case-insensitive. A token is
    ``L<t>``, ``U<t>`` or a range ``L<a>-<b>`` / ``U<a>-<b>`` that may go up or
    down: ``L5-9`` is ``L5 L6 L7 L8 L9`` and ``U19-1`` is ``U19 U18 ... U1``.
    ``U0`` unlearns task 0 (the old code's ``-0`` meaning "learn 0" is not kept).

Presets (any N >= 4; h = floor(N/2), q = floor(N/4), c = ceil(3N/4))
    ====  ============================================================
    A4    L0..N-1, then U N-1..1
    B4    L0, then for k = 1..N-1: Lk Uk Lk
    C4    L0..c-1, U c-1..h, L c..N-1
    C4v2  L0..h-1, U h-1..q, L h..N-1
    D4    L0..N-1, then unlearn t = N-2 down to 1 unless t % 5 == 4
    E4    L0..N-1, then U r with r uniform in 0..N-1 from the run seed:
          ``r = numpy.random.default_rng([seed, 0xE4]).integers(0, N)``
    F4    C4v2, then L q..h-1
    G4    L0..h-1, U h-1..q, L h..c-1, L q..h-1, L c..N-1
    H4    L0..N-1, then U0 and U t for every t % 5 == 4 with t < N-1
    ====  ============================================================

Validation rejects unlearning a task that is not learned at that point and
task ids outside 0..N-1. Learning an already-learned task is allowed (it
continues training that task).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cluctl.errors import UsageError

__all__ = [
    "Op",
    "PRESETS",
    "parse_sequence",
    "preset",
    "resolve_sequence",
    "validate",
    "format_sequence",
    "learned_after",
    "depends_on_seed",
]


@dataclass(frozen=True)
class Op:
    """One operation: ``kind`` is ``"L"`` (learn) or ``"U"`` (unlearn)."""

    kind: str  # "L" or "U"
    task: int

    def __str__(self) -> str:  # label used in result tables, e.g. "L3", "U3"
        return f"{self.kind}{self.task}"


PRESETS: tuple[str, ...] = ("A4", "B4", "C4", "C4v2", "D4", "E4", "F4", "G4", "H4")

_PRESET_BY_KEY = {name.casefold(): name for name in PRESETS}
_SEEDED_PRESETS = frozenset({"E4"})
_E4_STREAM = 0xE4  # second entropy word for E4's generator

_TOKEN_RE = re.compile(r"([LU])([0-9]+)(?:-([0-9]+))?", re.IGNORECASE | re.ASCII)
_SEP_RE = re.compile(r"[\s,]+")
_FORM_HINT = (
    "expected tokens like L3, U3, L0-19 or U19-1 (a range may go up or down), "
    "separated by commas or spaces, or a preset name: " + ", ".join(PRESETS)
)


# --------------------------------------------------------------------------- helpers


def _span(a: int, b: int) -> range:
    """Tasks a..b inclusive, going up or down; empty when it would go 'backwards'."""
    return range(a, b + 1) if a <= b else range(a, b - 1, -1)


def _up(kind: str, a: int, b: int) -> list[Op]:
    """kind a, a+1, ..., b (empty if b < a)."""
    return [Op(kind, t) for t in range(a, b + 1)]


def _down(kind: str, a: int, b: int) -> list[Op]:
    """kind a, a-1, ..., b (empty if a < b)."""
    return [Op(kind, t) for t in range(a, b - 1, -1)]


def _check_n(n_tasks: object) -> int:
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int):
        raise UsageError(f"number of tasks must be an integer, got {n_tasks!r}")
    return n_tasks


def _key(spec: str) -> str:
    return spec.strip().casefold()


# --------------------------------------------------------------------------- parsing


def parse_sequence(text: str, n_tasks: int) -> list[Op]:
    """Parse the text form (no presets). Checks syntax and task ids in 0..N-1.

    Does not check learned state; see :func:`validate` / :func:`resolve_sequence`.
    """
    n_tasks = _check_n(n_tasks)
    if not isinstance(text, str):
        raise UsageError(f"sequence must be text, got {type(text).__name__}", _FORM_HINT)
    tokens = [tok for tok in _SEP_RE.split(text) if tok]
    if not tokens:
        raise UsageError("empty sequence", _FORM_HINT)
    ops: list[Op] = []
    for tok in tokens:
        m = _TOKEN_RE.fullmatch(tok)
        if m is None:
            raise UsageError(f"malformed sequence token {tok!r}", _FORM_HINT)
        kind = m.group(1).upper()
        a = int(m.group(2))
        b = int(m.group(3)) if m.group(3) is not None else a
        for t in (a, b):
            if not 0 <= t < n_tasks:
                raise UsageError(
                    f"sequence token {tok!r} names task {t}, outside 0..{n_tasks - 1}",
                    f"task ids must be in 0..{n_tasks - 1} for {n_tasks} tasks",
                )
        ops.extend(Op(kind, t) for t in _span(a, b))
    return ops


# --------------------------------------------------------------------------- presets


def _e4_task(n_tasks: int, seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(
            f"E4 needs a non-negative integer seed, got {seed!r}",
            "pass the run seed (an integer >= 0)",
        )
    import numpy  # local: keep importing this module cheap

    return int(numpy.random.default_rng([seed, _E4_STREAM]).integers(0, n_tasks))


def preset(name: str, n_tasks: int, seed: int = 0) -> list[Op]:
    """The operations of preset ``name`` (case-insensitive) for ``n_tasks`` tasks.

    ``seed`` matters only for E4: its unlearned task is
    ``numpy.random.default_rng([seed, 0xE4]).integers(0, n_tasks)``.
    """
    n = _check_n(n_tasks)
    canon = _PRESET_BY_KEY.get(_key(name)) if isinstance(name, str) else None
    if canon is None:
        raise UsageError(f"unknown sequence preset {name!r}", "presets: " + ", ".join(PRESETS))
    if n < 4:
        raise UsageError(
            f"preset {canon} needs at least 4 tasks, got {n}",
            "presets need N >= 4; give an explicit sequence such as L0-2 U2-1",
        )
    h, q, c = n // 2, n // 4, -((-3 * n) // 4)
    all_learn = _up("L", 0, n - 1)
    if canon == "A4":
        return all_learn + _down("U", n - 1, 1)
    if canon == "B4":
        ops = [Op("L", 0)]
        for k in range(1, n):
            ops += [Op("L", k), Op("U", k), Op("L", k)]
        return ops
    if canon == "C4":
        return _up("L", 0, c - 1) + _down("U", c - 1, h) + _up("L", c, n - 1)
    c4v2 = _up("L", 0, h - 1) + _down("U", h - 1, q) + _up("L", h, n - 1)
    if canon == "C4v2":
        return c4v2
    if canon == "D4":
        return all_learn + [Op("U", t) for t in range(n - 2, 0, -1) if t % 5 != 4]
    if canon == "E4":
        return all_learn + [Op("U", _e4_task(n, seed))]
    if canon == "F4":
        return c4v2 + _up("L", q, h - 1)
    if canon == "G4":
        return (
            _up("L", 0, h - 1)
            + _down("U", h - 1, q)
            + _up("L", h, c - 1)
            + _up("L", q, h - 1)
            + _up("L", c, n - 1)
        )
    if canon == "H4":
        return all_learn + [Op("U", 0)] + [Op("U", t) for t in range(n - 1) if t % 5 == 4]
    raise AssertionError(f"preset {canon} not implemented")  # pragma: no cover


def depends_on_seed(spec: str) -> bool:
    """True when the sequence ``spec`` resolves differently per seed (E4)."""
    return isinstance(spec, str) and _PRESET_BY_KEY.get(_key(spec)) in _SEEDED_PRESETS


def resolve_sequence(spec: str, n_tasks: int, seed: int = 0) -> list[Op]:
    """A preset name or the text form, validated for ``n_tasks`` tasks."""
    if isinstance(spec, str) and _key(spec) in _PRESET_BY_KEY:
        ops = preset(spec, n_tasks, seed)
    else:
        ops = parse_sequence(spec, n_tasks)
    validate(ops, n_tasks)
    return ops


# --------------------------------------------------------------------------- checking


def _walk(ops: list[Op], n_tasks: int | None) -> list[list[int]]:
    """Learned set (in order of learning) after each op; raises UsageError."""
    learned: list[int] = []
    states: list[list[int]] = []
    for pos, op in enumerate(ops, start=1):
        if not isinstance(op, Op) or op.kind not in ("L", "U"):
            raise UsageError(f"sequence op {pos} ({op!r}) is not a learn or unlearn operation")
        if isinstance(op.task, bool) or not isinstance(op.task, int):
            raise UsageError(f"sequence op {pos} ({op!r}) has a non-integer task")
        if n_tasks is not None and not 0 <= op.task < n_tasks:
            raise UsageError(
                f"sequence op {pos} ({op}) names task {op.task}, outside 0..{n_tasks - 1}",
                f"task ids must be in 0..{n_tasks - 1} for {n_tasks} tasks",
            )
        if op.kind == "L":
            if op.task not in learned:
                learned.append(op.task)
        else:
            if op.task not in learned:
                raise UsageError(
                    f"sequence op {pos} ({op}) unlearns task {op.task}, "
                    "which is not learned at that point",
                    "a task can only be unlearned after it is learned (and not already unlearned)",
                )
            learned.remove(op.task)
        states.append(list(learned))
    return states


def validate(ops: list[Op], n_tasks: int) -> None:
    """Raise UsageError if ``ops`` is empty, names a task outside 0..N-1, or
    unlearns a task that is not learned at that point. Positions are 1-based."""
    n = _check_n(n_tasks)
    if not ops:
        raise UsageError("empty sequence", _FORM_HINT)
    _walk(list(ops), n)


def learned_after(ops: list[Op]) -> list[list[int]]:
    """For each op i, the learned tasks (in order of first learning since last
    unlearned) after op i. Re-learning a learned task keeps its position."""
    return _walk(list(ops), None)


# --------------------------------------------------------------------------- formatting


def format_sequence(ops: list[Op]) -> str:
    """Compact text form with ranges, e.g. ``"L0-4 U4-1"``.

    Runs of the same kind stepping by +1 or -1 (length >= 2) become ``Ka-b``.
    ``parse_sequence(format_sequence(ops), n) == ops`` for any non-empty ops
    with tasks in 0..n-1.
    """
    out: list[str] = []
    i, ops = 0, list(ops)
    while i < len(ops):
        kind, start = ops[i].kind, ops[i].task
        j = i + 1
        step = 0
        if j < len(ops) and ops[j].kind == kind and abs(ops[j].task - start) == 1:
            step = ops[j].task - start
            while j < len(ops) and ops[j].kind == kind and ops[j].task == ops[j - 1].task + step:
                j += 1
        end = ops[j - 1].task
        out.append(f"{kind}{start}" if j - i == 1 else f"{kind}{start}-{end}")
        i = j
    return " ".join(out)
