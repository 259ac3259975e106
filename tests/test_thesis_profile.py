"""The thesis profile (docs/thesis-profile.md): each named difference pinned by a hand-made
case, without the reference code (benchmarks/thesis_equivalence.py compares with it)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cluctl import engine as E
from cluctl import thesis as T
from cluctl.errors import UsageError
from cluctl.store import Store

# ---------------------------------------------------------------- math


def test_agem_sum_and_along_gref():
    # agem-sum: r = r1 + r2 = [-1, 1]; <g,r> = -1, <r,r> = 2 -> x = g + 0.5 r (the step does not
    # depend on r's scale: the mean gives the same x)
    g = torch.tensor([1.0, 0.0])
    x = T.agem_project(g, [torch.tensor([-1.0, 0.0]), torch.tensor([0.0, 1.0])])
    assert torch.allclose(x, torch.tensor([0.5, 0.5]))
    # agem-any-violation: g conflicts with r1 only; the sum [2, 0] does not conflict, and the
    # step moves *along* it: x = g + |2/4| [2, 0]
    g = torch.tensor([1.0, 0.2])
    x = T.agem_project(g, [torch.tensor([-1.0, 0.0]), torch.tensor([3.0, 0.0])])
    assert torch.allclose(x, torch.tensor([2.0, 0.2]))


def test_gem_qp_hand_case():
    # one row r = [-1, 1], g = [1, 0]: v = max(margin, -<r,g>/(|r|^2 + eps))
    g = torch.tensor([1.0, 0.0])
    r = torch.tensor([-1.0, 1.0])
    for margin in (0.0, 0.5, 2.0):
        v = max(margin, 1.0 / (2.0 + T.GEM_EPS))
        x = T.gem_project(g, [r], margin)
        assert torch.allclose(x, g + v * r, atol=1e-6), margin


def test_neggrad_formula():
    x = T.neggrad_combine(torch.tensor([2.0, 0.0]), [torch.tensor([0.0, 2.0]), torch.tensor([0.0, 4.0])], 0.5)
    assert torch.allclose(x, torch.tensor([1.0, 1.5]))


def test_salun_first_step_quantile_then_reused():
    g = torch.tensor([0.1, -5.0, 3.0, 0.2])
    masked, mask = T.salun_apply(g, 0.5, None)  # quantile(|g|, 0.5) = (0.2 + 3) / 2
    assert mask.tolist() == [False, True, True, False]
    assert masked.tolist() == [0.0, -5.0, 3.0, 0.0]
    masked2, mask2 = T.salun_apply(torch.tensor([9.0, 1.0, 1.0, 9.0]), 0.5, mask)
    assert mask2 is mask and masked2.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_tensor_shuffle_is_what_python_does_to_a_tensor():
    for seed in range(5):
        t = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
        random.Random(seed).shuffle(t)  # the reference's call, on a tensor
        mine = T.tensor_shuffle(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2]), random.Random(seed))
        assert mine.tolist() == t.tolist()
    # hand case: every draw 0 copies x[0] everywhere
    class Zero:
        def _randbelow(self, n):
            return 0

    assert T.tensor_shuffle(torch.tensor([3, 1, 2]), Zero()).tolist() == [3, 3, 3]
    # b = 1: the true label stays
    assert T.tensor_shuffle(torch.tensor([4]), random.Random(0)).tolist() == [4]


# ---------------------------------------------------------------- buffers


class NoShuffle(random.Random):
    def shuffle(self, x):
        pass


def test_buffer_duplicates_and_ranked_part():
    scores = np.array([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    # most: order [1, 3, 5, 4, 2, 0]; the random part = arr[:2] of *all* positions
    assert T.select_positions(6, 4, 0.5, "most", NoShuffle(), scores) == [0, 1, 1, 3]
    assert T.select_positions(6, 4, 0.5, "least", NoShuffle(), scores) == [0, 1, 0, 2]
    assert T.select_positions(6, 10, 0.0, "most", NoShuffle(), scores) == [0, 1, 2, 3, 4, 5]


def test_python_random_draw_order():
    # ranked: shuffle(all positions), shuffle(chosen); random type: one more shuffle first
    calls = []

    class Spy(random.Random):
        def shuffle(self, x):
            calls.append(len(x))

    T.select_positions(6, 4, 0.5, "most", Spy(), np.arange(6.0))
    assert calls == [6, 4]
    calls.clear()
    T.select_positions(6, 4, 0.5, "random", Spy())
    assert calls == [6, 6, 4]


def test_mem_class_lookup():
    y = np.array([20, 5, 0, 20, 5, 1, 20])
    scores = np.arange(7.0) * 10
    # classes (0, 1) of cifar100 -> the thesis read classes u(0) = 20, u(1) = 5, by position
    assert T.THESIS_CIFAR100_U[0] == 20 and T.THESIS_CIFAR100_U[1] == 5
    got = T.position_scores(scores, y, [0, 1], "cifar100", 4)
    assert got.tolist() == [0.0, 30.0, 60.0, 10.0]
    # other datasets: the classes themselves
    assert T.position_scores(scores, y, [5], "cifar10", 9).tolist() == [10.0, 40.0]
    assert sorted(T.THESIS_CIFAR100_U) == list(range(100))


# ---------------------------------------------------------------- rules


def test_rules():
    assert T.unlearn_rule_defaults("negagem") == {"unlearning_rate": 0.003, "forget_loss_scale": 1.0, "stop_acc": 0.3}
    assert T.unlearn_rule_defaults("rl-gem") == {"unlearning_rate": 0.01, "forget_loss_scale": 5.0, "stop_acc": 0.275}
    assert T.unlearn_rule_defaults("alt-neggem")["stop_acc"] == 0.35
    base = {"algo": "rl-agem", "learn_algo": "gem", "lr": 0.1, "memories": 256}
    out = T.learn_options(base, {}, ["L0"])  # agem-runs
    assert (out["learn_algo"], out["lr"], out["memories"]) == ("agem", 0.03, 65)
    out = T.learn_options({**base, "memories": 100}, {"memories": 100}, ["L0"])
    assert out["memories"] == 100
    out = T.learn_options({**base, "algo": "neggem"}, {}, ["L0", "L1", "U1"])  # lr-after-unlearn
    assert out["lr"] == 0.01 and out["learn_algo"] == "gem"
    assert T.learn_options({**base, "algo": "negagem"}, {}, ["L0", "U0"])["lr"] == 0.003


def test_refused_options():
    with pytest.raises(UsageError, match="salun-one"):
        T.check_supported({"learn_algo": "gem", "salun_strength": 1.0}, "neggem")
    with pytest.raises(UsageError, match="no 'ga'"):
        T.check_supported({"learn_algo": "gem"}, "ga")
    with pytest.raises(UsageError, match="ring buffer"):
        T.check_supported({"learn_algo": "gem", "learn_buffer_type": "first"})


def test_raw_pixels_roundtrip():
    raw = torch.randint(0, 256, (5, 3, 4, 4)).float()
    m = [float(v) for v in (raw / 255).mean((0, 2, 3))]
    s = [float(v) for v in (raw / 255).std((0, 2, 3), unbiased=False)]
    norm = (raw / 255 - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
    assert torch.equal(T.raw_pixels(norm, m, s, "cifar100"), raw)


# ---------------------------------------------------------------- one step on a tiny model


def _ctx(observed=(0, 1, 2), n=4, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 6, bias=False)
    ctx = T.Ctx(model=model, observed=list(observed), rng=random.Random(7),
                classes={t: torch.tensor([2 * t, 2 * t + 1]) for t in range(3)})
    for t in range(3):
        ctx.learn_x[t] = torch.randn(n, 3)
        ctx.learn_y[t] = torch.randint(0, 2, (n,))
        ctx.unlearn_x[t] = torch.randn(n, 3)
        ctx.unlearn_y[t] = torch.randint(0, 2, (n,))
    return ctx


CFG = {"unlearning_rate": 0.1, "forget_loss_scale": 5.0, "unlearn_mem_strength": 0.5, "alpha": 0.5,
       "salun_strength": None}


def _grad(model, fn):
    model.zero_grad(set_to_none=True)
    fn().backward()
    return torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()])


def test_sum_loss():
    ctx = _ctx()
    ce = torch.nn.functional.cross_entropy
    w = ctx.model.weight
    want = -5 * (ce((ctx.unlearn_x[1][:2] @ w.T)[:, 2:4], ctx.unlearn_y[1][:2])
                 + ce((ctx.learn_x[1][:2] @ w.T)[:, 2:4], ctx.learn_y[1][:2]))
    assert torch.allclose(T._neg_loss(ctx, 1, 0, 2, 5.0), want)


def test_neggem_takes_two_steps_and_rl_reads_the_last_task():
    ctx = _ctx()
    seen = []
    loss = ctx.loss

    def spy(x, y, task):
        seen.append((x.clone(), task))
        return loss(x, y, task)

    ctx.loss = spy
    _, ups = T.unlearn_step(ctx, "neggem", 1, 0, 2, CFG, None)
    assert len(ups) == 2  # neggem-plus-rl
    # the RL step's forget terms: task 2's learn slice then unlearn slice (rl-leaked-task),
    # masked to task 1's classes
    rl = seen[-2:]
    assert torch.equal(rl[0][0], ctx.learn_x[2][0:2]) and rl[0][1] == 1
    assert torch.equal(rl[1][0], ctx.unlearn_x[2][0:2]) and rl[1][1] == 1
    ctx2 = _ctx()
    _, ups = T.unlearn_step(ctx2, "negagem", 1, 0, 2, CFG, None)
    assert len(ups) == 1


def test_rl_agem_reads_the_forgotten_task_unlearn_first():
    ctx = _ctx()
    seen = []
    loss = ctx.loss
    ctx.loss = lambda x, y, task: (seen.append(x.clone()), loss(x, y, task))[1]
    T.unlearn_step(ctx, "rl-agem", 1, 0, 2, CFG, None)
    assert torch.equal(seen[-2], ctx.unlearn_x[1][0:2]) and torch.equal(seen[-1], ctx.learn_x[1][0:2])


def test_negagem_label_mixup():
    ctx = _ctx()
    seen = []
    loss = ctx.loss
    ctx.loss = lambda x, y, task: (seen.append((x.clone(), y.clone(), task)), loss(x, y, task))[1]
    T.unlearn_step(ctx, "negagem", 1, 0, 2, CFG, None)
    ref0 = [s for s in seen if s[2] == 0]
    assert torch.equal(ref0[0][0], ctx.learn_x[0]) and torch.equal(ref0[0][1], ctx.unlearn_y[0])


def test_neggrad_accumulates_the_last_reference_gradient():
    ctx = _ctx()
    model = ctx.model
    w0 = model.weight.detach().clone()
    cfg = {**CFG, "alpha": 0.0, "forget_loss_scale": 1.0}
    g_forget = _grad(model, lambda: T._neg_loss(ctx, 1, 0, 2, 1.0))
    g_last = _grad(model, lambda: ctx.loss(ctx.learn_x[2], ctx.learn_y[2], 2))  # observed[-1] = 2
    _, ups = T.unlearn_step(ctx, "neggrad", 1, 0, 2, cfg, None)
    assert torch.allclose(ups[0], g_forget + g_last, atol=1e-6)
    assert torch.allclose(model.weight.detach(), w0 - 0.1 * (g_forget + g_last).view_as(w0), atol=1e-6)


def test_salun_only_reaches_projected_steps():
    # no retained task: never a projection, so the raw (unmasked) gradient is applied
    ctx = _ctx(observed=(1,))
    cfg = {**CFG, "salun_strength": 0.2}
    g_raw = _grad(ctx.model, lambda: T._neg_loss(ctx, 1, 0, 2, 5.0))
    mask, ups = T.unlearn_step(ctx, "neggem", 1, 0, 2, cfg, None)
    assert mask is not None and not bool(mask.all())
    assert torch.allclose(ups[0], g_raw)
    # the mask of the first step is reused by the next request step
    mask2, _ = T.unlearn_step(ctx, "neggem", 1, 2, 4, cfg, mask)
    assert mask2 is mask


def test_stop_rule_in_train_mode_moves_running_stats():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model.train()
    ctx = T.Ctx(model=model, observed=[0], classes={0: torch.tensor([0, 1])})
    before = model[1].running_mean.clone()
    acc = T.train_mode_accuracy(ctx, torch.randn(6, 3) + 3, torch.zeros(6, dtype=torch.long), 0)
    assert 0.0 <= acc <= 1.0 and not torch.equal(before, model[1].running_mean)


# ---------------------------------------------------------------- through the engine


TINY = dict(dataset="digits", model="mlp", width=8, memories=8, epochs=1, batch_size=64, lr=0.001, seed=3,
            learn_buffer_type="random", unlearn_buffer_type="random")


def test_spec_profile_leaves_no_trace_and_thesis_is_recorded(tmp_path):
    spec = E.new_state(E.run_config(**TINY, profile="spec"), device="cpu")
    assert "profile" not in spec.config and "profile" not in spec.given
    assert "profile" not in E._meta(spec, "init")["config"]
    th = E.new_state(E.run_config(**TINY, profile="thesis"), device="cpu")
    assert th.config["profile"] == "thesis" and th.given["profile"] == "thesis"
    store = Store.open(tmp_path / "s")
    oid = E.save_state(store, th, "init")
    loaded = E.load_state(store, oid)
    assert loaded.config["profile"] == "thesis"  # inherited along --from
    with pytest.raises(UsageError, match="--profile"):
        E.load_state(store, oid, overrides={"profile": "spec"})


def test_thesis_learning_loop_order_and_partial_batch(monkeypatch):
    st = E.new_state(E.run_config(**{**TINY, "batch_size": 10}, profile="thesis"), device="cpu")
    batches = []
    real = T.learn_step

    def spy(ctx, x, y, task, algo, margin, lr):
        batches.append(x.clone())
        return real(ctx, x, y, task, algo, margin, lr)

    monkeypatch.setattr(T, "learn_step", spy)
    E.learn_task(st, 0)
    x_raw, _, _, _ = E._inputs(st)
    idx = E.task_indices(st.dataset.y_train, st.classes(0))
    n = len(idx)
    assert len(batches) == -(-n // 10)  # partial-batch: the last one of n % 10 samples is used
    assert torch.equal(torch.cat(batches), x_raw[idx])  # no-shuffle, raw-pixels
    assert float(x_raw.max()) > 1.5  # raw values, not normalised


def test_thesis_unlearning_through_the_engine():
    cfg = {k: v for k, v in TINY.items() if k not in ("memories", "lr")}
    st = E.new_state(E.run_config(**cfg, profile="thesis", algo="negagem"), device="cpu")
    s0 = E.learn_task(st, 0)
    assert s0["profile"] == "thesis" and s0["buffer_size"] == 65
    assert st.op_config["memories"] == 65 and st.op_config["lr"] == 0.03  # agem-runs (not given)
    assert len(st.buffers[0]["learn"]["indices"]) == 65
    E.learn_task(st, 1)
    s = E.unlearn_task(st, 1, {"max_epochs": 2})
    assert s["stop_acc"] == 0.3 and st.op_config["unlearning_rate"] == 0.003  # stop-cutoffs, unlearn-rates
    assert s["steps"] <= 2 * -(-65 // 10)  # stop-loop over range(0, memories, b)
    with pytest.raises(UsageError, match="bf16"):
        E.learn_task(st, 1, precision="bf16")


def test_unlearn_margin_is_always_half():
    st = E.new_state(E.run_config(**TINY, profile="thesis"), device="cpu")
    E.learn_task(st, 0)
    E.learn_task(st, 1)
    E.unlearn_task(st, 1, {"max_epochs": 1, "unlearn_mem_strength": 3.0, "unlearning_rate": 1e-5})
    assert st.op_config["unlearn_mem_strength"] == 0.5  # unlearn-margin-ignored
