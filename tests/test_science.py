"""The science of SPEC §2-5 and §7, checked against INDEPENDENT computations.

Every expected value here is recomputed from first principles -- the dataset, the buffer
indices and the model's weights at the moment of a step -- with plain ``torch.autograd``,
``quadprog`` called directly and hand-written metric formulas, never from the engine's own
intermediate values. The engine is only observed through its outputs: the update ``x`` and
the forget labels passed to ``unlearn_task``'s ``step_hook``, the SalUn mask, the summary,
the buffers it writes and the weights before/after each learning step (read through a
forward pre-hook on the model, which fires at the current batch's forward pass, before
the step's update).

The forget task's learn and unlearn buffers here are set by hand: DISTINCT, of different
sizes and partly overlapping, so that "the unlearn buffer only", "the learn buffer only"
and "the union" give different answers (with ``first``/``same`` buffers they coincide and
such mistakes go unseen).

The model is the MLP (no BatchNorm, no dropout): train and eval mode agree and the
reference-gradient passes change nothing but ``.grad``, so the weights seen by a step hook
are exactly the weights the step's gradients were taken at, whatever the order of the
engine's passes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
import quadprog
import torch
import torch.nn.functional as F

from cluctl.engine import learn_task, new_state, run_config, unlearn_task
from cluctl.metrics import acc_bwt, clu_mix, final_metrics, forget_retain, tow
from cluctl.unlearning import random_labels

from conftest import clone_state

EPS = 1e-3  # the QP regulariser of SPEC §4
# float32 inputs: the engine's reference gradients (grouped fast path) and ours (plain
# autograd) agree to ~1e-7 relative; the projected update inherits that.
GRAD_RTOL = 1e-5
X_RTOL = 1e-5
# A learning step's update is recovered from float32 weights, x = (w_k - w_{k+1}) / lr; the
# rounding of w_{k+1} (up to an ulp, 1.2e-7 |w|, per entry) adds up to 1.2e-7 ||w|| / lr to
# ||x||; measured: 2.4e-5 ||x|| at most. The mutations these tests target move x by >= 1e-2.
F32_EPS = float(torch.finfo(torch.float32).eps)

BASE = dict(dataset="digits", model="mlp", width=32, epochs=1, memories=32,
            learn_buffer_type="random", unlearn_buffer_type="random", seed=0)
FORGET = 2  # task forgotten in the unlearning tests; tasks 0 and 1 are retained


# ---------------------------------------------------------------- independent helpers


def _state(**kw):
    return new_state(run_config(**{**BASE, **kw}), device="cpu")


def _classes(st, t):
    """Task t's classes, from the class order and SPEC §1's rule (order[t*k:(t+1)*k])."""
    k = st.dataset.num_classes // st.n_tasks
    return [int(c) for c in st.class_order[t * k:(t + 1) * k]]


def _task_idx(st, t):
    y = st.dataset.y_train.numpy()
    return np.flatnonzero(np.isin(y, _classes(st, t)))


def _xy(st, t, idx):
    """Inputs and masked targets (position of the label among the task's classes)."""
    cls = _classes(st, t)
    idx = torch.as_tensor(np.asarray(idx, dtype=np.int64))
    y = torch.tensor([cls.index(int(c)) for c in st.dataset.y_train[idx]])
    return st.dataset.x_train[idx], y, cls


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in _params(model)]).clone()


def _grad(model, x, y, cls, scale=1.0):
    """Flat gradient of scale * (mean cross-entropy over the task's logits)."""
    with torch.enable_grad():
        logits = model(x)[:, cls]
        loss = scale * F.cross_entropy(logits, y)
        gs = torch.autograd.grad(loss, _params(model))
    return torch.cat([g.reshape(-1) for g in gs]).detach()


def _ref_grads(st, model, tasks, buffers):
    """Row j: gradient of the loss on task j's whole learn buffer (SPEC §2)."""
    rows = []
    for j in tasks:
        x, y, cls = _xy(st, j, buffers[j]["learn"]["indices"])
        rows.append(_grad(model, x, y, cls))
    return torch.stack(rows)


def _gem_expected(g, G, margin):
    """SPEC §4 solved here: min_v 1/2 v^T (G G^T + eps I) v + (G g)^T v s.t. v >= margin,
    with quadprog called directly (float64); x = g + G^T v."""
    G64, g64 = G.double().numpy(), g.double().numpy()
    t = G64.shape[0]
    # quadprog: min 1/2 v^T P v - a^T v  s.t.  C^T v >= b
    v = quadprog.solve_qp(G64 @ G64.T + EPS * np.eye(t), -(G64 @ g64), np.eye(t), np.full(t, float(margin)))[0]
    return torch.from_numpy(g64 + G64.T @ v), v


