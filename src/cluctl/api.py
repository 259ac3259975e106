"""The Python API: what the CLI does, callable from a notebook.

    from cluctl import api
    r = api.learn(0, dataset="digits", model="mlp", store="/tmp/st")   # fresh start
    r = api.learn(1, from_ref=r.id, store="/tmp/st")
    r = api.unlearn(1, from_ref=r.id, algo="neggem", store="/tmp/st")
    api.evaluate(r.id, store="/tmp/st")["tasks"][0]["test_acc"]
    state = api.load(r.id, store="/tmp/st")      # the model and everything around it

Options are the CLI's, with underscores (``batch_size=10``, ``learn_algo="gem"``,
``unlearn_batch_size=10``), or typed configs built from the one option table
(``api.learn(1, config=LearnConfig(lr=0.05), from_ref=...)``, :mod:`cluctl.config`); ``None``
means "the default" (or, with ``from_ref``, "keep the checkpoint's value"). Values are
checked once, here, against the table; an unknown name is a one-line error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import config as C
from .engine import (
    State,
    check_learnable,
    check_precision,
    evaluate_state,
    learn_task,
    load_state,
    new_state,
    run_config,
    save_state,
    unlearn_task,
)
from .errors import UsageError
from .resolve import validate_unlearn
from .store.core import no_new_store_on_error

RUN_KEYS = C.keys("run")


@dataclass
class OpResult:
    id: str
    summary: dict = field(default_factory=dict)
    save_s: float | None = None  # seconds spent writing the checkpoint

    def __str__(self) -> str:
        return self.id


def open_store(store=None):
    from .store import Store

    if store is not None and not isinstance(store, (str, os.PathLike)):
        return store
    return Store.open(Path(store or os.environ.get("CLUCTL_STORE") or "store"))


def scores_provider(store, cfg: dict, quiet: bool = False,
                    progress=None) -> Callable[[State], tuple[np.ndarray, str | None]]:
    """Scores for ranked buffers: ``--mem-scores REF`` or the cached confidence proxy
    (``progress(done, total, message)`` follows its training when it is computed)."""

    def provide(state: State):
        from .buffers.memorization import resolve_scores

        return resolve_scores(store, state.dataset, cfg.get("mem_scores"), state.config["model"],
                              state.config.get("width"), state.config["seed"], device=state.device,
                              progress=progress, quiet=quiet)

    return provide


def _split_options(options: dict) -> tuple[dict, dict]:
    run = {k: options.pop(k) for k in RUN_KEYS if k in options}
    return run, options


_OP_REF = re.compile(r"(?:refs/)?runs/[^/]+/seed-\d+/op-\d+")


def checkpoint_id(store, ref: str) -> str:
    """The checkpoint a reference names. A launch's operation ref
    (``runs/<run>/seed-<s>/op-NNN``) names that operation's result record (its evaluation,
    timings and checkpoint): it resolves to the record's checkpoint. Anything else resolves
    as the store resolves it (ref, id, or 8+ hex prefix)."""
    oid = store.resolve(ref)
    if isinstance(ref, str) and _OP_REF.fullmatch(ref.strip()):
        rec = store.get_json(oid)
        ck = rec.get("checkpoint") if isinstance(rec, dict) else None
        if not isinstance(ck, str):
            raise UsageError(f"{ref} is not an operation result with a checkpoint",
                             "pass a checkpoint ref or id (cluctl store ls)")
        return store.resolve(ck)
    return oid


def _checkpoint_ref(store, oid: str) -> None:
    store.set_ref(f"checkpoints/{oid[:16]}", oid)


def run_operation(state: State, kind: str, task: int, *, store=None, ucfg: dict | None = None,
                  scores_fn=None, progress=None, impl: str = "fast", precision: str = "fp32", step_hook=None,
                  label: str | None = None, checkpoint_ref: bool = False, on_step=None) -> OpResult:
    """The one driver of an operation on a State, used by :func:`learn`, :func:`unlearn`,
    launch's seed workers and the benchmarks: learn (``kind="L"``) or unlearn (``"U"``,
    with the unlearning options given now, ``ucfg``) ``task``; then, with a ``store``,
    save the checkpoint (``label``, default ``L<task>``/``U<task>``; ``.id``, and ``.save_s``
    the seconds that took) and, with ``checkpoint_ref``, point ``checkpoints/<id16>`` at it.
    ``on_step(record)`` gets one dict per training step (op, step, total, loss, forget_acc,
    projected, projections: :class:`cluctl.engine._Steps`), e.g. for an experiment logger.
    Without a store the state is changed in place and ``.id`` is empty. A divergence
    raises :class:`cluctl.errors.Diverged` with the state restored and nothing saved."""
    import time

    if kind == "L":
        summary = learn_task(state, task, progress=progress, scores_fn=scores_fn, impl=impl, precision=precision,
                             on_step=on_step)
    elif kind == "U":
        summary = unlearn_task(state, task, dict(ucfg or {}), progress=progress, impl=impl, step_hook=step_hook,
                               precision=precision, on_step=on_step)
    else:
        raise UsageError(f"unknown operation kind {kind!r}", "use L (learn) or U (unlearn)")
    if store is None:
        return OpResult("", summary)
    t0 = time.perf_counter()
    oid = save_state(store, state, label or f"{kind}{task}")
    save_s = time.perf_counter() - t0
    if checkpoint_ref:
        _checkpoint_ref(store, oid)
    return OpResult(oid, summary, save_s=save_s)


def _given(cls, config, options: dict) -> dict:
    """The options of one operation, checked once against the option table: a typed
    ``config`` (:class:`cluctl.config.LearnConfig`/``UnlearnConfig``) and keyword options
    (which win), as a dict of the given (non-None) values."""
    if config is not None and not isinstance(config, cls):
        raise UsageError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    merged = {**(config.given() if config is not None else {}), **{k: v for k, v in options.items() if v is not None}}
    return cls.from_options(merged).given()


def _execution(execution, impl, precision, threads) -> tuple[str, str, int | None, str | None]:
    ex = execution if execution is not None else C.Execution()
    if not isinstance(ex, C.Execution):
        raise UsageError(f"execution must be an Execution, got {type(ex).__name__}")
    # --threads -1 or --precision fp16: one line, not a torch error
    checked = C.Execution.from_options({**ex.given(), **{k: v for k, v in
                                                       {"impl": impl, "precision": precision, "threads": threads}.items()
                                                       if v is not None}})
    return checked.impl or "fast", checked.precision or "fp32", checked.threads, checked.device


@no_new_store_on_error
def learn(task: int, from_ref: str | None = None, store=None, device: str | None = None,
          data_root: str | None = None, download: bool = False, impl: str | None = None,
          threads: int | None = None, progress=None, precision: str | None = None,
          config: C.LearnConfig | None = None, execution: C.Execution | None = None, on_step=None,
          **options: Any) -> OpResult:
    """Learn ``task``; returns the new checkpoint (``.id``) and a summary.

    Options: a typed ``config`` (:class:`cluctl.config.LearnConfig`) and/or keyword
    arguments named as the CLI's flags (``lr=0.05``; ``algo`` is ``learn_algo``), checked
    once here against the option table; ``None`` means "the default" (or, with
    ``from_ref``, "the lineage's value"). ``execution`` (:class:`cluctl.config.Execution`)
    or ``impl``/``precision``/``threads``/``device``: how it runs. ``precision="bf16"``
    (CUDA, or a CPU with native bf16: AMX or AVX512-BF16) runs the training forward passes
    under bf16 autocast."""
    st = open_store(store)
    impl, precision, threads, ex_device = _execution(execution, impl, precision, threads)
    device = device if device is not None else ex_device
    if "algo" in options:
        options["learn_algo"] = options.pop("algo")
    # unlearning options may be given here too: recorded as given, used by later unlearnings
    later = {k: options.pop(k) for k in list(options) if k in C.UNLEARN_DEFAULTS}
    opts = {**_given(C.LearnConfig, config, options), **C.UnlearnConfig.from_options(later).given()}
    run, learn_opts = _split_options(opts)
    if from_ref:
        state = load_state(st, checkpoint_id(st, from_ref), overrides={**run, **learn_opts}, device=device,
                           data_root=data_root, download=download, threads=threads)
    else:
        state = new_state(run_config(**run, **learn_opts), device=device, data_root=data_root,
                          download=download, threads=threads, given={**run, **learn_opts})
        check_precision(state, precision)  # bf16 where it is refused fails before the initial checkpoint is written
        check_learnable(state, task)  # so does a task out of range
        if state.config.get("mem_scores"):
            # a bad --mem-scores must fail before the initial checkpoint is written
            from .buffers.memorization import load_scores

            load_scores(st, state.config["mem_scores"], dataset=state.dataset)
        root = save_state(st, state, "init")
        _checkpoint_ref(st, root)
    return run_operation(state, "L", task, store=st, scores_fn=scores_provider(st, state.config, progress=progress),
                         progress=progress,
                         impl=impl, precision=precision, checkpoint_ref=True, on_step=on_step)


@no_new_store_on_error
def unlearn(task: int, from_ref: str, store=None, device: str | None = None, data_root: str | None = None,
            download: bool = False, impl: str | None = None, threads: int | None = None, progress=None,
            step_hook=None, precision: str | None = None, config: C.UnlearnConfig | None = None,
            execution: C.Execution | None = None, on_step=None, **options: Any) -> OpResult:
    """Unlearn ``task`` from checkpoint ``from_ref``; returns the new checkpoint and a
    summary. Options: a typed ``config`` (:class:`cluctl.config.UnlearnConfig`) and/or
    keyword arguments named as the CLI's flags, checked once here; the rule defaults
    (unlearning rate, forget-loss scale, stop accuracy) follow this operation's algorithm."""
    st = open_store(store)
    impl, precision, threads, ex_device = _execution(execution, impl, precision, threads)
    device = device if device is not None else ex_device
    opts = _given(C.UnlearnConfig, config, options)
    # the algorithm's name and the rule-valued options before any work (and before touching the store)
    probe = dict(C.UNLEARN_DEFAULTS)
    probe.update(opts)
    validate_unlearn(probe)
    state = load_state(st, checkpoint_id(st, from_ref), device=device, data_root=data_root, download=download,
                       threads=threads)
    return run_operation(state, "U", task, store=st, ucfg=opts, progress=progress, impl=impl, step_hook=step_hook,
                         precision=precision, checkpoint_ref=True, on_step=on_step)


