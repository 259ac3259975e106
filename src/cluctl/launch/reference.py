"""CL-ToW against a retrained model (``--reference retrain``, SPEC §7).

For a row of a seed's results whose retained set has no earlier forgotten-nothing row (the
prefix reference), the oracle learns exactly the retained tasks from the run's initial
weights, in the order they were first learned, with the run's seed and options. Each
oracle prefix is stored like any operation of a run (a checkpoint and an op-result under
``runs/<run>/seed-<s>/retrain/<L0-L2-L3>``), so identical prefixes are trained once:
operation ``j`` of an oracle draws from the same generator (seed, j) as operation ``j`` of
the run, so an oracle prefix that equals the run's own learning prefix gives the same
checkpoint (the same id) and is taken from the run instead of being trained again.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..metrics import reference_rows
from ..metrics.core import _status_arrays, parse_ops
from .worker import MATRICES, _clean, completed_prefix, seed_prefix


def retrain_ref(run: str, seed: int, tasks: list[int]) -> str:
    return f"{seed_prefix(run, seed)}/retrain/" + "-".join(f"L{t}" for t in tasks)


def oracle_tasks(ops: list[str], n_tasks: int) -> list[list[int] | None]:
    """Per row: the tasks the oracle learns (retained tasks in order of first learning), or
    None where the row has no retained task."""
    parsed = parse_ops(ops, n_tasks)
    st = _status_arrays(parsed, n_tasks)
    first: dict[int, int] = {}
    for i, (kind, t) in enumerate(parsed):
        if kind == "L" and t not in first:
            first[t] = i
    out: list[list[int] | None] = []
    for i in range(len(parsed)):
        keep = [t for t in np.flatnonzero(st[i] == 1).tolist()]
        out.append(sorted(keep, key=lambda t: first[t]) if keep else None)
    return out


def _eval_rows(result: dict) -> tuple[np.ndarray, np.ndarray]:
    ev = result["eval"]
    return (np.array([np.nan if v is None else v for v in ev["train_acc"]], dtype=float),
            np.array([np.nan if v is None else v for v in ev["test_acc"]], dtype=float))


def oracle_result(store, run: str, seed: int, tasks: list[int], ops: list[str], execution: dict,
                  trained: list[int], progress: Callable[[str], None] | None = None) -> dict:
    """The op-result of the oracle that learned ``tasks`` in order (trained if needed)."""
    from ..api import scores_provider
    from ..engine import evaluate_state, learn_task, load_state, save_state

    # the longest prefix already available: a stored oracle, or the run's own clean prefix
    done_ids = completed_prefix(store, run, seed)
    start, start_ck = 0, store.get_ref(f"{seed_prefix(run, seed)}/init")
    for j in range(len(tasks), 0, -1):
        oid = store.get_ref(retrain_ref(run, seed, tasks[:j]))
        if oid is not None:
            res = store.get_json(oid)
            if j == len(tasks):
                return res
            start, start_ck = j, res["checkpoint"]
            break
        clean = all(not o.startswith("U") for o in ops[:j])
        if clean and ops[:j] == [f"L{t}" for t in tasks[:j]] and len(done_ids) >= j:
            res = store.get_json(done_ids[j - 1])
            if j == len(tasks):
                return res
            start, start_ck = j, res["checkpoint"]
            break
    if start_ck is None:
        from ..errors import NotFound

        raise NotFound(f"seed {seed} of run {run} has no initial checkpoint in the store",
                       "the retrained reference needs the run's store (pass --store)")
    common = {k: execution.get(k) for k in ("device", "data_root", "download", "threads")}
    state = load_state(store, start_ck, **common)
    scores_fn = scores_provider(store, state.config)
    result: dict[str, Any] = {}
    for j in range(start, len(tasks)):
        t = tasks[j]
        if progress:
            progress(f"retrain reference: seed {seed} learns " + " ".join(f"L{x}" for x in tasks[: j + 1]))
        summary = learn_task(state, t, scores_fn=scores_fn, impl=execution.get("impl") or "fast",
                             precision=execution.get("precision") or "fp32")
        ck = save_state(store, state, f"L{t}")
        ev = evaluate_state(state)
        result = {"type": "op-result", "format": 1, "run": run, "seed": seed, "index": j, "op": f"L{t}",
                  "checkpoint": ck, "eval": {k: _clean(ev[k].tolist()) for k in MATRICES},
                  "summary": {k: v for k, v in summary.items() if k != "wall_s"}, "mia": None,
                  "oracle": [f"L{x}" for x in tasks[: j + 1]]}
        store.set_ref(retrain_ref(run, seed, tasks[: j + 1]), store.put_json(result))
        trained.append(1)
    return result


def retrain_references(store, run: str, seed: int, ops: list[str], n_tasks: int, train_acc: np.ndarray,
                       test_acc: np.ndarray, execution: dict | None = None, force: bool = False,
                       progress: Callable[[str], None] | None = None) -> tuple[list, int]:
    """Per row, the (train_acc row, test_acc row) CL-ToW compares with: the prefix
    reference where it exists (unless ``force``), else the retrained oracle's; None where
    the row retains nothing. Returns (references, operations trained)."""
    execution = dict(execution or {})
    prefix = reference_rows(ops, n_tasks)
    wanted = oracle_tasks(ops, n_tasks)
    trained: list[int] = []
    refs: list = []
    for i, op in enumerate(ops):
        if prefix[i] is not None and not force:
            r = prefix[i]
            refs.append((np.asarray(train_acc[r], dtype=float), np.asarray(test_acc[r], dtype=float)))
            continue
        tasks = wanted[i]
        if tasks is None:
            refs.append(None)
            continue
        res = oracle_result(store, run, seed, tasks, ops, execution, trained, progress)
        refs.append(_eval_rows(res))
    return refs, len(trained)


def run_metrics(results, reference: str = "prefix", store=None, device: str | None = None,
                data_root: str | None = None, download: bool = False, impl: str = "fast",
                threads: int | None = None, progress=None) -> dict:
    """Per-seed, per-operation metrics of a launch's results folder (SPEC §7), with CL-ToW
    against the prefix reference (``reference="prefix"``) or a model retrained on the
    retained tasks (``"retrain"``: oracles are trained in, and cached by, the run's store).
    Returns ``{"run", "reference", "retrain_ops_trained", "rows": [{"seed", "row", "op",
    "retain_acc", "forget_acc", "tow", "clu_mix"}, ...]}``."""
    import math as _math
    from pathlib import Path

    import numpy as np

    from ..api import open_store
    from ..errors import UsageError
    from ..metrics import per_op_table

    if reference not in ("prefix", "retrain"):
        raise UsageError(f"--reference '{reference}' is not valid", "choose prefix or retrain")
    from ..plots.results import load_results

    folder = Path(results)
    res = load_results(str(folder))  # the one reader of a results folder
    summary, k = res.summary, res.k
    if k is None:
        raise UsageError(f"{folder}/summary.json gives neither k nor a known dataset and number of tasks",
                         "rebuild it with `cluctl launch --aggregate-only --resume RUN`")
    if res.from_aggregate:
        raise UsageError(f"{folder} has no seed-*/ tables", "is it a launch results folder?")
    n_tasks = int(summary.get("n_tasks") or 0)
    st = open_store(store) if reference == "retrain" else None
    execution = {"device": device, "data_root": data_root, "download": download, "threads": threads, "impl": impl}
    rows, trained = [], 0
    for j, seed in enumerate(res.seeds):
        te, tr = res.tables["test_acc"][j], res.tables["train_acc"][j]
        done = int((~np.isnan(te).all(axis=1)).sum())  # a diverged seed: rows up to its failure
        ops = [str(o) for o in res.seed_ops[j]][:done]
        if not ops:
            continue
        te, tr = te[:done], tr[:done]
        ref = None
        if reference == "retrain":
            ref, n = retrain_references(st, summary["run"], seed, ops, n_tasks or te.shape[1], tr, te, execution,
                                        progress=progress)
            trained += n
        table = per_op_table(ops, te, tr, k, reference=ref)
        for i, r in table.iterrows():
            rows.append({"seed": seed, "row": int(i), "op": r["op"],
                         **{c: (None if _math.isnan(r[c]) else float(r[c]))
                            for c in ("retain_acc", "forget_acc", "tow", "clu_mix")}})
    if not rows:
        raise UsageError(f"{folder} has no seed-*/ tables", "is it a launch results folder?")
    return {"run": summary.get("run"), "reference": reference, "retrain_ops_trained": trained, "rows": rows}


__all__ = ["oracle_tasks", "retrain_references", "retrain_ref", "run_metrics"]