def _check_gem_kkt(x, g, G, margin):
    """The optimality conditions of SPEC §4 derived from x alone: x - g = G^T v for some
    v (least squares), v >= margin, lambda = G x + eps v >= 0, and lambda_j (v_j - margin)
    = 0 (complementary slackness). These pin down the QP's unique solution."""
    G64, x64, g64 = G.double().numpy(), x.double().numpy(), g.double().numpy()
    v, *_ = np.linalg.lstsq(G64.T, x64 - g64, rcond=None)
    scale = float(np.linalg.norm(x64)) * np.linalg.norm(G64, axis=1)
    resid = np.linalg.norm(G64.T @ v - (x64 - g64))
    assert resid <= 1e-4 * np.linalg.norm(x64), resid
    vtol = 1e-3 * max(1.0, float(np.abs(v).max()))
    assert np.all(v >= margin - vtol), (v, margin)
    lam = G64 @ x64 + EPS * v
    assert np.all(lam >= -1e-4 * scale), (lam, scale)
    slack = np.minimum(np.abs(lam) / scale, np.abs(v - margin) / max(1.0, margin))
    assert np.all(slack <= 1e-3), (lam, v, margin)


def _agem_expected(g, ref):
    g64, r64 = g.double(), ref.double()
    dot = float(g64 @ r64)
    if dot >= 0:
        return g64, False
    return g64 - dot / float(r64 @ r64) * r64, True


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _ambiguous(Gg, g, G):
    """A constraint so close to the boundary that float rounding may decide it."""
    return bool((Gg.abs() <= 1e-5 * g.norm() * G.norm(dim=1)).any())


def _accuracy(model, st, t, idx):
    """Eval-mode accuracy over the given sample indices (each counted once)."""
    x, y, cls = _xy(st, t, sorted(set(int(i) for i in idx)))
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = model(x)[:, cls].argmax(1)
    model.train(was)
    return float((pred == y).double().mean())


def _correct(model, st, t, idx):
    x, y, cls = _xy(st, t, idx)
    model.eval()
    with torch.no_grad():
        ok = (model(x)[:, cls].argmax(1) == y).numpy()
    model.train()
    return ok


# ---------------------------------------------------------------- fixtures


def _clone(st):
    """conftest's clone_state, plus a copy of every other list/dict field it leaves shared
    (e.g. the options given along the lineage, which an unlearning request extends), so
    that no test sees another's options."""
    new = clone_state(st)
    for f in dataclasses.fields(st):
        v = getattr(new, f.name)
        if isinstance(v, (dict, list)) and v is getattr(st, f.name):
            setattr(new, f.name, copy.deepcopy(v))
    return new


@pytest.fixture(scope="module")
def learned3():
    """Tasks 0, 1, 2 learned with GEM, random (distinct) learn and unlearn buffers."""
    st = _state()
    for t in range(3):
        learn_task(st, t)
    for t in range(3):
        assert st.buffers[t]["learn"]["indices"] != st.buffers[t]["unlearn"]["indices"]
    return st


def _set_forget_buffers(st, unlearn, learn):
    st.buffers[FORGET] = {
        "learn": {**st.buffers[FORGET]["learn"], "indices": [int(i) for i in learn]},
        "unlearn": {**st.buffers[FORGET]["unlearn"], "indices": [int(i) for i in unlearn]},
    }


def _distinct_buffers(st):
    """Unlearn buffer of 24, learn buffer of 30, 8 samples in common (different sizes make
    the two cycles wrap at different steps)."""
    perm = np.random.default_rng(7).permutation(_task_idx(st, FORGET))
    unlearn, learn = perm[:24], perm[16:46]
    _set_forget_buffers(st, unlearn, learn)
    return [int(i) for i in unlearn], [int(i) for i in learn]


# ---------------------------------------------------------------- unlearning, step by step

ALGOS = ["neggem", "rl-gem", "alt-neggem", "negagem", "rl-agem", "neggrad"]


def _run_unlearn(st, ucfg, unlearn, learn, extra=None):
    """Unlearn FORGET with a hook that recomputes each step independently; returns the
    summary and one record per step."""
    model = st.model
    b = ucfg["unlearn_batch_size"]
    s = ucfg["forget_loss_scale"]
    retained = [j for j in st.learned if j != FORGET]
    buffers = {j: st.buffers[j] for j in retained}
    recs = []

    def hook(info):
        k = len(recs)
        iu = [unlearn[(k * b + i) % len(unlearn)] for i in range(b)]
        il = [learn[(k * b + i) % len(learn)] for i in range(b)]
        x_f, y_true, cls = _xy(st, FORGET, iu + il)
        rec = {"x": info["x"].detach().clone(), "forget_y": info["forget_y"].detach().clone(),
               "y_true": y_true, "mask": None if info["mask"] is None else info["mask"].clone(),
               "g_f_engine": info["g_f"].detach().clone(), "w": _flat(model),
               "union_acc": _accuracy(model, st, FORGET, unlearn + learn),
               "G": _ref_grads(st, model, retained, buffers)}
        if ucfg["algo"].startswith("rl-"):
            # SPEC §3: each label drawn from its task's OTHER k-1 classes; digits has k = 2,
            # so the random label is the other class
            y_forget = 1 - y_true
            rec["g_f"] = _grad(model, x_f, y_forget, cls, scale=s)
        else:
            rec["g_f"] = _grad(model, x_f, y_true, cls, scale=-s)
        if extra:
            extra(rec, info, k)
        recs.append(rec)

    summary = unlearn_task(st, FORGET, ucfg, step_hook=hook)
    assert summary["steps"] == len(recs)
    return summary, recs


