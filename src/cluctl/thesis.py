"""The ``thesis`` profile (``--profile thesis``): what the thesis's reference code computed.

``--profile spec`` (the default) follows SPEC.md. ``--profile thesis`` reproduces the
reference code (``negGemGradA4.py``, ``negGem/net.py``, ``negGem/util.py``,
``negGem/salun.py``) step for step, quirks included, so that its published figures can be
reproduced. Every difference has a name (:data:`QUIRKS`); ``docs/thesis-profile.md`` has the
table (reference code, spec, thesis, whether it changes results), and
``benchmarks/thesis_equivalence.py`` checks these steps against the reference code itself.

This module holds the profile's rules (defaults that differ), its math (the reference's
projections, SalUn mask and label "shuffle") and one step of each operation on a
:class:`Ctx` (model, the buffers as tensors, the observed tasks). The operation drivers
(the loops, buffers, stop rule) are in :mod:`cluctl.engine`. It always runs the reference
code's structure (one forward/backward per task, a float64 QP on the host): ``--impl`` does
not apply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import UsageError

PROFILES = ("spec", "thesis")

#: name -> what the reference code does differently (docs/thesis-profile.md has the table)
QUIRKS: dict[str, str] = {
    "raw-pixels": "inputs are the raw 0..255 pixel values, not normalised",
    "no-shuffle": "learning batches follow the dataset order, the same every epoch",
    "partial-batch": "a last learning batch of any size (even 1) is used",
    "epoch-test-forward": "after each learning epoch, train-mode forwards over the task's data in chunks of 1000",
    "dead-early-exit": "the learning loop's early exit never fires (its counter is never incremented)",
    "agem-runs": "negagem / rl-agem runs learn with A-GEM at lr 0.03 with 65 memories",
    "agem-sum": "A-GEM reference = sum of the retained gradients; x = g + |<g,r>/<r,r>| r",
    "agem-any-violation": "A-GEM step taken when any single retained gradient conflicts",
    "gem-qp": "GEM dual QP in float64 on the host, no eps retries",
    "lr-after-unlearn": "after an unlearning request, learning runs at the unlearning rate",
    "buffer-prefix": "buffers are chosen from x[:max_idx] (all samples)",
    "python-random": "buffer selection and RL labels draw from Python's random",
    "buffer-duplicates": "the random part of a buffer may repeat the ranked part",
    "mem-class-lookup": "scores of the thesis's own class numbers, matched to samples by position",
    "stable-sort": "scores ranked with torch.sort",
    "sum-loss": "forget loss s * (CE_unlearn + CE_learn), two forward passes",
    "scales": "forget loss scales 5 (neggem, its RL step, RL-GEM, RL-AGEM), 1 otherwise",
    "neggem-plus-rl": "neggem takes a NegGEM step and then an RL-GEM step per iteration",
    "rl-leaked-task": "RL forget data from the last observed task's buffers (leaked loop variable)",
    "rl-tensor-shuffle": "random labels = random.shuffle on a tensor (copies, not a permutation)",
    "rl-label-order": "RL-GEM shuffles the learn slice first, RL-AGEM the unlearn slice first",
    "negagem-label-mixup": "negagem's retained gradients use learn-buffer data with unlearn-buffer labels",
    "neggrad-accumulate": "neggrad's forget gradient accumulates onto the last reference gradient",
    "neggrad-formula": "x = alpha * mean_j g_j + (1 - alpha) * g_f in float64",
    "ref-slice": "the forgotten task's learn slice gets a reference pass (neggem, ALT-NEGGEM, neggrad)",
    "ref-forwards": "the forgotten task's whole learn buffer is forwarded in every reference loop",
    "alt-constraints": "ALT-NEGGEM's QP rows: retained gradients and the unmasked g_f",
    "salun-first-step": "SalUn mask from the first masked step's forget gradient (quantile), then reused",
    "salun-only-projected": "the SalUn mask only reaches the update when a projection happens",
    "salun-order": "where each algorithm applies the mask relative to the conflict test",
    "salun-one": "SalUn strength >= 1 crashed the reference: refused",
    "stop-cutoffs": "stop accuracies 0.275 / 0.3 / 0.35 per algorithm",
    "stop-train-mode": "stop rule on the unlearn buffer only, in train mode",
    "stop-loop": "unlearning loop: epochs x range(0, memories, b), check before each step",
    "unlearn-rates": "unlearning rates 0.01; 0.003 for negagem and rl-agem",
    "unlearn-margin-ignored": "the unlearning margin is always 0.5 (the flag set an attribute nothing read)",
    "qp-order": "QP rows in ascending task order, conflict test in observed order",
    "only-task-reset": "unlearning the only learned task resets the model (the reference crashed)",
    "logit-slots": "outputs indexed by position in the class order (cluctl: by class id)",
    "class-order": "an unseeded shuffled class list (cluctl: the seed's order)",
}

#: the reference's unlearning algorithms (cluctl names) and their stop cutoffs (stop-cutoffs)
STOP_CUTOFF: dict[str, float] = {"neggem": 0.275, "negagem": 0.3, "rl-gem": 0.275, "rl-agem": 0.3,
                                 "alt-neggem": 0.35, "neggrad": 0.275}
#: unlearning rates (unlearn-rates): Args' 0.01 unless set by single_run
UNLEARNING_RATE: dict[str, float] = {"negagem": 0.003, "rl-agem": 0.003}
DEFAULT_UNLEARNING_RATE = 0.01
#: forget-loss scales s in s * (CE_u + CE_l) (scales)
FORGET_SCALE: dict[str, float] = {"neggem": 5.0, "rl-gem": 5.0, "rl-agem": 5.0}
#: runs of these algorithms learn with A-GEM at lr 0.03 with 65 memories (agem-runs)
AGEM_RUNS = ("negagem", "rl-agem")
AGEM_RUN_LEARN: dict[str, Any] = {"learn_algo": "agem", "lr": 0.03, "memories": 65}
#: unlearn-margin-ignored: single_run stored --unlearn_mem_strength in
#: ``args.unlearn_memory_strength``; Net read ``args.unlearn_mem_strength``, always Args' 0.5
UNLEARN_MARGIN = 0.5
GEM_EPS = 1e-3
EVAL_CHUNK = 1000  # the reference's test_bs

#: mem-class-lookup: CIFAR-100 label -> the class number the thesis used for it (its
#: position in the thesis's superclass-ordered name list, reached through its own sorted
#: -- and differently spelt -- name list).
THESIS_CIFAR100_U: tuple[int, ...] = (
    20, 5, 70, 40, 0, 30, 35, 36, 90, 15, 16, 71, 45, 91, 37, 55, 17, 46, 38, 56, 31, 57, 25, 50, 39,
    26, 32, 65, 75, 18, 76, 1, 58, 6, 51, 60, 72, 80, 47, 59, 27, 95, 41, 42, 77, 66, 73, 85, 92, 52,
    81, 21, 86, 22, 10, 2, 87, 23, 93, 88, 53, 19, 11, 61, 62, 82, 63, 7, 48, 96, 12, 54, 3, 8, 83,
    64, 49, 67, 78, 68, 84, 97, 13, 24, 33, 98, 28, 29, 43, 99, 94, 9, 14, 79, 34, 4, 89, 44, 74, 69,
)


def is_thesis(cfg: dict) -> bool:
    return (cfg.get("profile") or "spec") == "thesis"


# ---------------------------------------------------------------- rules


def check_supported(cfg: dict, unlearn_algo: str | None = None) -> None:
    """Options the reference code had no counterpart for are refused (one line, a hint)."""
    if cfg.get("learn_algo") not in ("gem", "agem", "naive"):
        raise UsageError(f"--profile thesis learns with gem, agem or naive, not {cfg.get('learn_algo')!r}",
                         "use --learn-algo gem (or agem), or --profile spec")
    if cfg.get("agem_sample"):
        raise UsageError("--agem-sample has no thesis counterpart", "leave it out with --profile thesis")
    if cfg.get("learn_buffer_type") == "first":
        raise UsageError("--learn-buffer-type first (the thesis's ring buffer) is not reproduced by --profile thesis",
                         "use random, most or least, or --profile spec")
    if unlearn_algo is not None and unlearn_algo not in STOP_CUTOFF:
        raise UsageError(f"--profile thesis has no {unlearn_algo!r} (the thesis's algorithms: "
                         f"{', '.join(STOP_CUTOFF)})", "choose one of those, or --profile spec")
    s = cfg.get("salun_strength")
    if unlearn_algo is not None and s is not None and s >= 1.0:
        raise UsageError("--salun-strength 1 crashed the thesis's code (salun-one)",
                         "use a strength below 1 with --profile thesis")
    if unlearn_algo is not None and s and cfg.get("salun_on", "gradient") != "gradient":
        raise UsageError("--salun-on update has no thesis counterpart", "use --salun-on gradient")


def learn_options(cfg: dict, given: dict, history: list[str]) -> dict:
    """The learning options a thesis learning operation uses: agem-runs (A-GEM, lr 0.03,
    65 memories unless given) and lr-after-unlearn (the unlearning rate once a request has
    run in the lineage: the reference never restored its optimiser)."""
    out = dict(cfg)
    algo = str(cfg.get("algo") or "neggem")
    if algo in AGEM_RUNS:
        for k, v in AGEM_RUN_LEARN.items():
            if given.get(k) is None:
                out[k] = v
    if any(op.startswith("U") for op in history):
        rate = given.get("unlearning_rate")
        out["lr"] = float(rate) if rate is not None else UNLEARNING_RATE.get(algo, DEFAULT_UNLEARNING_RATE)
    return out


def unlearn_rule_defaults(algo: str) -> dict:
    """The thesis's unlearning rate, forget-loss scale and stop cutoff for ``algo``."""
    return {"unlearning_rate": UNLEARNING_RATE.get(algo, DEFAULT_UNLEARNING_RATE),
            "forget_loss_scale": FORGET_SCALE.get(algo, 1.0), "stop_acc": STOP_CUTOFF[algo]}


