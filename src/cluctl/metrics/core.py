"""Continual-learning / continual-unlearning metrics (SPEC §7).

Pure functions over numpy arrays. Conventions:

* ``ops`` -- list of operation labels ``"L<t>"`` (learn task t) or ``"U<t>"``
  (unlearn task t). Row ``i`` of every matrix is the state AFTER ``ops[i]``;
  there is no row before the first op.
* matrices (``test_acc``, ``train_acc``, ...) -- float arrays of shape
  ``(n_ops, n_tasks)``, accuracies in [0, 1]; column t = task t. Tasks never seen
  still hold real numbers (the model is evaluated on every task).
* task status after op i: "learned" if the task's latest op up to i is L,
  "forgotten" if it is U, "unseen" if it has no op yet.

Documented choices where SPEC §7 leaves room:

* ACC/BWT use the learning prefix (the ops before the first U). If the prefix
  learns a task more than once, "accuracy right after it was learned" is the
  accuracy after its LAST learn in the prefix; "the last learned task" (left out
  of BWT) is the task of the prefix's last op.
* CL-ToW's automatic reference row is strictly EARLIER (r < i). So rows of the
  learning prefix whose learned set never occurred before (the usual case: each
  op learns a new task) have no reference and ToW ``None`` -- the definition does
  not give them 1. With an explicit reference and no retained tasks, dR = dT = 0.
* CLU_mix ignores unseen tasks; a task unlearned before it was ever learned is
  in S (its latest op is U) and needs no anchor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cluctl.errors import UsageError

__all__ = [
    "parse_ops",
    "task_status",
    "acc_bwt",
    "forget_retain",
    "reference_rows",
    "tow",
    "clu_mix",
    "per_op_table",
    "final_metrics",
]

_OP_RE = re.compile(r"^[LU]\d+$")
_TOL = 1e-9  # slack on the [0, 1] range check

LEARNED, FORGOTTEN, UNSEEN = "learned", "forgotten", "unseen"


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #


def parse_ops(ops: Sequence[str], n_tasks: int | None = None) -> list[tuple[str, int]]:
    """``["L0", "U3"]`` -> ``[("L", 0), ("U", 3)]``; UsageError on a bad label or a
    task id >= ``n_tasks`` (when given)."""
    ops = _as_list(ops)
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        raise UsageError(
            f"ops must be a list of labels like 'L0', 'U3', got {type(ops).__name__}",
            "pass e.g. ['L0', 'L1', 'U1']",
        )
    parsed: list[tuple[str, int]] = []
    for i, op in enumerate(ops):
        if not isinstance(op, str) or not _OP_RE.match(op):
            raise UsageError(
                f"bad operation label {op!r} at position {i}",
                "labels are L<task> or U<task>, e.g. L0, U3",
            )
        kind, task = op[0], int(op[1:])
        if n_tasks is not None and task >= n_tasks:
            raise UsageError(
                f"operation {op!r} at position {i} names task {task}, but there are only {n_tasks} tasks",
                f"task ids run from 0 to {n_tasks - 1}",
            )
        parsed.append((kind, task))
    return parsed


def _as_list(ops):
    """Accept numpy arrays / pandas Series of labels as well as lists."""
    if isinstance(ops, np.ndarray) or type(ops).__name__ == "Series":
        return list(ops.tolist())
    return ops


def _matrix(name: str, value, n_ops: int, n_tasks: int | None = None) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name} is not a numeric array ({exc})", "pass a float array of shape (n_ops, n_tasks)") from None
    if m.ndim != 2:
        raise UsageError(f"{name} must be 2-D (n_ops, n_tasks), got shape {m.shape}", "row i = state after op i, column t = task t")
    if m.shape[0] != n_ops:
        raise UsageError(f"{name} has {m.shape[0]} rows but there are {n_ops} ops", "row i must be the state after op i")
    if n_tasks is not None and m.shape[1] != n_tasks:
        raise UsageError(f"{name} has {m.shape[1]} task columns, expected {n_tasks}", "all matrices must have shape (n_ops, n_tasks)")
    if m.shape[1] == 0:
        raise UsageError(f"{name} has no task columns", "n_tasks must be at least 1")
    if not np.all(np.isfinite(m)):
        raise UsageError(f"{name} contains NaN or infinite values", "every cell must be a real accuracy, seen tasks or not")
    if m.min() < -_TOL or m.max() > 1 + _TOL:
        raise UsageError(f"{name} has values outside [0, 1] (min {m.min():g}, max {m.max():g})", "accuracies are fractions, not percentages")
    return m


def _prepare(ops, *named):
    """Validate ops + matrices (same shape); returns (parsed ops, n_tasks, matrices)."""
    ops = _as_list(ops)
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        parse_ops(ops)  # raises
    n_ops = len(ops)
    if n_ops == 0:
        raise UsageError("ops is empty", "a metric needs at least one operation")
    mats = []
    n_tasks = None
    for name, value in named:
        m = _matrix(name, value, n_ops, n_tasks)
        n_tasks = m.shape[1]
        mats.append(m)
    parsed = parse_ops(ops, n_tasks)
    return parsed, n_tasks, mats


def _status_arrays(parsed: list[tuple[str, int]], n_tasks: int) -> np.ndarray:
    """int array (n_ops, n_tasks): 1 learned, -1 forgotten, 0 unseen."""
    st = np.zeros((len(parsed), n_tasks), dtype=np.int8)
    cur = np.zeros(n_tasks, dtype=np.int8)
    for i, (kind, t) in enumerate(parsed):
        cur[t] = 1 if kind == "L" else -1
        st[i] = cur
    return st


def _mean(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if values.size else None


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #


def task_status(ops: list[str], n_tasks: int) -> list[list[str]]:
    """Per op row, per task: "learned" | "forgotten" | "unseen"."""
    if not isinstance(n_tasks, (int, np.integer)) or isinstance(n_tasks, bool) or n_tasks < 1:
        raise UsageError(f"n_tasks must be a positive integer, got {n_tasks!r}", "e.g. n_tasks=20")
    st = _status_arrays(parse_ops(ops, int(n_tasks)), int(n_tasks))
    names = {1: LEARNED, -1: FORGOTTEN, 0: UNSEEN}
    return [[names[int(v)] for v in row] for row in st]


def acc_bwt(ops, test_acc) -> tuple[float | None, float | None]:
    """ACC and BWT (GEM paper) on the learning prefix = ops before the first unlearn.

    ACC = mean test accuracy over the tasks learned in the prefix, at the prefix's
    last row. BWT = mean, over those tasks except the last learned one (the task of
    the prefix's last op), of (accuracy at the prefix's last row - accuracy right
    after the task's LAST learn in the prefix). BWT is None with fewer than 2
    tasks; both are None when the prefix is empty (the first op is an unlearn).
    """
    parsed, _, (acc,) = _prepare(ops, ("test_acc", test_acc))
    prefix_len = next((i for i, (k, _) in enumerate(parsed) if k == "U"), len(parsed))
    if prefix_len == 0:
        return None, None
    last_row = prefix_len - 1
    last_learn: dict[int, int] = {}
    for i in range(prefix_len):
        last_learn[parsed[i][1]] = i  # latest learn of each task in the prefix
    tasks = sorted(last_learn)
    acc_value = float(np.mean([acc[last_row, t] for t in tasks]))
    final_task = parsed[last_row][1]
    others = [t for t in tasks if t != final_task]
    if not others:
        return acc_value, None
    bwt = float(np.mean([acc[last_row, t] - acc[last_learn[t], t] for t in others]))
    return acc_value, bwt


def forget_retain(ops, test_acc) -> tuple[list[float | None], list[float | None]]:
    """Per op: (forget accuracies, retain accuracies) = mean TEST accuracy over the
    forgotten / learned tasks after that op; None where the set is empty."""
    parsed, n_tasks, (acc,) = _prepare(ops, ("test_acc", test_acc))
    st = _status_arrays(parsed, n_tasks)
    forget = [_mean(acc[i, st[i] == -1]) for i in range(len(parsed))]
    retain = [_mean(acc[i, st[i] == 1]) for i in range(len(parsed))]
    return forget, retain


def reference_rows(ops, n_tasks) -> list[int | None]:
    """Per op, the CL-ToW reference row: the latest row r < i whose learned set
    equals row i's learned (retained) set and with no U among ops[0..r]; None if
    there is none. Rows of the learning prefix usually get None (see module doc).
    For L0..L19 U19..U1 the reference of row i >= 20 is row 38 - i."""
    if not isinstance(n_tasks, (int, np.integer)) or isinstance(n_tasks, bool) or n_tasks < 1:
        raise UsageError(f"n_tasks must be a positive integer, got {n_tasks!r}", "e.g. n_tasks=20")
    parsed = parse_ops(ops, int(n_tasks))
    st = _status_arrays(parsed, int(n_tasks))
    seen: dict[frozenset, int] = {}  # learned set -> latest clean row so far
    clean = True  # no U in ops[0..i] yet
    refs: list[int | None] = []
    for i, (kind, _) in enumerate(parsed):
        learned = frozenset(np.flatnonzero(st[i] == 1).tolist())
        refs.append(seen.get(learned))  # only rows < i are in `seen`
        if kind == "U":
            clean = False
        if clean:
            seen[learned] = i
    return refs


def tow(ops, train_acc, test_acc, reference=None) -> list[float | None]:
    """CL-ToW per op: (1 - dS)(1 - dR)(1 - dT).

    dS = mean over forgotten tasks of |train acc - reference train acc| (0 if none),
    dR = the same over retained (learned) tasks (0 if none),
    dT = |mean test acc over retained tasks - reference mean test acc over them|
    (0 if none retained).

    ``reference=None``: the reference row is :func:`reference_rows`' row of the
    same matrices (None where there is none). Otherwise ``reference`` is a list
    with one entry per op -- a ``(ref_train_acc_row, ref_test_acc_row)`` tuple of
    length-n_tasks arrays (e.g. a model retrained on the retained tasks,
    ``--reference retrain``) or None -- or a callable ``reference(i)`` returning
    the same.
    """
    parsed, n_tasks, (tr, te) = _prepare(ops, ("train_acc", train_acc), ("test_acc", test_acc))
    n_ops = len(parsed)
    st = _status_arrays(parsed, n_tasks)

    if reference is None:
        rows = reference_rows(ops, n_tasks)
        refs = [None if r is None else (tr[r], te[r]) for r in rows]
        get = refs.__getitem__
    elif callable(reference):
        get = reference
    else:
        if isinstance(reference, (str, bytes)) or not isinstance(reference, Sequence):
            raise UsageError("reference must be a list (one entry per op) or a callable", "entries are (train_row, test_row) or None")
        if len(reference) != n_ops:
            raise UsageError(f"reference has {len(reference)} entries but there are {n_ops} ops", "give one (train_row, test_row) or None per op")
        get = reference.__getitem__

    out: list[float | None] = []
    for i in range(n_ops):
        ref = get(i)
        if ref is None:
            out.append(None)
            continue
        try:
            ref_tr, ref_te = ref
        except (TypeError, ValueError):
            raise UsageError(f"reference for op {i} must be a (train_row, test_row) pair", "or None where there is no reference") from None
        ref_tr = _row(f"reference train row for op {i}", ref_tr, n_tasks)
        ref_te = _row(f"reference test row for op {i}", ref_te, n_tasks)
        fgt = st[i] == -1
        ret = st[i] == 1
        d_s = float(np.abs(tr[i, fgt] - ref_tr[fgt]).mean()) if fgt.any() else 0.0
        d_r = float(np.abs(tr[i, ret] - ref_tr[ret]).mean()) if ret.any() else 0.0
        d_t = float(abs(te[i, ret].mean() - ref_te[ret].mean())) if ret.any() else 0.0
        out.append((1.0 - d_s) * (1.0 - d_r) * (1.0 - d_t))
    return out


def _row(name: str, value, n_tasks: int) -> np.ndarray:
    if np.ndim(value) != 1:
        raise UsageError(f"{name} must be 1-D (n_tasks,), got shape {np.shape(value)}", "one accuracy per task")
    return _matrix(name, np.reshape(value, (1, -1)), 1, n_tasks)[0]


def clu_mix(ops, train_acc, k: int, beta: float = 0.2, chance: float | None = None) -> list[float]:
    """CLU_mix per op (thesis definition, TRAIN accuracies).

    anchor_t = train acc right after task t was FIRST learned; R = tasks whose
    latest op is L (a relearned task is back in R, anchored at its first learn);
    S = tasks whose latest op is U.
    L_ret = mean_R max(0, anchor - acc); B = mean_R max(0, acc - anchor);
    L_res = mean_S max(0, acc - chance); empty means are 0;
    P = (1 - L_ret)(1 - L_res); CLU = (P + beta*B) / (1 + beta).
    ``chance`` defaults to 1/k. A perfect run with no gain scores 1/(1+beta).
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise UsageError(f"k (classes per task) must be a positive integer, got {k!r}", "e.g. k=10")
    if not np.isfinite(beta) or beta < 0:
        raise UsageError(f"beta must be a finite number >= 0, got {beta!r}", "the default is 0.2")
    if chance is None:
        chance = 1.0 / int(k)
    if not np.isfinite(chance) or not 0.0 <= chance <= 1.0:
        raise UsageError(f"chance must be in [0, 1], got {chance!r}", "the default is 1/k")
    parsed, n_tasks, (tr,) = _prepare(ops, ("train_acc", train_acc))
    st = _status_arrays(parsed, n_tasks)
    anchor = np.full(n_tasks, np.nan)
    out: list[float] = []
    for i, (kind, t) in enumerate(parsed):
        if kind == "L" and np.isnan(anchor[t]):
            anchor[t] = tr[i, t]
        r_mask = st[i] == 1
        s_mask = st[i] == -1
        acc = tr[i]
        if r_mask.any():
            diff = anchor[r_mask] - acc[r_mask]
            l_ret = float(np.maximum(0.0, diff).mean())
            gain = float(np.maximum(0.0, -diff).mean())
        else:
            l_ret = gain = 0.0
        l_res = float(np.maximum(0.0, acc[s_mask] - chance).mean()) if s_mask.any() else 0.0
        p = (1.0 - l_ret) * (1.0 - l_res)
        out.append((p + beta * gain) / (1.0 + beta))
    return out


def per_op_table(ops, test_acc, train_acc, k, beta=0.2, reference=None) -> pd.DataFrame:
    """One row per op: op, retain_acc, forget_acc, tow, clu_mix (index 0..n_ops-1).
    Metric columns are float; a None metric is NaN (``to_json`` writes null)."""
    _prepare(ops, ("test_acc", test_acc), ("train_acc", train_acc))
    forget, retain = forget_retain(ops, test_acc)
    tows = tow(ops, train_acc, test_acc, reference=reference)
    clus = clu_mix(ops, train_acc, k, beta=beta)

    def col(values):
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    return pd.DataFrame(
        {
            "op": [str(o) for o in _as_list(ops)],
            "retain_acc": col(retain),
            "forget_acc": col(forget),
            "tow": col(tows),
            "clu_mix": col(clus),
        },
        index=pd.RangeIndex(len(ops)),
    )


def final_metrics(ops, test_acc, train_acc, k, beta=0.2, reference=None) -> dict:
    """{"acc", "bwt", "final_forget_acc", "final_retain_acc", "final_tow",
    "final_clu_mix"} -- plain Python floats or None (JSON null)."""
    _prepare(ops, ("test_acc", test_acc), ("train_acc", train_acc))
    acc, bwt = acc_bwt(ops, test_acc)
    forget, retain = forget_retain(ops, test_acc)
    tows = tow(ops, train_acc, test_acc, reference=reference)
    clus = clu_mix(ops, train_acc, k, beta=beta)

    def f(v):
        return None if v is None else float(v)

    return {
        "acc": f(acc),
        "bwt": f(bwt),
        "final_forget_acc": f(forget[-1]),
        "final_retain_acc": f(retain[-1]),
        "final_tow": f(tows[-1]),
        "final_clu_mix": f(clus[-1]),
    }