def _expected_update(algo, g_f, G, ucfg):
    """(expected x, projected?) for one step, from SPEC §3/§4; None if ambiguous."""
    Gg = G.double() @ g_f.double()
    if algo in ("neggem", "rl-gem"):
        if _ambiguous(Gg, g_f, G):
            return None
        if bool((Gg < 0).any()):
            return _gem_expected(g_f, G, ucfg["unlearn_mem_strength"])[0], True
        return g_f.double(), False
    if algo == "alt-neggem":
        if _ambiguous(Gg, g_f, G):
            return None
        if bool((Gg < 0).any()):
            return _gem_expected(g_f, torch.cat([G, g_f[None]]), ucfg["unlearn_mem_strength"])[0], True
        return g_f.double(), False
    if algo in ("negagem", "rl-agem"):
        ref = G.double().mean(0)
        if abs(float(ref @ g_f.double())) <= 1e-5 * float(ref.norm() * g_f.norm()):
            return None
        return _agem_expected(g_f, ref)
    if algo == "neggrad":
        a = ucfg["alpha"]
        return a * G.double().mean(0) + (1 - a) * g_f.double(), False
    raise AssertionError(algo)


@pytest.mark.parametrize("algo", ALGOS)
def test_unlearning_steps_match_independent_computation(learned3, algo):
    """Every step: the forget batch (next b of the unlearn buffer AND next b of the learn
    buffer, cycling), the scaled forget loss, the reference set (retained tasks only) and
    the projection with margin = unlearn memory strength, all recomputed here."""
    st = _clone(learned3)
    unlearn, learn = _distinct_buffers(st)
    ucfg = {"algo": algo, "unlearning_rate": 0.01, "forget_loss_scale": 2.0, "unlearn_batch_size": 10,
            "unlearn_mem_strength": 0.5, "alpha": 0.3, "stop_acc": 0.0, "max_epochs": 2}
    summary, recs = _run_unlearn(st, ucfg, unlearn, learn)
    # 2 passes of ceil(24 / 10) = 3 steps: the unlearn cycle wraps inside step 2 (positions
    # 20..29 mod 24), the learn cycle restarts at step 3 (30 mod 30 = 0)
    assert len(recs) >= 4, summary
    checked = projected = 0
    for k, r in enumerate(recs):
        # the reference set is the retained tasks only, each on its whole learn buffer
        assert r["G"].shape == (2, r["g_f"].numel())
        if algo.startswith("rl-"):
            assert torch.equal(r["forget_y"], 1 - r["y_true"]), k
        # the engine's forget gradient is the one of the SPEC's forget batch and loss
        assert _rel(r["g_f_engine"], r["g_f"]) <= GRAD_RTOL, (k, _rel(r["g_f_engine"], r["g_f"]))
        exp = _expected_update(algo, r["g_f"], r["G"], ucfg)
        if exp is None:
            continue
        x_exp, proj = exp
        checked += 1
        projected += proj
        assert _rel(r["x"], x_exp) <= X_RTOL, (k, proj, _rel(r["x"], x_exp))
        if algo in ("neggem", "rl-gem") and proj:
            _check_gem_kkt(r["x"], r["g_f"], r["G"], ucfg["unlearn_mem_strength"])
        if not proj and algo != "neggrad":
            # not projected (no constraint violated): x is g_f itself
            assert _rel(r["x"], r["g_f"]) <= GRAD_RTOL, k
    assert checked >= len(recs) - 1
    if algo != "neggrad":
        assert projected > 0, f"{algo}: no projected step was exercised"


def test_forget_batch_cycles_both_buffers(learned3):
    """SPEC §3: the forget batch of step k is unlearn[(kb..kb+b-1) mod n_u] plus
    learn[(kb..kb+b-1) mod n_l]; checked against gradients of the alternatives."""
    st = _clone(learned3)
    unlearn, learn = _distinct_buffers(st)
    ucfg = {"algo": "neggem", "unlearning_rate": 0.01, "forget_loss_scale": 3.0, "unlearn_batch_size": 7,
            "unlearn_mem_strength": 0.5, "stop_acc": 0.0, "max_epochs": 2}

    def wrong(rec, info, k):  # the unlearn-buffer-only batch of the same step, for contrast
        iu = [unlearn[(k * 7 + i) % len(unlearn)] for i in range(14)]
        x, y, cls = _xy(st, FORGET, iu)
        rec["g_u_only"] = _grad(st.model, x, y, cls, scale=-3.0)

    _, recs = _run_unlearn(st, ucfg, unlearn, learn, extra=wrong)
    assert len(recs) >= 5  # the unlearn cycle wraps at step 3, the learn cycle at step 4
    for k, r in enumerate(recs):
        assert _rel(r["g_f_engine"], r["g_f"]) <= GRAD_RTOL, k
        assert _rel(r["g_u_only"], r["g_f"]) > 1e-2  # the check above can tell them apart


