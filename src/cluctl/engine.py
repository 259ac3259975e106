"""The State of a continual learner and the two operations on it: learn and unlearn.

A :class:`State` holds the model, the learned/forgotten tasks, the replay buffers (as
dataset indices), the operation history and the resolved config. ``learn_task`` and
``unlearn_task`` change it in place and return a summary; ``evaluate_state`` measures it.
``save_state`` / ``load_state`` move it in and out of a :class:`~cluctl.store.Store`.

Randomness: everything random in an operation draws from a generator seeded by (run
seed, operation index) (:func:`op_generator`), so an operation replays identically.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import config as C
from . import faults
from . import resolve as R
from .buffers.selection import buffer_size, select_random, select_ranked
from .data import Dataset, class_order, load_dataset, task_classes, task_indices
from .devices import resolve_device  # noqa: F401  (re-exported: cluctl.engine.resolve_device)
from .errors import CluctlError, CorruptObject, Diverged, NotFound, UsageError
from .grads import (
    TaskBatch,
    apply_update,
    batch_grad,
    bf16_supported,
    forward_precision,
    masked_ce,
    param_list,
    release_graphs,
)
from .refs import RefContext
from .learning import get as get_learn_algo
from .masking import task_accuracy, task_logits
from .models import build_model
from .unlearning import SalUn
from .unlearning import get as get_unlearn_algo

FORMAT = 1
ProgressFn = Callable[[int, int, str], None]  # (done, total, message)

# Divergence (SPEC §3): an operation has diverged when an update or the weights stop being
# finite, or when the norm of all trainable weights grows beyond DIVERGENCE_FACTOR times
# its value at the start of the operation (two orders of magnitude: gradient ascent that
# runs away grows it geometrically, while a healthy unlearning request changes it by a few
# percent to a few times). A diverged operation raises :class:`~cluctl.errors.Diverged`
# with the state restored to where it started: no checkpoint, the task keeps its status.
DIVERGENCE_FACTOR = 100.0


@dataclass
class State:
    config: dict[str, Any]
    dataset: Dataset
    model: torch.nn.Module
    device: torch.device
    class_order: list[int]
    n_tasks: int
    learned: list[int] = field(default_factory=list)
    forgotten: list[int] = field(default_factory=list)
    buffers: dict[int, dict] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)
    root_id: str | None = None
    parent_id: str | None = None
    scores_id: str | None = None
    initial_weights: Callable[[], dict[str, torch.Tensor]] | None = None
    last_op: dict[str, Any] = field(default_factory=dict)
    execution: dict[str, Any] = field(default_factory=dict)
    # the options the user gave explicitly (inherited along --from); every other option
    # is its default, and rule defaults (SPEC §3, §8) are resolved afresh at each operation
    given: dict[str, Any] = field(default_factory=dict)
    # the values the latest operation used (the checkpoint's "config"); None before one
    op_config: dict[str, Any] | None = None

    @property
    def k(self) -> int:
        return self.dataset.num_classes // self.n_tasks

    def classes(self, task: int) -> list[int]:
        return task_classes(self.class_order, self.n_tasks, task)

    def status(self, task: int) -> str:
        if task in self.learned:
            return "learned"
        if task in self.forgotten:
            return "forgotten"
        return "unseen"


# ---------------------------------------------------------------- helpers


def op_generator(seed: int, op_index: int) -> torch.Generator:
    """A CPU generator seeded by (run seed, operation index)."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(op_index), 0xC1]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(s[0]) << 32 | int(s[1]))


_DEVICE_DATA: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def device_data(ds: Dataset, device: torch.device):
    """The dataset's tensors on ``device``, moved once per process."""
    key = (id(ds), str(device))
    if key not in _DEVICE_DATA:
        _DEVICE_DATA[key] = tuple(t.to(device) for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))  # type: ignore
    return _DEVICE_DATA[key]


def _lookup(ds_classes: int, classes: list[int], device) -> torch.Tensor:
    lut = torch.full((ds_classes,), -1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))
    return lut.to(device)


def _task_batch(state: State, task: int, indices) -> TaskBatch:
    x_tr, y_tr, _, _ = device_data(state.dataset, state.device)
    idx = torch.as_tensor(indices, dtype=torch.long).to(state.device)
    cls = state.classes(task)
    lut = _lookup(state.dataset.num_classes, cls, state.device)
    return TaskBatch(x_tr[idx], lut[y_tr[idx]], torch.tensor(cls, device=state.device))


def check_precision(state: State, precision: str | None) -> str:
    """The precision to run ``state``'s operations with: fp32 (default) or bf16 (CUDA, or a
    CPU with native bf16: :func:`cluctl.grads.bf16_supported`)."""
    prec = precision or "fp32"
    if prec not in C.PRECISIONS:
        raise UsageError(f"--precision: unknown value {prec!r}", "use fp32 or bf16")
    if prec == "bf16" and not bf16_supported(state.device):
        where = "this CPU has neither" if state.device.type == "cpu" else f"not {state.device}"
        raise UsageError(f"--precision bf16 needs a CUDA device or a CPU with native bf16 (AMX or AVX512-BF16); "
                         f"{where}", "use --precision fp32 here, or --device cuda")
    return prec


def _with_precision(op):
    """Adds ``precision=`` to an operation (default: ``state.execution["precision"]``, else
    fp32). ``bf16`` runs the training forward passes under autocast (CUDA, native-bf16 CPUs). When the
    operation ends, the CUDA graphs captured for its buffers are released."""

    @functools.wraps(op)
    def run(state: State, task: int, *args, precision: str | None = None, **kwargs):
        prec = check_precision(state, precision or state.execution.get("precision"))
        if prec == "bf16" and state.config.get("profile") == "thesis":
            raise UsageError("--precision bf16 does not apply to --profile thesis (it runs the reference code's "
                             "float32 steps)", "use --precision fp32")
        try:
            with forward_precision(prec):
                return op(state, task, *args, **kwargs)
        finally:
            release_graphs()

    return run