@no_new_store_on_error
def load(ref: str, store=None, device: str | None = None, data_root: str | None = None,
         download: bool = False) -> State:
    """The State (model, buffers, learned tasks, config) of a checkpoint."""
    st = open_store(store)
    return load_state(st, checkpoint_id(st, ref), device=device, data_root=data_root, download=download)


@no_new_store_on_error
def evaluate(ref: str | State, store=None, device: str | None = None, data_root: str | None = None,
             download: bool = False) -> dict:
    """Per-task accuracies and confidences of a checkpoint (or State), as a JSON-able dict:
    ``{"checkpoint", "op", "dataset", "learned", "forgotten", "tasks": [{"task", "classes",
    "status", "test_acc", "test_conf", "train_acc", "train_conf"}, ...]}``."""
    state = ref if isinstance(ref, State) else load(ref, store, device, data_root, download)
    res = evaluate_state(state)
    tasks = []
    for t in range(state.n_tasks):
        tasks.append({
            "task": t, "classes": state.classes(t), "status": state.status(t),
            **{k: (None if np.isnan(res[k][t]) else round(float(res[k][t]), 6)) for k in res},
        })
    return {
        "checkpoint": state.parent_id, "op": state.history[-1] if state.history else "init",
        "history": state.history, "dataset": state.dataset.name, "seed": state.config["seed"],
        "learned": state.learned, "forgotten": state.forgotten, "tasks": tasks,
    }