def test_forget_loss_scale_scales_the_forget_gradient(learned3):
    """g_f for s = 4 is 4x the gradient of -CE(forget batch) (ascent), recomputed here."""
    st = _clone(learned3)
    unlearn, learn = _distinct_buffers(st)
    ucfg = {"algo": "negagem", "unlearning_rate": 0.005, "forget_loss_scale": 4.0, "unlearn_batch_size": 10,
            "stop_acc": 0.0, "max_epochs": 1}
    _, recs = _run_unlearn(st, ucfg, unlearn, learn)
    assert recs
    for k, r in enumerate(recs):
        unit = r["g_f"] / 4.0  # the hook computed it with scale -4: the unit ascent gradient
        assert _rel(r["g_f_engine"], 4.0 * unit) <= GRAD_RTOL, k
        assert _rel(r["g_f_engine"], unit) > 1.0


# ---------------------------------------------------------------- the stop rule


def _stop_rule_buffers(st):
    """Learn buffer: 30 samples the model gets right; unlearn buffer: 12 it gets wrong and
    12 it gets right, those 12 also in the learn buffer. At the start: learn acc 1, unlearn
    acc 0.5, union (42 distinct samples) 30/42 = 0.714, both buffers counted with repeats
    42/54 = 0.778."""
    idx = np.random.default_rng(3).permutation(_task_idx(st, FORGET))
    ok = _correct(st.model, st, FORGET, idx)
    right, wrong = idx[ok], idx[~ok]
    assert len(right) >= 30 and len(wrong) >= 12
    learn = [int(i) for i in right[:30]]
    unlearn = [int(i) for i in np.concatenate([wrong[:12], right[:12]])]
    unlearn = [unlearn[i] for i in np.random.default_rng(4).permutation(24)]
    _set_forget_buffers(st, unlearn, learn)
    return unlearn, learn


def test_stop_rule_is_measured_on_the_union_of_both_buffers(learned3):
    """stop_acc 0.74 lies between the union's 0.714 and the 0.778 of the two buffers
    counted with repeats, above the unlearn buffer's 0.5 and below the learn buffer's 1.0:
    only the union (each sample once) stops at once, reporting 30/42."""
    st = _clone(learned3)
    unlearn, learn = _stop_rule_buffers(st)
    w0 = _flat(st.model)
    assert _accuracy(st.model, st, FORGET, unlearn + learn) == pytest.approx(30 / 42)
    s = unlearn_task(st, FORGET, {"algo": "neggem", "unlearning_rate": 0.01, "stop_acc": 0.74, "max_epochs": 2})
    assert s["steps"] == 0 and s["stopped"] == "stop-acc"
    assert s["final_forget_acc"] == pytest.approx(30 / 42, abs=1e-6)
    assert torch.equal(_flat(st.model), w0)


def test_stop_rule_checked_before_every_step(learned3):
    """stop_acc 0.6: above the unlearn buffer's 0.5 but below the union's 0.714, so
    unlearning must take steps; before each, the union accuracy (recomputed here in eval
    mode) is above the stop accuracy; the reported final accuracy is the union's."""
    st = _clone(learned3)
    unlearn, learn = _stop_rule_buffers(st)
    ucfg = {"algo": "neggem", "unlearning_rate": 0.01, "forget_loss_scale": 5.0, "unlearn_batch_size": 10,
            "unlearn_mem_strength": 0.5, "stop_acc": 0.6, "max_epochs": 2}
    s, recs = _run_unlearn(st, ucfg, unlearn, learn)
    assert len(recs) >= 1
    for r in recs:
        assert r["union_acc"] > 0.6
    final = _accuracy(st.model, st, FORGET, unlearn + learn)
    assert s["final_forget_acc"] == pytest.approx(final, abs=1e-6)
    if s["stopped"] == "stop-acc":
        assert final <= 0.6
    else:
        assert s["stopped"] == "max-epochs" and len(recs) == 2 * math.ceil(24 / 10)


# ---------------------------------------------------------------- SalUn


def _salun_expected(st, model, unlearn, strength):
    """|gradient of CE (true labels) over the WHOLE unlearn buffer|, top `strength` of all
    entries with one global threshold. Returns (|g|, threshold)."""
    x, y, cls = _xy(st, FORGET, unlearn)
    a = _grad(model, x, y, cls).abs()
    n_keep = math.ceil(strength * a.numel())
    thr = torch.sort(a, descending=True).values[n_keep - 1]
    return a, float(thr)