def check_task(state: State, task: int) -> int:
    try:
        t = int(task)
    except (TypeError, ValueError):
        raise UsageError(f"task '{task}' is not an integer") from None
    if t != task or t < 0 or t >= state.n_tasks:
        raise UsageError(
            f"task {task} is out of range: {state.dataset.name} has {state.n_tasks} tasks (0..{state.n_tasks - 1})"
        )
    return t


def check_learnable(state: State, task: int) -> int:
    """``task`` as an int if it can be learned: in range, with at least 2 training samples
    (BatchNorm and the batches need 2). Callers check before writing anything."""
    task = check_task(state, task)
    n = len(task_indices(state.dataset.y_train, state.classes(task)))
    if n < 2:
        raise UsageError(f"task {task} has {n} training sample(s); at least 2 are needed")
    return task


# ---------------------------------------------------------------- creation


def _profile_key(cfg: dict, given: dict | None) -> None:
    """``--profile``: checked; ``spec`` (the default) is left out of the config and of what
    was given, so that a spec run's checkpoints are the same bytes as before the option."""
    prof = C.check("profile", cfg.get("profile")) or "spec"
    if prof == "spec":
        cfg.pop("profile", None)
        if given is not None:
            given.pop("profile", None)
    else:
        cfg["profile"] = prof
        if given is not None:
            given["profile"] = prof


def run_config(dataset: str = "digits", tasks: int | None = None, model: str | None = None,
               width: int | None = None, seed: int = 0, **rest) -> dict:
    cfg = dict(C.LEARN_DEFAULTS)
    cfg.update(C.UNLEARN_DEFAULTS)
    cfg.update(dataset=dataset, tasks=tasks, model=model, width=width, seed=seed)
    cfg.update({k: v for k, v in rest.items() if v is not None})
    return cfg


def new_state(cfg: dict, device: str | None = None, data_root: str | None = None,
              download: bool = False, threads: int | None = None, given: dict | None = None) -> State:
    """A fresh learner: the dataset's class order drawn from the seed, initial weights from
    ``torch.manual_seed(seed)``. ``given``: the options the user gave explicitly (default:
    every option in ``cfg`` that is not None); the rest follow their defaults and rules."""
    cfg = dict(cfg)
    if given is None:  # library use without a record of what was given: what differs from a default
        static = {**C.RUN_DEFAULTS, **C.LEARN_DEFAULTS, **C.UNLEARN_DEFAULTS}
        given = {k: v for k, v in cfg.items() if k in C.OPTION_KEYS and v is not None and v != static.get(k)}
    try:
        seed = int(cfg["seed"])
    except (TypeError, ValueError):
        raise UsageError(f"--seed must be an integer, got '{cfg['seed']}'") from None
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    cfg["seed"] = seed
    given = dict(given)
    _profile_key(cfg, given)
    if threads:
        torch.set_num_threads(int(threads))
    ds = load_dataset(cfg["dataset"], data_root=data_root, download=download)
    n_tasks = int(cfg.get("tasks") or ds.default_tasks)
    if n_tasks <= 0 or ds.num_classes % n_tasks:
        raise UsageError(
            f"--tasks {n_tasks} does not divide {ds.name}'s {ds.num_classes} classes",
            "choose a divisor of the number of classes",
        )
    cfg["tasks"] = n_tasks
    cfg["dataset"] = ds.name
    if cfg.get("model") is None:
        cfg["model"] = ds.default_model
    cfg = R.validate_learn(cfg)
    # unlearning options: given or their static default; rule defaults are resolved per
    # operation (validated here, so a bad value fails before anything is written)
    probe = R.resolve_unlearn(cfg, given, ds.num_classes // n_tasks)
    for k in C.UNLEARN_DEFAULTS:
        cfg[k] = probe[k] if given.get(k) is not None else C.UNLEARN_DEFAULTS[k]
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_model(cfg["model"], cfg.get("width"), ds.input_shape, ds.num_classes)
    if cfg.get("width") is None:
        cfg["width"] = getattr(model, "width", None)
    model.to(dev)
    init = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    state = State(
        config=cfg, dataset=ds, model=model, device=dev,
        class_order=class_order(ds.num_classes, seed), n_tasks=n_tasks,
        initial_weights=lambda: init,
    )
    state.execution = {"device": str(dev), "threads": torch.get_num_threads()}
    state.given = {k: cfg[k] if k in cfg else v for k, v in given.items() if k in C.OPTION_KEYS}
    return state


# ---------------------------------------------------------------- divergence


class _DivergenceGuard:
    """Watches one operation's weights (see :data:`DIVERGENCE_FACTOR`); keeps a copy of the
    model's state to restore when the operation diverges."""

    def __init__(self, state: State, params: list[torch.Tensor]):
        self.state = state
        self.params = params
        self.saved = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        self.norm0 = self._norm()
        self.limit = DIVERGENCE_FACTOR * max(self.norm0, 1e-6)

    def _norm(self) -> float:
        with torch.no_grad():  # one fused kernel per step (a host sync, as the finiteness check)
            return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.detach() for p in self.params]))))

    def check_update(self, x: torch.Tensor) -> str | None:
        if not bool(torch.isfinite(x).all()):
            return "the next update was not finite"
        return None

    def check_weights(self) -> str | None:
        norm = self._norm()
        if not math.isfinite(norm):
            return "the weights stopped being finite"
        if norm > self.limit:
            return (f"the weight norm grew from {self.norm0:.3g} to {norm:.3g} "
                    f"(more than {DIVERGENCE_FACTOR:g}x its value at the start)")
        return None

    def fail(self, what: str, reason: str, summary: dict, hint: str) -> None:
        self.state.model.load_state_dict(self.saved)
        summary = dict(summary, stopped="diverged", reason=reason)
        raise Diverged(f"{what} diverged after {summary.get('steps', 0)} steps: {reason}; "
                       f"nothing was written and the task keeps its status", hint, summary=summary)