def op_random(seed: int, op_index: int) -> random.Random:
    """python-random: the operation's Python generator, seeded by (run seed, op index)."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(op_index), 0x7E5]).generate_state(2, dtype=np.uint32)
    return random.Random(int(s[0]) << 32 | int(s[1]))


# ---------------------------------------------------------------- data and buffers


def raw_pixels(x: torch.Tensor, mean, std, dataset: str) -> torch.Tensor:
    """raw-pixels: undo the normalisation and the /255 scaling (CIFAR: back to the exact
    integers read from the files)."""
    m = torch.tensor(mean, dtype=torch.float64, device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
    s = torch.tensor(std, dtype=torch.float64, device=x.device).view(1, -1, *([1] * (x.dim() - 2)))
    raw = (x.double() * s + m) * 255.0
    if dataset.startswith("cifar"):
        raw = torch.round(raw)
    return raw.float()


def position_scores(all_scores: np.ndarray, y_train: np.ndarray, classes: list[int], dataset: str, n: int) -> np.ndarray:
    """mem-class-lookup: the score the reference gave position i of a task's data: the
    i-th training sample of class u(c), c over the task's classes in order, truncated to
    the task's n samples."""
    keys = [THESIS_CIFAR100_U[c] if dataset == "cifar100" else c for c in classes]
    idx = np.concatenate([np.flatnonzero(np.asarray(y_train) == k) for k in keys])[:n]
    return np.asarray(all_scores)[idx]


