"""One seed of a run: resume from its last finished operation, then learn/unlearn the rest.

Store layout of a seed (``P = runs/<run>/seed-<s>``)::

    P/init      -> the initial checkpoint
    P/op-007    -> the op-result of operation 7 (JSON):
                   {"type": "op-result", "run", "seed", "index", "op", "checkpoint": <id>,
                    "eval": {"test_acc": [...], "test_conf", "train_acc", "train_conf"},
                    "summary": {engine summary: steps, wall_s (training), ...; eval_s, save_s,
                                mia_s, op_wall_s (all of it)},
                    "mia": [rows] or null, "execution": {device, threads, impl, precision, host}}

The op-result is written after its checkpoint and its ref after both, so a ref means the
operation is complete. :func:`run_seed` runs in a spawned process (:func:`worker_main`) or
in-process; the results are the same for the same seed, options, device and threads.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

from ..errors import CluctlError, Diverged, UsageError

OP_RESULT_FORMAT = 1
EXIT_STOPPED = 3
MATRICES = ("test_acc", "test_conf", "train_acc", "train_conf")
_PROGRESS_INTERVAL_S = 0.2


class Stopped(Exception):
    """Raised at a safe point when the launch was asked to stop (SIGTERM/SIGINT)."""


def seed_prefix(run: str, seed: int) -> str:
    return f"runs/{run}/seed-{seed}"


def op_ref(run: str, seed: int, index: int) -> str:
    return f"{seed_prefix(run, seed)}/op-{index:03d}"


def failure_ref(run: str, seed: int) -> str:
    """The record of the operation at which a seed failed (diverged), if any."""
    return f"{seed_prefix(run, seed)}/failed"


def seed_failure(store, run: str, seed: int, done: int) -> dict | None:
    """The seed's failure record if it failed at operation ``done`` (the first unfinished)."""
    oid = store.get_ref(failure_ref(run, seed))
    if oid is None:
        return None
    try:
        rec = store.get_json(oid)
    except CluctlError:
        return None
    return rec if isinstance(rec, dict) and rec.get("index") == done else None


def finished_ops(store, run: str, seed: int) -> dict[int, str]:
    """{op index: op-result id} for the seed's finished operations. An operation whose ref
    dangles (its result record is gone) or whose result's checkpoint is gone (neither
    present nor purged) is not finished: a resume redoes it."""
    prefix = seed_prefix(run, seed) + "/op-"
    out = {}
    for name, oid in store.list_refs(prefix, skip_dangling=True).items():
        tail = name[len(prefix):]
        if not tail.isdigit():
            continue
        if store.has_object(oid):
            try:
                ck = store.get_json(oid).get("checkpoint")
            except CluctlError:
                continue  # a damaged record: redo the operation (verify reports the damage)
            if isinstance(ck, str) and not (store.has_object(ck) or store.is_tombstoned(ck)):
                continue
        out[int(tail)] = oid
    return out


def completed_prefix(store, run: str, seed: int) -> list[str]:
    """Op-result ids of operations 0, 1, ... while they are contiguous."""
    done = finished_ops(store, run, seed)
    ids = []
    while len(ids) in done:
        ids.append(done[len(ids)])
    return ids


def _clean(values) -> list:
    return [None if (v is None or (isinstance(v, float) and not math.isfinite(v))) else float(v) for v in values]


def compute_mia(state, seed: int) -> list[dict]:
    """SPEC §7 MIAs after an operation, for every task seen so far (:func:`cluctl.api.mia_all`,
    the one MIA routine)."""
    from ..api import mia_all

    return mia_all(state, seed)