StepFn = Callable[[dict], None]  # one record per training step (experiment loggers)


class _Steps:
    """The tail every training step shares, in both profiles: the divergence guard around
    the update, the fault point, the progress call and the per-step record for experiment
    loggers (``on_step``). ``diverged(reason)`` raises with the operation's summary.

    A record is ``{"op", "step", "total", "loss", "forget_acc", "projected",
    "projections"}``: ``loss`` the step's training loss (learning) or forget loss
    (unlearning; None when the algorithm has none), ``forget_acc`` the forget-buffer
    accuracy the stop rule saw before the step (unlearning only), ``projected`` whether the
    step's update was projected, ``projections`` the operation's count so far. Values are
    turned into Python numbers only when someone listens (a host sync per step)."""

    def __init__(self, guard: _DivergenceGuard, diverged: Callable[[str], None], op: str, total: int,
                 progress: ProgressFn | None, on_step: StepFn | None):
        self.guard, self.diverged, self.op, self.total = guard, diverged, op, total
        self.progress, self.on_step = progress, on_step

    def check_update(self, *updates: torch.Tensor) -> None:
        for x in updates:
            why = self.guard.check_update(x)
            if why:
                self.diverged(why)

    def done(self, steps: int, message: str, loss=None, forget_acc: float | None = None,
             projected: bool | None = None, projections: int | None = None) -> None:
        why = self.guard.check_weights()
        if why:
            self.diverged(why)
        faults.point("train-step")
        if self.progress:
            self.progress(steps, self.total, message)
        if self.on_step is not None:
            self.on_step({"op": self.op, "step": steps, "total": self.total,
                          "loss": None if loss is None else float(loss), "forget_acc": forget_acc,
                          "projected": projected, "projections": projections})


# ---------------------------------------------------------------- learning

ScoresFn = Callable[["State"], tuple[np.ndarray, str | None]]


def _reset_to_initial(state: State) -> None:
    """Unlearning the only learned task retrains on nothing: the run's initial weights."""
    if state.initial_weights is None:
        raise NotFound("the run's initial weights are not available to reset to")
    state.model.load_state_dict(state.initial_weights())


def _record_learned(state: State, task: int, scores_id, cfg: dict) -> None:
    """After a learning operation (either profile): the task is learned, no longer
    forgotten, in the history; the options it used are the operation's config."""
    if scores_id:
        state.scores_id = scores_id
    if task in state.forgotten:
        state.forgotten.remove(task)
    if task not in state.learned:
        state.learned.append(task)
    state.history.append(f"L{task}")
    state.op_config = dict(cfg)


@_with_precision
def learn_task(state: State, task: int, progress: ProgressFn | None = None,
               scores_fn: ScoresFn | None = None, impl: str = "fast", on_step: StepFn | None = None) -> dict:
    """Learn ``task`` with the configured algorithm (SPEC §2), then fill its buffers (§5).
    ``on_step(record)``: called after every step (see :class:`_Steps`)."""
    task = check_learnable(state, task)
    if state.config.get("profile") == "thesis":
        return _thesis_learn_task(state, task, progress, scores_fn, on_step)
    cfg = state.config
    algo = get_learn_algo(cfg["learn_algo"])
    t0 = time.perf_counter()
    gen = op_generator(cfg["seed"], len(state.history))
    model = state.model
    params = param_list(model)
    x_tr, y_tr, _, _ = device_data(state.dataset, state.device)
    cls = state.classes(task)
    idx = task_indices(state.dataset.y_train, cls)
    n = len(idx)
    lut = _lookup(state.dataset.num_classes, cls, state.device)
    cls_t = torch.tensor(cls, device=state.device)
    X = x_tr[idx.to(state.device)]
    Y = lut[y_tr[idx.to(state.device)]]
    retained = [j for j in state.learned if j != task]
    ref_batches = [_task_batch(state, j, state.buffers[j]["learn"]["indices"]) for j in retained] if algo.uses_refs else []
    bs, epochs, lr = cfg["batch_size"], cfg["epochs"], cfg["lr"]
    steps_per_epoch = sum(1 for s in range(0, n, bs) if min(bs, n - s) >= 2)
    total = steps_per_epoch * epochs
    steps = projections = fallbacks = 0
    first_seen = None
    guard = _DivergenceGuard(state, params)

    def diverged(reason: str) -> None:
        guard.fail(f"learning task {task} ({cfg['learn_algo']})", reason,
                   {"op": f"L{task}", "algo": cfg["learn_algo"], "steps": steps, "projections": projections,
                    "qp_fallbacks": fallbacks},
                   f"lower --lr (now {lr:g})")

    tail = _Steps(guard, diverged, f"L{task}", total, progress, on_step)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        if first_seen is None:
            first_seen = perm
        perm_d = perm.to(state.device)
        for s in range(0, n, bs):
            b = perm_d[s : s + bs]
            if len(b) < 2:  # BatchNorm cannot normalise a single sample
                continue
            # the retained tasks' passes first, then the current batch (SPEC §2: the GEM
            # reference code's order, which sets BatchNorm's running statistics)
            refs = RefContext(model, ref_batches, impl, gen)
            if ref_batches:
                algo.prepare(refs, cfg)
            g, loss = batch_grad(model, lambda m: masked_ce(m(X[b]), Y[b], cls_t))
            x, info = algo.direction(g, refs, cfg)
            if info is not None:
                projections += int(info.projected)
                fallbacks += int(info.fallback)
            tail.check_update(x)
            apply_update(params, x, lr)
            steps += 1
            tail.done(steps, f"L{task} epoch {epoch + 1}/{epochs}", loss=loss,
                      projected=None if info is None else bool(info.projected), projections=projections)
    # buffers
    m = buffer_size(cfg["memories"], n)
    scores = None
    scores_id = None
    if cfg["learn_buffer_type"] in ("most", "least") or cfg["unlearn_buffer_type"] in ("most", "least"):
        if scores_fn is None:
            raise UsageError("ranked buffer types need memorization scores", "pass --mem-scores REF")
        all_scores, scores_id = scores_fn(state)
        scores = np.asarray(all_scores)[idx.numpy()]
    lt = cfg["learn_buffer_type"]
    if lt == "first":
        learn_idx = idx[first_seen[:m]]
    elif lt == "random":
        learn_idx = select_random(idx, m, gen)
    else:
        learn_idx = select_ranked(idx, scores, m, cfg["learn_buffer_split"], lt, gen)
    ut = cfg["unlearn_buffer_type"]
    if ut == "same":
        unlearn_idx = learn_idx
    elif ut == "random":
        unlearn_idx = select_random(idx, m, gen)
    else:
        unlearn_idx = select_ranked(idx, scores, m, cfg["unlearn_buffer_split"], ut, gen)
    state.buffers[task] = {
        "learn": {"type": lt, "split": cfg["learn_buffer_split"] if lt in ("most", "least") else None,
                  "scores": scores_id if lt in ("most", "least") else None,
                  "indices": [int(i) for i in learn_idx]},
        "unlearn": {"type": ut, "split": cfg["unlearn_buffer_split"] if ut in ("most", "least") else None,
                    "scores": scores_id if ut in ("most", "least") else None,
                    "indices": [int(i) for i in unlearn_idx]},
    }
    _record_learned(state, task, scores_id, cfg)
    summary = {"op": f"L{task}", "algo": cfg["learn_algo"], "steps": steps, "projections": projections,
               "qp_fallbacks": fallbacks, "samples": n, "buffer_size": m,
               "wall_s": round(time.perf_counter() - t0, 4)}
    state.last_op = summary
    return summary