def _buffer_indices_from_lineage(store, state: State, task: int) -> tuple[list[int], str | None]:
    """Task's buffer indices: from the state if learned, else from the latest ancestor
    checkpoint whose manifest still lists it. Returns (indices, ancestor id or None)."""
    from .errors import NotFound
    from .store import read_checkpoint_meta

    if task in state.buffers:
        b = state.buffers[task]
        return sorted(set(b["learn"]["indices"]) | set(b["unlearn"]["indices"])), None
    oid = state.parent_id
    while oid:
        if store.is_tombstoned(oid):
            raise NotFound(f"task {task}'s buffer is gone: checkpoint {oid[:12]} in this lineage was purged",
                           "use --members train")
        meta = read_checkpoint_meta(store, oid)
        man_id = meta.get("manifest")
        if man_id:
            if store.is_tombstoned(man_id):
                raise NotFound(f"task {task}'s buffer manifest {man_id[:12]} was purged", "use --members train")
            man = store.get_json(man_id)
            b = man["buffers"].get(str(task))
            if b:
                return sorted(set(b["learn"]["indices"]) | set(b["unlearn"]["indices"])), oid
        oid = meta.get("parent")
    raise NotFound(f"task {task} has no buffer in this checkpoint's lineage (it was never learned)",
                   "use --members train")


class _MiaStats:
    """Per-task (train loss, train confidence, test loss, test confidence) of one state,
    computed once per task (eval mode): the one place both MIAs of SPEC §7 read them."""

    def __init__(self, state: State):
        self.state = state
        self.cache: dict[int, tuple] = {}

    def __call__(self, t: int) -> tuple:
        if t not in self.cache:
            from .data import task_indices
            from .engine import per_sample_losses

            ds, cls = self.state.dataset, self.state.classes(t)
            l_tr, c_tr = per_sample_losses(self.state, task_indices(ds.y_train, cls), t, "train")
            l_te, c_te = per_sample_losses(self.state, task_indices(ds.y_test, cls), t, "test")
            self.cache[t] = (l_tr, c_tr, l_te, c_te)
        return self.cache[t]