def _check_mask(mask, a, thr, strength):
    mine = (a >= thr).to(mask.dtype)
    near = (a - thr).abs() <= 1e-5 * thr  # entries float rounding may put either side
    assert bool((mask[~near] == mine[~near]).all()), int((mask != mine).sum())
    assert abs(float(mask.sum()) - math.ceil(strength * a.numel())) <= int(near.sum()) + 1


@pytest.mark.parametrize("mode", ["gradient", "update"])
def test_salun_mask_and_its_use(learned3, mode):
    """SalUn (SPEC §3): the mask is the top 10 % of |gradient of CE| over the WHOLE unlearn
    buffer at the start of the request (one global threshold, recomputed here); ``gradient``
    masks g_f before the projection, ``update`` masks the projected update instead."""
    st = _clone(learned3)
    unlearn, learn = _distinct_buffers(st)
    a, thr = _salun_expected(st, st.model, unlearn, 0.1)
    assert thr > 0
    ucfg = {"algo": "neggem", "unlearning_rate": 0.01, "forget_loss_scale": 2.0, "unlearn_batch_size": 10,
            "unlearn_mem_strength": 0.5, "stop_acc": 0.0, "max_epochs": 1,
            "salun_strength": 0.1, "salun_on": mode}
    w_before = []
    s, recs = _run_unlearn(st, ucfg, unlearn, learn, extra=lambda rec, info, k: w_before.append(rec["w"]))
    assert len(recs) >= 2
    mask = recs[0]["mask"]
    _check_mask(mask, a, thr, 0.1)
    w_after = w_before[1:] + [_flat(st.model)]
    projected = 0
    for k, r in enumerate(recs):
        assert torch.equal(r["mask"], mask)  # computed once, at the start of the request
        G, g_f = r["G"], r["g_f"]
        if mode == "gradient":
            # the forget gradient is masked BEFORE the projection
            g_in = g_f * mask
            assert _rel(r["g_f_engine"], g_in) <= GRAD_RTOL, k
        else:
            g_in = g_f
            assert _rel(r["g_f_engine"], g_f) <= GRAD_RTOL, k
        Gg = G.double() @ g_in.double()
        if _ambiguous(Gg, g_in, G):
            continue
        proj = bool((Gg < 0).any())
        projected += proj
        x_exp = _gem_expected(g_in, G, 0.5)[0] if proj else g_in.double()
        if mode == "update":
            # the final update is masked: masked weights never move
            x_exp = x_exp * mask.double()
            assert torch.equal(w_after[k][mask == 0], w_before[k][mask == 0])
        elif proj:
            # the projection may still move masked weights
            assert bool((r["x"][mask == 0] != 0).any())
        assert _rel(r["x"], x_exp) <= X_RTOL, (k, _rel(r["x"], x_exp))
    assert projected > 0


# ---------------------------------------------------------------- learning, step by step


class _StepRecorder:
    """Records, at each current-batch forward pass of a learn operation (train mode, at
    most batch_size samples: the reference passes use whole buffers of 32), the input and
    the weights then. The weights after step k are the weights at step k+1's pass."""

    def __init__(self, model, batch_size):
        self.model, self.bs = model, batch_size
        self.inputs, self.weights = [], []
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        x = args[0]
        if module.training and x.shape[0] <= self.bs and not torch.is_inference_mode_enabled():
            self.inputs.append(x.detach().clone())
            self.weights.append(_flat(module))

    def close(self):
        self.handle.remove()


def _row_index(st, t):
    """Image bytes -> the task's dataset indices with that image."""
    out = {}
    for i in _task_idx(st, t):
        out.setdefault(st.dataset.x_train[i].numpy().tobytes(), []).append(int(i))
    return out


def _batch_targets(st, t, x, rows):
    cls = _classes(st, t)
    ys = []
    for r in x:
        cands = rows[r.numpy().tobytes()]
        labels = {cls.index(int(st.dataset.y_train[i])) for i in cands}
        assert len(labels) == 1
        ys.append(labels.pop())
    return torch.tensor(ys), cls