# ---------------------------------------------------------------- unlearning


def _record_unlearned(state: State, task: int, cfg: dict, now: dict) -> None:
    """The bookkeeping after an unlearning, both profiles: the task is forgotten, its
    buffers go, the options given now (``now``) are inherited by later operations."""
    state.learned.remove(task)
    if task not in state.forgotten:
        state.forgotten.append(task)
    state.buffers.pop(task, None)
    state.history.append(f"U{task}")
    state.op_config = dict(cfg)
    for k in now:
        state.given[k] = cfg[k]
        state.config[k] = cfg[k]


@torch.no_grad()
def _accuracy(state: State, batch: TaskBatch) -> float:
    model = state.model
    was = model.training
    model.eval()
    with torch.inference_mode():
        logits = model(batch.x)
        acc = task_accuracy(logits, batch.y, batch.classes).item()
    model.train(was)
    return acc


@_with_precision
def unlearn_task(state: State, task: int, ucfg: dict | None = None, progress: ProgressFn | None = None,
                 impl: str = "fast", step_hook: Callable | None = None, on_step: StepFn | None = None) -> dict:
    """Forget ``task`` (SPEC §3). ``ucfg`` overrides the unlearning options of the state's
    config. ``step_hook(dict)`` (tests) sees g_f, G, the applied update and the mask;
    ``on_step(record)`` gets every step's record (see :class:`_Steps`)."""
    task = check_task(state, task)
    if task not in state.learned:
        where = "was already unlearned" if task in state.forgotten else "was never learned"
        raise UsageError(f"task {task} is not learned ({where})",
                         f"learned tasks: {', '.join(map(str, state.learned)) or 'none'}")
    # options given now join those given along the lineage; every other unlearning option
    # takes its default, rule defaults resolved for this operation's algorithm (SPEC §3)
    now = {k: v for k, v in (ucfg or {}).items() if v is not None}
    unknown = set(now) - set(C.UNLEARN_DEFAULTS)
    if unknown:
        raise UsageError(f"unknown unlearning option(s): {', '.join(sorted(unknown))}")
    given = {**{k: v for k, v in state.given.items() if k in C.UNLEARN_DEFAULTS}, **now}
    cfg = R.resolve_unlearn(state.config, given, state.k)
    if state.config.get("profile") == "thesis":
        return _thesis_unlearn_task(state, task, cfg, given, now, progress, step_hook, on_step)
    algo = get_unlearn_algo(cfg["algo"])
    t0 = time.perf_counter()
    gen = op_generator(cfg["seed"], len(state.history))
    retained = [j for j in state.learned if j != task]
    steps = projections = fallbacks = 0
    final_acc = None
    stopped = "reset"
    if not retained:
        # Unlearning the only learned task: retrain on nothing = the initial weights.
        _reset_to_initial(state)
    else:
        model = state.model
        params = param_list(model)
        buf = state.buffers[task]
        u_idx = torch.tensor(buf["unlearn"]["indices"], dtype=torch.long)
        l_idx = torch.tensor(buf["learn"]["indices"], dtype=torch.long)
        union = torch.unique(torch.cat([u_idx, l_idx]))
        check_batch = _task_batch(state, task, union)
        u_batch = _task_batch(state, task, u_idx)
        l_batch = _task_batch(state, task, l_idx)
        ref_batches = [_task_batch(state, j, state.buffers[j]["learn"]["indices"]) for j in retained]
        b = cfg["unlearn_batch_size"]
        s = cfg["forget_loss_scale"]
        k = state.k
        max_steps = cfg["max_epochs"] * math.ceil(len(u_idx) / b)
        salun = SalUn.start(model, u_batch, cfg)  # None unless --salun-strength
        mask = salun.mask if salun is not None else None
        pu = pl = 0
        stopped = "max-epochs"
        guard = _DivergenceGuard(state, params)

        def diverged(reason: str) -> None:
            guard.fail(f"unlearning task {task} ({cfg['algo']})", reason,
                       {"op": f"U{task}", "algo": cfg["algo"], "steps": steps, "projections": projections,
                        "qp_fallbacks": fallbacks, "final_forget_acc": final_acc, "stop_acc": cfg["stop_acc"]},
                       f"lower --unlearning-rate (now {cfg['unlearning_rate']:g}) or --forget-loss-scale "
                       f"(now {cfg['forget_loss_scale']:g}), or try --salun-strength or another --algo")

        tail = _Steps(guard, diverged, f"U{task}", max_steps, progress, on_step)
        while True:
            final_acc = _accuracy(state, check_batch)
            if final_acc <= cfg["stop_acc"]:
                stopped = "stop-acc"
                break
            if steps >= max_steps:
                break
            iu = torch.arange(pu, pu + b) % len(u_idx)
            il = torch.arange(pl, pl + b) % len(l_idx)
            pu, pl = (pu + b) % len(u_idx), (pl + b) % len(l_idx)
            iu, il = iu.to(state.device), il.to(state.device)
            fx = torch.cat([u_batch.x[iu], l_batch.x[il]])
            fy = torch.cat([u_batch.y[iu], l_batch.y[il]])
            forget = algo.forget_loss(fx, fy, u_batch.classes, k, s, gen)  # the algorithm's loss
            # the retained tasks' passes first, then the forget batch (SPEC §2 order)
            refs = RefContext(model, ref_batches, impl, gen)
            if ref_batches and algo.uses_refs:
                refs.G  # noqa: B018 - computed and cached
            f_loss = None
            if forget is None:  # no forget term
                g_f = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype)
            else:
                loss_fn, fy = forget
                g_f, f_loss = batch_grad(model, loss_fn)
            if salun is not None:
                g_f = salun.on_gradient(g_f)
            x, info = algo.combine(g_f, refs, cfg)
            if salun is not None:
                x = salun.on_update(x)
            if info is not None:
                projections += int(info.projected)
                fallbacks += int(info.fallback)
            if step_hook is not None:
                step_hook({"g_f": g_f, "G": refs.G if (refs.batches and algo.uses_refs) else None, "x": x, "info": info,
                           "mask": mask, "forget_y": fy, "params_before": [p.detach().clone() for p in params]
                           if cfg["salun_on"] == "update" else None, "cfg": cfg})
            # Gradient ascent can blow the weights up when the projection keeps it from
            # lowering the forget accuracy: never apply a non-finite update, and fail the
            # request once the weights run away (DIVERGENCE_FACTOR)
            tail.check_update(x)
            apply_update(params, x, cfg["unlearning_rate"])
            steps += 1
            tail.done(steps, f"U{task} forget acc {final_acc:.3f}", loss=f_loss, forget_acc=final_acc,
                      projected=None if info is None else bool(info.projected), projections=projections)
    _record_unlearned(state, task, cfg, now)
    summary = {"op": f"U{task}", "algo": cfg["algo"], "steps": steps, "projections": projections,
               "qp_fallbacks": fallbacks, "final_forget_acc": final_acc, "stop_acc": cfg["stop_acc"],
               "stopped": stopped, "wall_s": round(time.perf_counter() - t0, 4)}
    state.last_op = summary
    return summary