def _efficacy(state: State, task: int, seed: int, stats: _MiaStats) -> float:
    """SalUn's MIA-efficacy of ``task`` against the other learned tasks (SPEC §7)."""
    from .metrics import mia_efficacy

    retained = [t for t in state.learned if t != task]
    if not retained:
        raise UsageError("MIA-efficacy needs at least one other learned task to train the attacker")
    r_tr = np.concatenate([stats(t)[1] for t in retained])
    r_te = np.concatenate([stats(t)[3] for t in retained])
    return float(mia_efficacy(r_tr, r_te, stats(task)[1], seed=seed))


@no_new_store_on_error
def mia(ref: str | State, task: int, members: str = "train", attack: str = "loss", seed: int | None = None,
        store=None, device: str | None = None, data_root: str | None = None, download: bool = False) -> dict:
    """Membership inference on one task (SPEC §7).

    ``attack="loss"``: logistic regression on per-sample masked cross-entropy, members =
    the task's training samples (``members="train"``) or its buffer (``"buffer"``; for a
    forgotten task, the buffer of the latest ancestor checkpoint that still lists it),
    non-members = its test samples. Returns acc, auc, cv_acc, n.
    ``attack="efficacy"``: SalUn's MIA-efficacy: an SVC on true-label confidence trained
    with the learned tasks' training (members) vs test (non-members) samples; the fraction
    of this task's training samples it calls non-members.
    """
    from .engine import check_task, per_sample_losses
    from .metrics import mia_loss_attack

    if members not in ("train", "buffer"):
        raise UsageError(f"--members '{members}' is not valid", "choose train or buffer")
    if attack not in ("loss", "efficacy"):
        raise UsageError(f"--attack '{attack}' is not valid", "choose loss or efficacy")
    # a State needs no store, unless its lineage is searched for a buffer
    st = open_store(store) if (not isinstance(ref, State) or (attack == "loss" and members == "buffer")) else None
    state = ref if isinstance(ref, State) else load_state(st, checkpoint_id(st, ref), device=device, data_root=data_root,
                                                          download=download)
    task = check_task(state, task)
    seed = state.config["seed"] if seed is None else int(seed)
    out: dict[str, Any] = {"checkpoint": state.parent_id, "task": task, "status": state.status(task),
                           "attack": attack, "members": members, "seed": seed, "buffer_from": None}
    stats = _MiaStats(state)
    if attack == "loss":
        if members == "buffer":
            mem_idx, origin = _buffer_indices_from_lineage(st, state, task)
            out["buffer_from"] = origin
            m_loss, _ = per_sample_losses(state, mem_idx, task, "train")
        else:
            m_loss = stats(task)[0]
        out.update(mia_loss_attack(m_loss, stats(task)[2], seed=seed))
        return out
    out["efficacy"] = _efficacy(state, task, seed, stats)
    return out


def mia_all(state: State, seed: int) -> list[dict]:
    """SPEC §7's MIAs after an operation, for every task seen so far (what ``launch --mia``
    stores per operation): the loss attack (members = the task's training samples,
    non-members = its test samples) and, for forgotten tasks, MIA-efficacy against the
    learned ones. A task with too few samples gets a row with an ``error``."""
    from .metrics import mia_loss_attack

    stats = _MiaStats(state)
    rows: list[dict] = []
    seen = [t for t in range(state.n_tasks) if state.status(t) != "unseen"]
    for t in seen:
        l_tr, _, l_te, _ = stats(t)
        row = {"task": t, "status": state.status(t), "attack": "loss", "members": "train",
               "acc": None, "auc": None, "cv_acc": None, "efficacy": None}
        try:
            r = mia_loss_attack(l_tr, l_te, seed=seed)
            row.update(acc=r["acc"], auc=r["auc"], cv_acc=r["cv_acc"])
        except UsageError as e:  # too few samples: keep a row saying so
            row["error"] = str(e)
        rows.append(row)
    if state.learned:
        for t in seen:
            if state.status(t) != "forgotten":
                continue
            row = {"task": t, "status": "forgotten", "attack": "efficacy", "members": "retain-train",
                   "acc": None, "auc": None, "cv_acc": None, "efficacy": None}
            try:
                row["efficacy"] = _efficacy(state, t, seed, stats)
            except UsageError as e:
                row["error"] = str(e)
            rows.append(row)
    for row in rows:
        for k in ("acc", "auc", "cv_acc", "efficacy"):
            if row[k] is not None:
                row[k] = float(row[k])
    return rows