@pytest.mark.parametrize("algo,task", [("gem", 3), ("gem", 1), ("agem", 3), ("naive", 3)])
def test_learning_steps_match_independent_computation(learned3, algo, task):
    """Each learning step's update, recovered from the weights before and after it, is the
    SPEC §2 update of the batch's gradient: GEM projection (margin = learn memory strength)
    against the OTHER learned tasks' learn-buffer gradients when some <g, g_j> < 0, else g
    itself; A-GEM against their mean; naive: g. ``task`` 1 is a relearn: its own buffer is
    not a reference."""
    st = _clone(learned3)
    st.config.update(learn_algo=algo, mem_strength=0.5)
    lr = st.config["lr"]
    retained = [j for j in st.learned if j != task]
    buffers = {j: {"learn": dict(st.buffers[j]["learn"])} for j in retained}
    rec = _StepRecorder(st.model, st.config["batch_size"])
    try:
        summary = learn_task(st, task)
    finally:
        rec.close()
    assert summary["steps"] == len(rec.inputs) > 10
    weights = rec.weights + [_flat(st.model)]
    rows = _row_index(st, task)
    model = _clone(learned3).model
    n_proj = n_free = 0
    for k, xb in enumerate(rec.inputs):
        torch.nn.utils.vector_to_parameters(weights[k], _params(model))
        y, cls = _batch_targets(st, task, xb, rows)
        g = _grad(model, xb, y, cls)
        x_obs = (weights[k] - weights[k + 1]) / lr
        if algo == "naive":
            x_exp, proj = g.double(), False
        else:
            G = _ref_grads(st, model, retained, buffers)
            Gg = G.double() @ g.double()
            if algo == "gem":
                if _ambiguous(Gg, g, G):
                    continue
                proj = bool((Gg < 0).any())
                x_exp = _gem_expected(g, G, 0.5)[0] if proj else g.double()
            else:
                ref = G.double().mean(0)
                if abs(float(ref @ g.double())) <= 1e-5 * float(ref.norm() * g.norm()):
                    continue
                x_exp, proj = _agem_expected(g, ref)
        n_proj += proj
        n_free += not proj
        err = float((x_obs.double() - x_exp).norm())
        allowed = X_RTOL * float(x_exp.norm()) + 2 * F32_EPS * float(weights[k + 1].double().norm()) / lr
        assert err <= allowed, (k, proj, err, allowed)
    if algo != "naive":
        assert n_proj > 0 and n_free > 0, (n_proj, n_free)


def test_first_learn_buffer_is_the_first_samples_seen():
    """Learn buffer type ``first`` (SPEC §5): the first n samples of the first epoch, in
    the order the training loop met them (recorded from the model's inputs)."""
    st = _state(learn_buffer_type="first", unlearn_buffer_type="random", epochs=2, learn_algo="naive")
    rec = _StepRecorder(st.model, st.config["batch_size"])
    try:
        learn_task(st, 0)
    finally:
        rec.close()
    seen = torch.cat(rec.inputs)[:32]
    buf = st.buffers[0]["learn"]["indices"]
    assert len(buf) == 32
    key = lambda t: [r.numpy().tobytes() for r in t]  # noqa: E731
    assert Counter(key(seen)) == Counter(key(st.dataset.x_train[torch.tensor(buf)]))
    unl = st.buffers[0]["unlearn"]["indices"]
    assert len(set(unl)) == 32 and set(unl) <= set(_task_idx(st, 0).tolist()) and unl != buf


def test_ranked_buffers_by_hand():
    """``least`` / ``most`` with given scores (SPEC §5): the round(split * n) lowest /
    highest scored samples of the task are in the buffer, the rest are other samples of
    the task, no duplicates."""
    n_train = len(_state().dataset.y_train)
    scores = np.random.default_rng(11).permutation(n_train).astype(np.float64) / n_train  # no ties
    st = _state(learn_buffer_type="least", learn_buffer_split=0.5, unlearn_buffer_type="most",
                unlearn_buffer_split=0.25, learn_algo="naive")
    learn_task(st, 1, scores_fn=lambda _s: (scores, None))
    idx = _task_idx(st, 1)
    by_score = idx[np.argsort(scores[idx], kind="stable")]
    learn, unlearn = st.buffers[1]["learn"]["indices"], st.buffers[1]["unlearn"]["indices"]
    for buf, top, name in ((learn, by_score[:16], "least"), (unlearn, by_score[::-1][:8], "most")):
        assert len(buf) == len(set(buf)) == 32, name
        assert set(buf) <= set(idx.tolist()), name
        assert set(top.tolist()) <= set(buf), name
    # the rest is not simply the next-ranked samples
    assert set(learn) != set(by_score[:32].tolist())
    assert set(unlearn) != set(by_score[::-1][:32].tolist())


# ---------------------------------------------------------------- random labels


def test_random_labels_uniform_over_the_other_classes():
    """Each label drawn uniformly from the task's other k-1 classes (k = 2 and 5)."""
    gen = torch.Generator().manual_seed(5)
    y2 = torch.randint(0, 2, (200,), generator=gen)
    assert torch.equal(random_labels(y2, 2, gen), 1 - y2)
    k, n = 5, 40_000
    y = torch.randint(0, k, (n,), generator=gen)
    r = random_labels(y, k, gen)
    assert bool((r != y).all()) and int(r.min()) >= 0 and int(r.max()) <= k - 1
    for c in range(k):
        counts = torch.bincount(r[y == c], minlength=k).double()
        assert counts[c] == 0
        others = counts[torch.arange(k) != c]
        # ~2000 per cell: a 5-sigma band (sd ~ 39) fails far less than 1 in 1000
        assert float((others - others.mean()).abs().max()) < 5 * math.sqrt(others.mean() * 0.75), counts