def select_positions(n: int, memories: int, split: float, kind: str, rng: random.Random,
                     scores: np.ndarray | None = None) -> list[int]:
    """The reference's buffer choice over a task's n positions (python-random,
    buffer-duplicates, stable-sort): a split of the slots by score (``most``/``least``) or
    by a shuffle (``random``), the rest from a shuffle of *all* positions, then shuffled."""
    N = len(scores) if scores is not None else n
    if kind == "most":
        order = torch.sort(torch.as_tensor(np.asarray(scores)), descending=True)[1]
    elif kind == "least":
        order = torch.sort(torch.as_tensor(np.asarray(scores)), descending=False)[1]
    elif kind == "random":
        arr0 = list(range(N))
        rng.shuffle(arr0)
        order = torch.tensor(arr0)
    else:
        raise UsageError(f"thesis buffers are most, least or random, not {kind!r}")
    arr = list(range(N))
    rng.shuffle(arr)
    num = min(int(memories), N)
    if not 0.0 <= split <= 1.0:
        raise UsageError(f"buffer split must be in [0, 1], got {split}")
    n_ranked = round(num * split)
    chosen = arr[: num - n_ranked] + order[:n_ranked].tolist()
    rng.shuffle(chosen)
    return [int(i) for i in chosen]


def tensor_shuffle(labels: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """rl-tensor-shuffle: what ``random.shuffle`` does to a 1-D torch tensor. Its swap
    ``x[i], x[j] = x[j], x[i]`` goes through views, so each step copies x[j] into x[i] and
    leaves x[j]: the result repeats labels (and keeps them all when n = 1). In place."""
    vals = labels.tolist()
    for i in reversed(range(1, len(vals))):
        j = rng._randbelow(i + 1)
        vals[i] = vals[j]
    labels.copy_(torch.tensor(vals, dtype=labels.dtype))
    return labels


# ---------------------------------------------------------------- math


def _columns(rows: list[torch.Tensor]) -> torch.Tensor:
    """The gradients as the columns of a p x t matrix (the reference's ``grads`` layout)."""
    return torch.stack([r.detach() for r in rows], 1)


def conflicts(g: torch.Tensor, rows: list[torch.Tensor]) -> bool:
    """Any <g, g_j> < 0, computed as one 1 x t product as the reference does."""
    return bool((torch.mm(g.unsqueeze(0), _columns(rows)) < 0).any()) if rows else False


def gem_project(g: torch.Tensor, rows: list[torch.Tensor], margin: float, eps: float = GEM_EPS) -> torch.Tensor:
    """gem-qp: the GEM dual QP as the reference solves it: float64 on the host,
    P = M M^T symmetrised + eps I, q = -M g, v >= margin, x = M^T v + g; float32 result."""
    import quadprog

    # the reference's layout (a p x t matrix read transposed), so that numpy's products
    # round as they did there
    M = _columns(rows).cpu().t().double().numpy()
    gn = g.detach().cpu().contiguous().double().numpy()
    t = M.shape[0]
    P = M @ M.T
    P = 0.5 * (P + P.T) + np.eye(t) * eps
    q = -(M @ gn)
    v = quadprog.solve_qp(P, q, np.eye(t), np.zeros(t) + margin)[0]
    x = v @ M + gn
    return torch.from_numpy(x).to(device=g.device, dtype=torch.float32)


def agem_project(g: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
    """agem-sum: r = sum of the retained gradients (float64), x = g + |<g,r>/<r,r>| r."""
    r = _columns(rows).t().double().sum(0)
    gd = g.detach().double()
    c = torch.dot(gd, r) / torch.dot(r, r)
    return (gd + r * abs(c.item())).to(torch.float32)


def neggrad_combine(g: torch.Tensor, rows: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """neggrad-formula: x = alpha * mean_j g_j + (1 - alpha) * g_f, in float64."""
    r = _columns(rows).t().double().mean(0)
    return (r * alpha + g.detach().double() * (1 - alpha)).to(torch.float32)


def salun_apply(g: torch.Tensor, strength: float, mask: torch.Tensor | None):
    """salun-first-step: the first call keeps |g| >= quantile(|g|, 1 - strength) and
    returns that mask; later calls apply the mask they are given. Returns (masked g, mask)."""
    if mask is None:
        a = g.abs()
        cutoff = torch.quantile(a, 1 - strength)
        mask = a >= cutoff
    return g * mask, mask


# ---------------------------------------------------------------- one step


@dataclass
class Ctx:
    """What one thesis step reads: the model, the buffers (raw inputs, labels as positions
    0..k-1 among the task's classes) and the observed tasks in the reference's order."""

    model: torch.nn.Module
    classes: dict[int, torch.Tensor]  # task -> its class ids (the logits it uses)
    observed: list[int]
    learn_x: dict[int, torch.Tensor] = field(default_factory=dict)
    learn_y: dict[int, torch.Tensor] = field(default_factory=dict)
    unlearn_x: dict[int, torch.Tensor] = field(default_factory=dict)
    unlearn_y: dict[int, torch.Tensor] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    projections: int = 0
    last_loss: torch.Tensor | None = None  # the last step's (forget) loss, for experiment loggers

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def flat_grad(self) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).detach().clone()
                          for p in self.params])

    def loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        logits = self.model(x)
        idx = self.classes[task].reshape(1, -1).expand(logits.shape[0], -1)
        return torch.nn.functional.cross_entropy(torch.gather(logits, 1, idx), y)

    def forward_only(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.model(x)

    def step(self, x: torch.Tensor, lr: float) -> None:
        params = self.params
        views = [v.view_as(p) for v, p in zip(x.split([p.numel() for p in params]), params)]
        with torch.no_grad():
            torch._foreach_add_(params, views, alpha=-lr)


def learn_step(ctx: Ctx, x: torch.Tensor, y: torch.Tensor, task: int, algo: str, margin: float, lr: float) -> torch.Tensor:
    """One learning step of ``Net.observe`` (``ctx.observed`` ends with ``task``): reference
    passes over the other observed tasks' whole learn buffers (observed order), the
    batch's gradient, the GEM QP (gem-qp) or the thesis A-GEM step (agem-sum,
    agem-any-violation) when any retained gradient conflicts; SGD. Returns the update."""
    refs: dict[int, torch.Tensor] = {}
    if algo != "naive":
        for tt in ctx.observed[:-1]:
            ctx.zero_grad()
            ctx.loss(ctx.learn_x[tt], ctx.learn_y[tt], tt).backward()
            refs[tt] = ctx.flat_grad()
    ctx.zero_grad()
    loss = ctx.loss(x, y, task)
    loss.backward()
    ctx.last_loss = loss.detach()
    g = ctx.flat_grad()
    upd = g
    others = ctx.observed[:-1]
    if algo != "naive" and others:
        if conflicts(g, [refs[j] for j in others]):
            rows = [refs[j] for j in others]
            upd = gem_project(g, rows, margin) if algo == "gem" else agem_project(g, rows)
            ctx.projections += 1
    ctx.step(upd, lr)
    return upd


def _ref_pass(ctx: Ctx, task: int, x1: int, x2: int, mode: str, labels: str = "learn") -> dict[int, torch.Tensor]:
    """The reference-gradient loop of ``Net.unlearn`` over ``ctx.observed`` (observed
    order): the whole learn buffer of each task is forwarded (ref-forwards); for the
    forgotten task ``mode`` "slice" backpropagates its learn slice instead (ref-slice),
    "skip" moves on. ``labels="unlearn"``: negagem-label-mixup. The last backward's
    gradient stays in the parameters' ``.grad`` (neggrad-accumulate)."""
    out: dict[int, torch.Tensor] = {}
    for tt in ctx.observed:
        ctx.zero_grad()
        ys = ctx.unlearn_y[tt] if labels == "unlearn" else ctx.learn_y[tt]
        if tt == task:
            ctx.forward_only(ctx.learn_x[tt])
            if mode == "skip":
                continue
            loss = ctx.loss(ctx.learn_x[tt][x1:x2], ctx.learn_y[tt][x1:x2], tt)
        else:
            loss = ctx.loss(ctx.learn_x[tt], ys, tt)
        loss.backward()
        out[tt] = ctx.flat_grad()
    return out


def _neg_loss(ctx: Ctx, task: int, x1: int, x2: int, scale: float) -> torch.Tensor:
    """sum-loss: -scale * (CE(unlearn slice) + CE(learn slice)), two forward passes."""
    loss = ctx.loss(ctx.unlearn_x[task][x1:x2], ctx.unlearn_y[task][x1:x2], task)
    loss = -scale * (loss + ctx.loss(ctx.learn_x[task][x1:x2], ctx.learn_y[task][x1:x2], task))
    ctx.last_loss = loss.detach()
    return loss


def _rl_loss(ctx: Ctx, task: int, x1: int, x2: int, scale: float, data_task: int, learn_first: bool) -> torch.Tensor:
    """sum-loss with random labels: rl-tensor-shuffle of the forgotten task's slice labels,
    data from ``data_task``'s buffers (rl-leaked-task), in rl-label-order."""
    parts = [("learn", ctx.learn_x, ctx.learn_y), ("unlearn", ctx.unlearn_x, ctx.unlearn_y)]
    if not learn_first:
        parts.reverse()
    loss = None
    for _, xs, ys in parts:
        labs = tensor_shuffle(ys[task][x1:x2].clone(), ctx.rng)
        term = ctx.loss(xs[data_task][x1:x2], labs, task)
        loss = term if loss is None else loss + term
    loss = scale * loss
    ctx.last_loss = loss.detach()
    return loss


def _conflict(g: torch.Tensor, refs: dict[int, torch.Tensor], retained: list[int]) -> bool:
    return conflicts(g, [refs[j] for j in retained])


def unlearn_step(ctx: Ctx, algo: str, task: int, x1: int, x2: int, cfg: dict, mask: torch.Tensor | None):
    """One iteration of ``Net.unlearn(algo)`` on the slices [x1:x2] (two SGD steps for
    neggem: neggem-plus-rl). Returns (mask, updates applied)."""
    lr = cfg["unlearning_rate"]
    s = cfg["forget_loss_scale"]
    margin = cfg["unlearn_mem_strength"]
    strength = cfg.get("salun_strength")
    retained = [j for j in ctx.observed if j != task]
    qp_rows = sorted(retained)  # qp-order
    updates = []

    def salun(g, mask):
        return salun_apply(g, strength, mask) if strength else (g, mask)

    def finish(upd):
        ctx.step(upd, lr)
        updates.append(upd)

    if algo in ("neggem", "alt-neggem", "neggrad"):
        refs = _ref_pass(ctx, task, x1, x2, "slice")
        if algo != "neggrad":
            ctx.zero_grad()
        _neg_loss(ctx, task, x1, x2, s).backward()
        raw = ctx.flat_grad()
        if algo == "neggrad":  # neggrad-accumulate, neggrad-formula
            g, mask = salun(raw, mask)
            finish(neggrad_combine(g, [refs[j] for j in qp_rows], cfg["alpha"]))
        elif algo == "neggem":
            g, mask = salun(raw, mask)  # salun-order: before the conflict test
            upd = raw  # salun-only-projected
            if _conflict(g, refs, retained):
                upd = gem_project(g, [refs[j] for j in qp_rows], margin)
                ctx.projections += 1
            finish(upd)
            # neggem-plus-rl: an RL step right after, fresh reference gradients
            refs = _ref_pass(ctx, task, x1, x2, "skip")
            ctx.zero_grad()
            _rl_loss(ctx, task, x1, x2, s, ctx.observed[-1], learn_first=True).backward()
            raw = ctx.flat_grad()
            hit = _conflict(raw, refs, retained)  # salun-order: after the test
            g, mask = salun(raw, mask)
            upd = raw
            if hit:
                upd = gem_project(g, [refs[j] for j in qp_rows], margin)
                ctx.projections += 1
            finish(upd)
        else:  # alt-neggem
            rows = {**refs, task: raw}  # alt-constraints: g_f's column before the mask
            upd = raw
            if _conflict(raw, refs, retained):
                g, mask = salun(raw, mask)
                upd = gem_project(g, [rows[j] for j in sorted(ctx.observed)], margin)
                ctx.projections += 1
            finish(upd)
    elif algo in ("negagem", "rl-gem", "rl-agem"):
        refs = _ref_pass(ctx, task, x1, x2, "skip", labels="unlearn" if algo == "negagem" else "learn")
        ctx.zero_grad()
        if algo == "negagem":
            _neg_loss(ctx, task, x1, x2, s).backward()
        elif algo == "rl-gem":
            _rl_loss(ctx, task, x1, x2, s, ctx.observed[-1], learn_first=True).backward()
        else:
            _rl_loss(ctx, task, x1, x2, s, task, learn_first=False).backward()
        raw = ctx.flat_grad()
        if algo == "rl-gem":
            g, mask = salun(raw, mask)
            hit = _conflict(g, refs, retained)
        else:
            hit = _conflict(raw, refs, retained)
            g, mask = salun(raw, mask)
        upd = raw
        if hit:
            rows = [refs[j] for j in qp_rows]
            upd = gem_project(g, rows, margin) if algo == "rl-gem" else agem_project(g, rows)
            ctx.projections += 1
        finish(upd)
    else:
        raise UsageError(f"--profile thesis has no unlearning algorithm {algo!r}")
    return mask, updates


@torch.no_grad()
def train_mode_accuracy(ctx: Ctx, x: torch.Tensor, y: torch.Tensor, task: int) -> float:
    """stop-train-mode: accuracy of ``x`` in train mode (batch statistics; the running
    statistics move), in chunks of min(1000, n) as the reference's check."""
    n = len(x)
    chunk = min(EVAL_CHUNK, n)
    correct = 0
    for k in range(0, n, chunk):
        logits = ctx.model(x[k : k + chunk])
        idx = ctx.classes[task].reshape(1, -1).expand(logits.shape[0], -1)
        pred = torch.gather(logits, 1, idx).argmax(1)
        correct += int((pred == y[k : k + chunk]).sum())
    return correct / n


__all__ = [
    "PROFILES", "QUIRKS", "STOP_CUTOFF", "UNLEARNING_RATE", "FORGET_SCALE", "AGEM_RUNS", "AGEM_RUN_LEARN",
    "THESIS_CIFAR100_U", "is_thesis", "check_supported", "learn_options", "unlearn_rule_defaults", "op_random",
    "raw_pixels", "position_scores", "select_positions", "tensor_shuffle", "gem_project", "agem_project",
    "neggrad_combine", "salun_apply", "Ctx", "learn_step", "unlearn_step", "train_mode_accuracy",
]