# ---------------------------------------------------------------- the thesis profile

_RAW: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _inputs(state: State):
    """The (x_train, y_train, x_test, y_test) an operation's network sees: normalised
    (spec), or the raw pixels of the thesis profile (``thesis.raw_pixels``)."""
    x_tr, y_tr, x_te, y_te = device_data(state.dataset, state.device)
    if state.config.get("profile") != "thesis":
        return x_tr, y_tr, x_te, y_te
    from . import thesis as T

    ds = state.dataset
    key = (id(ds), str(state.device))
    if key not in _RAW:
        _RAW[key] = (T.raw_pixels(x_tr, ds.mean, ds.std, ds.name), T.raw_pixels(x_te, ds.mean, ds.std, ds.name))
    xr_tr, xr_te = _RAW[key]
    return xr_tr, y_tr, xr_te, y_te


def _thesis_ctx(state: State, observed: list[int], rng):
    """A :class:`cluctl.thesis.Ctx` over ``observed`` with every buffered task's buffers
    (raw inputs, labels as positions among the task's classes), in the buffers' order."""
    from . import thesis as T

    x_tr, y_tr, _, _ = _inputs(state)
    ctx = T.Ctx(model=state.model, observed=list(observed), rng=rng,
                classes={t: torch.tensor(state.classes(t), device=state.device) for t in range(state.n_tasks)})
    for t in observed:
        if t not in state.buffers:
            continue
        lut = _lookup(state.dataset.num_classes, state.classes(t), state.device)
        for kind, xs, ys in (("learn", ctx.learn_x, ctx.learn_y), ("unlearn", ctx.unlearn_x, ctx.unlearn_y)):
            idx = torch.as_tensor(state.buffers[t][kind]["indices"], dtype=torch.long).to(state.device)
            xs[t] = x_tr[idx]
            ys[t] = lut[y_tr[idx]]
    return ctx