def test_rl_unlearning_uses_other_class_labels(learned3):
    """rl-gem: every forget label differs from the true one (k = 2: the other class)."""
    st = _clone(learned3)
    unlearn, learn = _distinct_buffers(st)
    ucfg = {"algo": "rl-gem", "unlearning_rate": 0.03, "forget_loss_scale": 1.0, "unlearn_batch_size": 10,
            "unlearn_mem_strength": 0.5, "stop_acc": 0.0, "max_epochs": 1}
    _, recs = _run_unlearn(st, ucfg, unlearn, learn)
    assert recs
    for r in recs:
        assert bool((r["forget_y"] != r["y_true"]).all())
        assert _rel(r["g_f_engine"], r["g_f"]) <= GRAD_RTOL


# ---------------------------------------------------------------- metrics (SPEC §7)

# A 3-task run with every train accuracy different from its test accuracy, so that a
# metric reading the wrong matrix (or row) gives a different number.
OPS = ["L0", "L1", "L2", "U2", "U1", "L1"]
TRAIN = np.array([
    [0.91, 0.52, 0.47],
    [0.86, 0.97, 0.44],
    [0.83, 0.93, 0.99],
    [0.88, 0.90, 0.31],
    [0.84, 0.62, 0.58],
    [0.80, 0.95, 0.52],
])
TEST = np.array([
    [0.81, 0.40, 0.55],
    [0.72, 0.88, 0.41],
    [0.69, 0.79, 0.93],
    [0.71, 0.66, 0.36],
    [0.77, 0.45, 0.63],
    [0.70, 0.86, 0.49],
])


def _status(ops, n):
    cur, rows = ["unseen"] * n, []
    for op in ops:
        cur[int(op[1:])] = "learned" if op[0] == "L" else "forgotten"
        rows.append(list(cur))
    return rows


def _ref_tow(ops, tr, te):
    st = _status(ops, tr.shape[1])
    out = []
    for i in range(len(ops)):
        ret = [t for t, s in enumerate(st[i]) if s == "learned"]
        fgt = [t for t, s in enumerate(st[i]) if s == "forgotten"]
        cands = [r for r in range(i) if all(o[0] == "L" for o in ops[:r + 1])
                 and [t for t, s in enumerate(st[r]) if s == "learned"] == ret]
        if not cands:
            out.append(None)
            continue
        r = cands[-1]
        d_s = np.mean([abs(tr[i, t] - tr[r, t]) for t in fgt]) if fgt else 0.0
        d_r = np.mean([abs(tr[i, t] - tr[r, t]) for t in ret]) if ret else 0.0
        d_t = abs(np.mean([te[i, t] for t in ret]) - np.mean([te[r, t] for t in ret])) if ret else 0.0
        out.append((1 - d_s) * (1 - d_r) * (1 - d_t))
    return out


def _ref_clu(ops, tr, k, beta=0.2):
    st = _status(ops, tr.shape[1])
    anchor, out = {}, []
    for i, op in enumerate(ops):
        t = int(op[1:])
        if op[0] == "L" and t not in anchor:
            anchor[t] = tr[i, t]
        R = [u for u, s in enumerate(st[i]) if s == "learned"]
        S = [u for u, s in enumerate(st[i]) if s == "forgotten"]
        l_ret = np.mean([max(0.0, anchor[u] - tr[i, u]) for u in R]) if R else 0.0
        gain = np.mean([max(0.0, tr[i, u] - anchor[u]) for u in R]) if R else 0.0
        l_res = np.mean([max(0.0, tr[i, u] - 1.0 / k) for u in S]) if S else 0.0
        out.append(((1 - l_ret) * (1 - l_res) + beta * gain) / (1 + beta))
    return out


def test_tow_by_hand():
    # row 3 (U2) against row 1 ({0, 1} learned, nothing forgotten):
    #   dS = |0.31 - 0.44| = 0.13; dR = (|0.88-0.86| + |0.90-0.97|)/2 = 0.045
    #   dT = |(0.71+0.66)/2 - (0.72+0.88)/2| = |0.685 - 0.80| = 0.115  (test accuracies)
    # row 4 (U1) against row 0: dS = (|0.62-0.52| + |0.58-0.47|)/2 = 0.105,
    #   dR = |0.84-0.91| = 0.07, dT = |0.77-0.81| = 0.04
    # row 5 (L1): retained {0, 1} again -> row 1: dS = |0.52-0.44| = 0.08,
    #   dR = (|0.80-0.86| + |0.95-0.97|)/2 = 0.04, dT = |(0.70+0.86)/2 - 0.80| = 0.02
    vals = tow(OPS, TRAIN, TEST)
    assert vals[:3] == [None, None, None]
    assert vals[3] == pytest.approx(0.87 * 0.955 * 0.885, abs=1e-12)
    assert vals[4] == pytest.approx(0.895 * 0.93 * 0.96, abs=1e-12)
    assert vals[5] == pytest.approx(0.92 * 0.96 * 0.98, abs=1e-12)
    ref = _ref_tow(OPS, TRAIN, TEST)
    for a, b in zip(vals, ref):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-12)