def run_seed(job: dict[str, Any], report: Callable[[tuple], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict:
    """Run (or finish) one seed. ``job``: run, seed, config, sequence, device, threads,
    impl, precision, store, data_root, download, mia. ``report(msg)`` gets progress
    tuples; ``should_stop()`` is polled at safe points (raises :class:`Stopped`).
    Returns {"seed", "ops", "done": n, "ran": n}."""
    import torch

    from ..api import scores_provider
    from ..engine import load_state, new_state, save_state
    from ..sequences import resolve_sequence
    from ..store import Store

    report = report or (lambda msg: None)
    should_stop = should_stop or (lambda: False)
    seed, run = int(job["seed"]), job["run"]
    threads = int(job["threads"])
    torch.set_num_threads(threads)
    store = Store.open(job["store"])
    cfg = dict(job["config"])
    given = dict(job.get("given") or {})
    ops = resolve_sequence(job["sequence"], int(cfg["tasks"]), seed)
    labels = [str(o) for o in ops]
    n = len(ops)
    prefix = seed_prefix(run, seed)
    done_ids = completed_prefix(store, run, seed)
    done = min(len(done_ids), n)
    report(("start", seed, done, n, labels[done] if done < n else None))
    execution = {"device": job["device"], "threads": threads, "impl": job["impl"], "precision": job["precision"],
                 "host": socket.gethostname()}
    common = dict(device=job["device"], data_root=job.get("data_root"), download=bool(job.get("download")),
                  threads=threads)

    if job.get("mia"):  # MIA for operations finished before --mia was asked for
        for i, rid in enumerate(done_ids[:done]):
            res = store.get_json(rid)
            if res.get("mia") is None:
                if should_stop():
                    raise Stopped()
                report(("status", seed, f"MIA for op {i + 1}/{n} {labels[i]}"))
                t0 = time.perf_counter()
                st = load_state(store, res["checkpoint"], **common)
                res["mia"] = compute_mia(st, seed)
                res.setdefault("summary", {})["mia_s"] = round(time.perf_counter() - t0, 4)
                store.set_ref(op_ref(run, seed, i), store.put_json(res))

    if done >= n:
        report(("done", seed, n, n))
        return {"seed": seed, "ops": labels, "done": n, "ran": 0}

    if done > 0:
        last = store.get_json(done_ids[done - 1])
        state = load_state(store, last["checkpoint"], **common)
        if state.history != labels[:done]:
            raise UsageError(
                f"seed {seed} of run {run}: its checkpoint after op {done} has history "
                f"{' '.join(state.history)}, expected {' '.join(labels[:done])}",
                f"the store's refs under {prefix}/ are inconsistent; delete them to redo the seed",
            )
    else:
        init = store.get_ref(f"{prefix}/init")
        if init is not None:
            state = load_state(store, init, **common)
        else:
            state = new_state(dict(cfg, seed=seed), given=dict(given), **common)
            store.set_ref(f"{prefix}/init", save_state(store, state, "init"))
    current = [done]  # the operation under way, for progress reports from the proxy's training
    last_sent = [0.0]

    def progress(steps: int, total: int, msg: str = "") -> None:
        if should_stop():
            raise Stopped()
        now = time.monotonic()
        if now - last_sent[0] >= _PROGRESS_INTERVAL_S or steps >= total:
            last_sent[0] = now
            report(("step", seed, current[0], steps, total, msg))

    scores_fn = scores_provider(store, state.config, progress=progress)
    # only the unlearning options given explicitly: the rest follow their rules per operation
    ucfg = {k: given[k] for k in given if k in _unlearn_keys()}
    logger = _open_logger(job, store, done_ids[:done], labels, execution)
    try:
        _run_ops(job, store, state, ops, labels, done, ucfg, scores_fn, execution, report, should_stop, logger,
                 progress, current)
    finally:
        if logger is not None:
            logger.close()
    report(("done", seed, n, n - done))
    return {"seed": seed, "ops": labels, "done": n, "ran": n - done}


def _open_logger(job: dict, store, done_ids: list[str], labels: list[str], execution: dict):
    """The seed's experiment loggers (``--log``), continuing after its finished operations."""
    if not job.get("log"):
        return None
    from .loggers import SeedLogger

    start_step = 0
    for rid in done_ids:
        steps = (store.get_json(rid).get("summary") or {}).get("steps")
        start_step += int(steps) if isinstance(steps, (int, float)) else 0
    config = {"sequence": job["sequence"], "ops": " ".join(labels), **job["config"],
              **{f"execution/{k}": v for k, v in execution.items()}}
    try:
        return SeedLogger(job["log"], job["log_dir"], job["run"], int(job["seed"]), config,
                          start_index=len(done_ids), start_step=start_step)
    except OSError as e:
        raise UsageError(f"--log {','.join(job['log'])}: cannot write the logs under {job['log_dir']} "
                         f"({e.strerror or e})", "pick another --log-dir") from None


def _run_ops(job, store, state, ops, labels, done, ucfg, scores_fn, execution, report, should_stop, logger,
             progress, current) -> None:
    from ..api import run_operation
    from ..engine import evaluate_state

    seed, run, n = int(job["seed"]), job["run"], len(ops)
    for i in range(done, n):
        if should_stop():
            raise Stopped()
        op = ops[i]
        label = labels[i]
        report(("op", seed, i, n, label))
        current[0] = i
        t0 = time.perf_counter()
        if logger is not None:
            logger.start_op(i, label)
        # precision goes to the engine, which applies bf16 autocast to the training forward
        # passes only (the projection, evaluation and the stop rule stay float32)
        try:
            done_op = run_operation(state, op.kind, op.task, store=store, ucfg=ucfg, scores_fn=scores_fn,
                                    progress=progress, impl=job["impl"], precision=job["precision"], label=label,
                                    on_step=logger.step if logger is not None else None)
        except Diverged as e:
            # the seed stops here: a record of the failed operation (no checkpoint) for the
            # results, the log and the plots; nothing after it runs
            summary = dict(e.summary, op_wall_s=round(time.perf_counter() - t0, 4))
            rec = {"type": "op-failure", "format": OP_RESULT_FORMAT, "run": run, "seed": seed, "index": i,
                   "op": label, "stopped": "diverged", "error": str(e), "summary": summary,
                   "execution": execution}
            store.set_ref(failure_ref(run, seed), store.put_json(rec))
            report(("op-failed", seed, i, n, label, summary))
            raise
        ck, summary = done_op.id, done_op.summary
        t2 = time.perf_counter()
        ev = evaluate_state(state)
        t3 = time.perf_counter()
        mia = compute_mia(state, seed) if job.get("mia") else None
        t4 = time.perf_counter()
        summary = dict(summary)
        summary.update(save_s=round(done_op.save_s, 4), eval_s=round(t3 - t2, 4),
                       mia_s=round(t4 - t3, 4) if mia is not None else None, op_wall_s=round(t4 - t0, 4))
        result = {
            "type": "op-result", "format": OP_RESULT_FORMAT, "run": run, "seed": seed, "index": i, "op": label,
            "checkpoint": ck, "eval": {k: _clean(ev[k].tolist()) for k in MATRICES},
            "summary": summary, "mia": mia, "execution": execution,
        }
        store.set_ref(op_ref(run, seed, i), store.put_json(result))
        if i == done and store.get_ref(failure_ref(run, seed)) is not None:
            store.delete_ref(failure_ref(run, seed))  # an earlier failure here no longer holds
        if logger is not None:
            from .loggers import op_metrics

            logger.op(op_metrics(labels[: i + 1], result["eval"]["test_acc"], state.n_tasks, summary, mia),
                      steps=summary.get("steps"))
        report(("op-done", seed, i, n, label, summary))


def _unlearn_keys():
    from .. import config as C

    return tuple(C.UNLEARN_DEFAULTS)


def worker_main(job: dict[str, Any], queue, stop_event, parent_pid: int | None = None) -> None:
    """Entry point of a spawned seed process. SIGTERM/SIGINT are ignored here: the parent
    sets ``stop_event`` and the worker stops at the next safe point (between training
    steps or operations; nothing half-done is ever referenced). A worker whose parent
    died stops too."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the parent around the spawn
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    seed = job["seed"]
    code = 0

    def should_stop() -> bool:
        return stop_event.is_set() or (parent_pid is not None and os.getppid() != parent_pid)

    try:
        run_seed(job, report=queue.put, should_stop=should_stop)
    except Stopped:
        queue.put(("stopped", seed))
        code = EXIT_STOPPED
    except CluctlError as e:
        queue.put(("error", seed, str(e)))
        code = 1
    except Exception as e:  # an internal failure: one line for the parent, traceback on request
        if os.environ.get("CLUCTL_DEBUG") not in (None, "", "0"):
            import traceback

            traceback.print_exc(file=sys.stderr)
        text = " ".join(str(e).split())[:300]
        queue.put(("error", seed, f"internal error: {type(e).__name__}: {text} (set CLUCTL_DEBUG=1 for the traceback)"))
        code = 1
    queue.close()
    queue.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)