def _thesis_learn_task(state: State, task: int, progress: ProgressFn | None, scores_fn: ScoresFn | None,
                       on_step: StepFn | None = None) -> dict:
    """Learning with ``--profile thesis`` (docs/thesis-profile.md): the reference's loop
    (no-shuffle, partial-batch, epoch-test-forward, dead-early-exit), its step
    (:func:`cluctl.thesis.learn_step`) and its buffer choice."""
    from . import thesis as T

    cfg = T.learn_options(state.config, state.given, state.history)
    T.check_supported(cfg)
    t0 = time.perf_counter()
    rng = T.op_random(cfg["seed"], len(state.history))
    model = state.model
    params = param_list(model)
    x_tr, y_tr, _, _ = _inputs(state)
    cls = state.classes(task)
    idx = task_indices(state.dataset.y_train, cls)
    n = len(idx)
    lut = _lookup(state.dataset.num_classes, cls, state.device)
    X = x_tr[idx.to(state.device)]
    Y = lut[y_tr[idx.to(state.device)]]
    # relearn-duplicate is not reproduced: the task goes last, once
    observed = [j for j in state.learned if j != task] + [task]
    ctx = _thesis_ctx(state, observed[:-1], rng)
    ctx.observed = observed
    bs, epochs, lr, algo = cfg["batch_size"], cfg["epochs"], cfg["lr"], cfg["learn_algo"]
    total = epochs * math.ceil(n / bs)
    steps = 0
    guard = _DivergenceGuard(state, params)

    def diverged(reason: str) -> None:
        guard.fail(f"learning task {task} ({algo}, thesis profile)", reason,
                   {"op": f"L{task}", "algo": algo, "steps": steps, "projections": ctx.projections},
                   f"lower --lr (now {lr:g})")

    tail = _Steps(guard, diverged, f"L{task}", total, progress, on_step)
    model.train()
    for epoch in range(epochs):
        for s in range(0, n, bs):  # no-shuffle, partial-batch
            before = ctx.projections
            try:
                upd = T.learn_step(ctx, X[s : s + bs], Y[s : s + bs], task, algo, cfg["mem_strength"], lr)
            except ValueError as e:  # quadprog: the reference code stops with this error too
                diverged(f"the GEM quadratic program has no solution ({e})")
            steps += 1
            tail.check_update(upd)
            tail.done(steps, f"L{task} epoch {epoch + 1}/{epochs}", loss=ctx.last_loss,
                      projected=ctx.projections > before, projections=ctx.projections)
        with torch.no_grad():  # epoch-test-forward (its early exit never fires: dead-early-exit)
            for s in range(0, n, T.EVAL_CHUNK):
                model(X[s : s + T.EVAL_CHUNK])
    # buffers (buffer-prefix: every sample; python-random, buffer-duplicates, mem-class-lookup)
    m = buffer_size(cfg["memories"], n)
    lt, ut = cfg["learn_buffer_type"], cfg["unlearn_buffer_type"]
    pos_scores = None
    scores_id = None
    if lt in ("most", "least") or ut in ("most", "least"):
        if scores_fn is None:
            raise UsageError("ranked buffer types need memorization scores", "pass --mem-scores REF")
        all_scores, scores_id = scores_fn(state)
        pos_scores = T.position_scores(np.asarray(all_scores), state.dataset.y_train.numpy(), cls,
                                       state.dataset.name, n)
    learn_pos = T.select_positions(n, cfg["memories"], cfg["learn_buffer_split"], lt, rng, pos_scores)
    unlearn_pos = learn_pos if ut == "same" else T.select_positions(
        n, cfg["memories"], cfg["unlearn_buffer_split"], ut, rng, pos_scores)
    idx_l = idx.tolist()
    state.buffers[task] = {
        "learn": {"type": lt, "split": cfg["learn_buffer_split"],
                  "scores": scores_id if lt in ("most", "least") else None,
                  "indices": [idx_l[p] for p in learn_pos]},
        "unlearn": {"type": ut, "split": cfg["unlearn_buffer_split"] if ut != "same" else None,
                    "scores": scores_id if ut in ("most", "least") else None,
                    "indices": [idx_l[p] for p in unlearn_pos]},
    }
    _record_learned(state, task, scores_id, cfg)
    summary = {"op": f"L{task}", "algo": algo, "profile": "thesis", "steps": steps, "projections": ctx.projections,
               "qp_fallbacks": 0, "samples": n, "buffer_size": m, "wall_s": round(time.perf_counter() - t0, 4)}
    state.last_op = summary
    return summary