def test_clu_mix_by_hand():
    # anchors (train acc right after the FIRST learn): a0 = 0.91, a1 = 0.97, a2 = 0.99
    # row 3 (U2): R = {0, 1}: L_ret = (0.03 + 0.07)/2 = 0.05, B = 0; S = {2}: L_res = 0.31-0.5 -> 0
    #   CLU = 0.95 / 1.2
    # row 4 (U1): R = {0}: L_ret = 0.07; S = {1, 2}: L_res = (0.12 + 0.08)/2 = 0.10
    #   CLU = 0.93 * 0.90 / 1.2
    # row 5 (L1): R = {0, 1}: L_ret = (0.11 + 0.02)/2 = 0.065, B = 0; S = {2}: L_res = 0.02
    #   CLU = 0.935 * 0.98 / 1.2
    vals = clu_mix(OPS, TRAIN, k=2)
    assert vals[3] == pytest.approx(0.95 / 1.2, abs=1e-12)
    assert vals[4] == pytest.approx(0.93 * 0.90 / 1.2, abs=1e-12)
    assert vals[5] == pytest.approx(0.935 * 0.98 / 1.2, abs=1e-12)
    # a gain: task 0's train acc rises above its anchor after L1 (0.95 > 0.91):
    # R = {0, 1}: L_ret = 0, B = (0.04 + 0)/2 = 0.02 -> CLU = (1 + 0.2 * 0.02)/1.2
    tr = TRAIN.copy()
    tr[1, 0] = 0.95
    assert clu_mix(OPS, tr, k=2)[1] == pytest.approx((1 + 0.2 * 0.02) / 1.2, abs=1e-12)
    for k in (2, 5):
        for a, b in zip(clu_mix(OPS, TRAIN, k=k), _ref_clu(OPS, TRAIN, k)):
            assert a == pytest.approx(b, abs=1e-12)


def test_acc_bwt_and_forget_retain_by_hand():
    # prefix L0 L1 L2 (rows 0-2): ACC = (0.69 + 0.79 + 0.93)/3; BWT over tasks 0, 1:
    #   ((0.69 - 0.81) + (0.79 - 0.88))/2 = -0.105
    acc, bwt = acc_bwt(OPS, TEST)
    assert acc == pytest.approx((0.69 + 0.79 + 0.93) / 3, abs=1e-12)
    assert bwt == pytest.approx(-0.105, abs=1e-12)
    f, r = forget_retain(OPS, TEST)
    assert f[:3] == [None] * 3 and f[3] == pytest.approx(0.36) and f[4] == pytest.approx((0.45 + 0.63) / 2)
    assert f[5] == pytest.approx(0.49)
    assert r[3] == pytest.approx((0.71 + 0.66) / 2) and r[4] == pytest.approx(0.77)
    assert r[5] == pytest.approx((0.70 + 0.86) / 2)
    fm = final_metrics(OPS, TEST, TRAIN, 2)
    assert fm["final_tow"] == pytest.approx(0.92 * 0.96 * 0.98, abs=1e-12)
    assert fm["final_forget_acc"] == pytest.approx(0.49) and fm["acc"] == pytest.approx(acc)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_spec_reimplementation_on_random_runs(seed):
    """A4 / C4-like sequences with random accuracies: ToW and CLU_mix agree with the
    formulas of SPEC §7 written out above; ACC/BWT with a direct reading of the prefix."""
    rng = np.random.default_rng(seed)
    n = 5
    seqs = [[f"L{t}" for t in range(n)] + [f"U{t}" for t in range(n - 1, 0, -1)],
            ["L0", "L1", "L2", "L3", "U3", "U2", "L4", "L2"]]
    for ops in seqs:
        tr, te = rng.uniform(0, 1, (len(ops), n)), rng.uniform(0, 1, (len(ops), n))
        for a, b in zip(tow(ops, tr, te), _ref_tow(ops, tr, te)):
            assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, abs=1e-12))
        for a, b in zip(clu_mix(ops, tr, k=2), _ref_clu(ops, tr, 2)):
            assert a == pytest.approx(b, abs=1e-12)
        p = next(i for i, o in enumerate(ops) if o[0] == "U")
        tasks = [int(o[1:]) for o in ops[:p]]
        acc, bwt = acc_bwt(ops, te)
        assert acc == pytest.approx(np.mean([te[p - 1, t] for t in tasks]), abs=1e-12)
        assert bwt == pytest.approx(np.mean([te[p - 1, t] - te[i, t] for i, t in enumerate(tasks[:-1])]), abs=1e-12)