def _thesis_unlearn_task(state: State, task: int, cfg: dict, given: dict, now: dict,
                         progress: ProgressFn | None, step_hook: Callable | None,
                         on_step: StepFn | None = None) -> dict:
    """Unlearning with ``--profile thesis``: the reference's rule defaults (stop-cutoffs,
    unlearn-rates, scales), loop (stop-loop, stop-train-mode) and step
    (:func:`cluctl.thesis.unlearn_step`)."""
    from . import thesis as T

    algo = cfg["algo"]
    lcfg = T.learn_options(state.config, state.given, state.history)
    T.check_supported({**lcfg, **cfg}, algo)
    for k, v in T.unlearn_rule_defaults(algo).items():
        if given.get(k) is None:
            cfg[k] = v
    cfg["unlearn_mem_strength"] = T.UNLEARN_MARGIN  # unlearn-margin-ignored
    t0 = time.perf_counter()
    retained = [j for j in state.learned if j != task]
    steps = 0
    final_acc = None
    stopped = "reset"
    projections = 0
    if not retained:  # only-task-reset
        _reset_to_initial(state)
    else:
        model = state.model
        params = param_list(model)
        rng = T.op_random(cfg["seed"], len(state.history))
        ctx = _thesis_ctx(state, list(state.learned), rng)
        Ux, Uy = ctx.unlearn_x[task], ctx.unlearn_y[task]
        n_mem, b = int(lcfg["memories"]), int(cfg["unlearn_batch_size"])
        total = cfg["max_epochs"] * math.ceil(n_mem / b)
        guard = _DivergenceGuard(state, params)
        mask = None
        stopped = "max-epochs"

        def diverged(reason: str) -> None:
            guard.fail(f"unlearning task {task} ({algo}, thesis profile)", reason,
                       {"op": f"U{task}", "algo": algo, "steps": steps, "projections": ctx.projections,
                        "qp_fallbacks": 0, "final_forget_acc": final_acc, "stop_acc": cfg["stop_acc"]},
                       f"lower --unlearning-rate (now {cfg['unlearning_rate']:g}) or --forget-loss-scale "
                       f"(now {cfg['forget_loss_scale']:g})")

        tail = _Steps(guard, diverged, f"U{task}", total, progress, on_step)
        model.train()
        for _epoch in range(cfg["max_epochs"]):
            for j in range(0, n_mem, b):  # stop-loop
                final_acc = T.train_mode_accuracy(ctx, Ux, Uy, task)  # stop-train-mode
                if final_acc <= cfg["stop_acc"]:
                    stopped = "stop-acc"
                    break
                before = ctx.projections
                try:
                    mask, updates = T.unlearn_step(ctx, algo, task, j, j + b, cfg, mask)
                except ValueError as e:  # quadprog: the reference code stops with this error too
                    diverged(f"the GEM quadratic program has no solution ({e})")
                steps += 1
                tail.check_update(*updates)
                if step_hook is not None:
                    step_hook({"updates": updates, "mask": mask, "cfg": cfg})
                tail.done(steps, f"U{task} forget acc {final_acc:.3f}", loss=ctx.last_loss, forget_acc=final_acc,
                          projected=ctx.projections > before, projections=ctx.projections)
            if stopped == "stop-acc":
                break
        projections = ctx.projections
    _record_unlearned(state, task, cfg, now)
    summary = {"op": f"U{task}", "algo": algo, "profile": "thesis", "steps": steps, "projections": projections,
               "qp_fallbacks": 0, "final_forget_acc": final_acc, "stop_acc": cfg["stop_acc"], "stopped": stopped,
               "wall_s": round(time.perf_counter() - t0, 4)}
    state.last_op = summary
    return summary


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def _logits(model, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            xb = x[s : s + batch]
            if xb.dim() == 4:  # channels-last: 1.5x faster CIFAR-shaped evaluation on CPU (mkldnn)
                xb = xb.contiguous(memory_format=torch.channels_last)
            out.append(model(xb))
    return torch.cat(out) if out else torch.zeros(0)


def evaluate_state(state: State) -> dict[str, np.ndarray]:
    """Per task: test/train accuracy and confidence (max softmax over the task's k logits)
    in eval mode. Returns arrays of length n_tasks under test_acc, test_conf, train_acc,
    train_conf."""
    model = state.model
    was = model.training
    model.eval()
    x_tr, y_tr, x_te, y_te = _inputs(state)
    res = {key: np.zeros(state.n_tasks) for key in ("test_acc", "test_conf", "train_acc", "train_conf")}
    for split, x, y in (("test", x_te, y_te), ("train", x_tr, y_tr)):
        logits = _logits(model, x).float()
        for t in range(state.n_tasks):
            cls = state.classes(t)
            sel = task_indices(state.dataset.y_train if split == "train" else state.dataset.y_test, cls).to(state.device)
            if len(sel) == 0:
                res[f"{split}_acc"][t] = float("nan")
                res[f"{split}_conf"][t] = float("nan")
                continue
            lut = _lookup(state.dataset.num_classes, cls, state.device)
            lg = task_logits(logits[sel], torch.tensor(cls, device=state.device))
            prob = torch.softmax(lg, 1)
            conf, pred = prob.max(1)
            res[f"{split}_acc"][t] = (pred == lut[y[sel]]).float().mean().item()
            res[f"{split}_conf"][t] = conf.mean().item()
    model.train(was)
    return res


def per_sample_losses(state: State, indices, task: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Masked cross-entropy and true-label confidence per sample (eval mode), for MIA."""
    x_tr, y_tr, x_te, y_te = _inputs(state)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    idx = torch.as_tensor(indices, dtype=torch.long).to(state.device)
    cls = state.classes(task)
    lut = _lookup(state.dataset.num_classes, cls, state.device)
    was = state.model.training
    state.model.eval()
    lg = task_logits(_logits(state.model, x[idx]).float(), torch.tensor(cls, device=state.device))
    state.model.train(was)
    yt = lut[y[idx]]
    loss = torch.nn.functional.cross_entropy(lg, yt, reduction="none")
    conf = torch.softmax(lg, 1).gather(1, yt.reshape(-1, 1)).squeeze(1)
    return loss.cpu().numpy(), conf.cpu().numpy()


# ---------------------------------------------------------------- store round trip


def _meta(state: State, op: str) -> dict:
    used = state.op_config if (state.op_config is not None and op != "init") else state.config
    return {
        "type": "checkpoint",
        "format": FORMAT,
        "op": op,
        "op_index": len(state.history) - 1 if op != "init" else None,
        "history": list(state.history),
        "parent": state.parent_id,
        "root": state.root_id,
        "learned": list(state.learned),
        "forgotten": list(state.forgotten),
        "seed": state.config["seed"],
        "class_order": list(state.class_order),
        "n_tasks": state.n_tasks,
        "dataset": state.dataset.name,
        "dataset_fingerprint": state.dataset.fingerprint,
        "model": state.config["model"],
        "width": state.config.get("width"),
        # the values this operation used, and the options given explicitly along the lineage
        "config": used,
        "given": dict(sorted(state.given.items())),
        "scores": state.scores_id,
        "optimizer": {"type": "sgd", "lr": used["lr"], "unlearning_rate": used.get("unlearning_rate"),
                      "momentum": 0.0, "weight_decay": 0.0, "state": {}},
        # wall time stays out so that the same operation gives the same checkpoint id
        "summary": {k: v for k, v in state.last_op.items() if k != "wall_s"},
    }


def save_state(store, state: State, op: str) -> str:
    """Write the manifest and the checkpoint; returns the checkpoint id."""
    from .store import save_checkpoint

    manifest = {
        "type": "manifest",
        "dataset": state.dataset.name,
        "dataset_fingerprint": state.dataset.fingerprint,
        "buffers": {str(t): state.buffers[t] for t in sorted(state.buffers)},
        "scores": state.scores_id,
    }
    meta = _meta(state, op)
    meta["manifest"] = store.put_json(manifest) if state.buffers else None
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in state.model.state_dict().items()}
    oid = save_checkpoint(store, tensors, meta)
    if state.root_id is None:
        state.root_id = oid
    state.parent_id = oid
    return oid


def _check_manifest(buffers: dict, ds, class_order: list, n_tasks: int, man_id: str) -> None:
    """A manifest's indices must name training samples of their own task (the store checks
    only their type and range): a lying manifest is one line, not an index error or a buffer
    of another task's samples."""
    n, k = len(ds.y_train), len(class_order) // max(n_tasks, 1)
    y = np.asarray(ds.y_train.cpu() if hasattr(ds.y_train, "cpu") else ds.y_train)
    for t, b in buffers.items():
        if not 0 <= t < n_tasks:
            raise CorruptObject(f"manifest {man_id[:12]} has a buffer for task {t}, beyond the run's {n_tasks} tasks")
        cls = set(class_order[t * k:(t + 1) * k])
        for part in ("learn", "unlearn"):
            idx = np.asarray((b.get(part) or {}).get("indices") or [], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise CorruptObject(f"manifest {man_id[:12]}: task {t}'s {part} buffer names sample {int(idx.max())}, "
                                    f"but {ds.name} has {n} training samples")
            if idx.size and not set(np.unique(y[idx]).tolist()) <= cls:
                raise CorruptObject(f"manifest {man_id[:12]}: task {t}'s {part} buffer holds samples of other tasks")


def load_state(store, ref: str, overrides: dict | None = None, device: str | None = None,
               data_root: str | None = None, download: bool = False, threads: int | None = None) -> State:
    """Rebuild a State from a checkpoint; ``overrides`` change learning/unlearning options
    (not the dataset, model, width, seed or number of tasks)."""
    from .store import load_checkpoint

    oid = store.resolve(ref)
    tensors, meta = load_checkpoint(store, oid)
    if meta.get("type") != "checkpoint" or meta.get("format") != FORMAT:
        raise UsageError(f"object {oid[:12]} is not a cluctl checkpoint (format {FORMAT})")
    stored = dict(meta["config"])
    given = meta.get("given")
    if not isinstance(given, dict):  # written before "given" was recorded
        n_t = meta.get("n_tasks")
        classes = len(meta.get("class_order") or [])
        k_classes = classes // int(n_t) if n_t and classes else None
        given = R.given_from_resolved(stored, k_classes)
    given = dict(given)
    for key, val in (overrides or {}).items():
        if val is None:
            continue
        if key == "profile" and (val or "spec") != (stored.get(key) or "spec"):
            raise UsageError(f"cannot change --profile when continuing from checkpoint {oid[:12]} "
                             f"(it has profile={stored.get(key) or 'spec'})", "start a fresh run without --from")
        if key == "profile":
            continue
        if key in ("dataset", "model", "width", "seed", "tasks") and val != stored.get(key):
            raise UsageError(
                f"cannot change --{key} when continuing from checkpoint {oid[:12]} (it has {key}={stored.get(key)})",
                "start a fresh run without --from",
            )
        given[key] = val
    # the options of the next operation: run keys as stored, every other option given or
    # its default (rule defaults are resolved by the operation that needs them)
    cfg = {k: v for k, v in stored.items() if k not in C.LEARN_DEFAULTS and k not in C.UNLEARN_DEFAULTS}
    for defaults in (C.LEARN_DEFAULTS, C.UNLEARN_DEFAULTS):
        for k, v in defaults.items():
            cfg[k] = given[k] if given.get(k) is not None else v
    if threads:
        torch.set_num_threads(int(threads))
    ds = load_dataset(cfg["dataset"], data_root=data_root, download=download)
    if ds.fingerprint != meta["dataset_fingerprint"]:
        raise UsageError(
            f"checkpoint {oid[:12]} was trained on a different copy of {cfg['dataset']} "
            f"(fingerprint {meta['dataset_fingerprint'][:12]}, loaded data {ds.fingerprint[:12]})",
            "point --data-root at the data it was trained on",
        )
    cfg = R.validate_learn(cfg)
    n_tasks = int(meta["n_tasks"])
    probe = R.resolve_unlearn(cfg, given, ds.num_classes // n_tasks)  # a bad override fails here
    for k in C.UNLEARN_DEFAULTS:
        if given.get(k) is not None:
            cfg[k] = given[k] = probe[k]
    for k in C.LEARN_DEFAULTS:
        if given.get(k) is not None:
            given[k] = cfg[k]
    dev = resolve_device(device)
    model = build_model(cfg["model"], cfg.get("width"), ds.input_shape, ds.num_classes)
    sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"checkpoint {oid[:12]} does not fit model {cfg['model']} width {cfg.get('width')}: {first}") from None
    model.to(dev)
    buffers: dict[int, dict] = {}
    if meta.get("manifest"):
        man = store.get_json(meta["manifest"])
        buffers = {int(t): b for t, b in man["buffers"].items()}
        _check_manifest(buffers, ds, list(meta["class_order"]), int(meta["n_tasks"]), meta["manifest"])
    root = meta.get("root") or oid

    def initial():
        if root == oid and meta["op"] == "init":
            return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        rt, _ = load_checkpoint(store, root)
        return {k[len("model."):]: v for k, v in rt.items() if k.startswith("model.")}

    state = State(
        config=cfg, dataset=ds, model=model, device=dev, class_order=list(meta["class_order"]),
        n_tasks=int(meta["n_tasks"]), learned=list(meta["learned"]), forgotten=list(meta["forgotten"]),
        buffers=buffers, history=list(meta["history"]), root_id=root, parent_id=oid,
        scores_id=meta.get("scores"), initial_weights=initial,
    )
    state.execution = {"device": str(dev), "threads": torch.get_num_threads()}
    state.given = {k: v for k, v in given.items() if k in C.OPTION_KEYS and v is not None}
    return state


__all__ = [
    "State", "new_state", "learn_task", "unlearn_task", "evaluate_state", "save_state", "load_state",
    "op_generator", "run_config", "CluctlError", "per_sample_losses",
]
