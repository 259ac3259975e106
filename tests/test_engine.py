"""The learning/unlearning engine on real digits data, instrumented step by step."""

import numpy as np
import pytest
import torch

from cluctl import api
from cluctl.engine import evaluate_state, learn_task, new_state, run_config, unlearn_task
from cluctl.errors import UsageError
from cluctl.grads import TaskBatch, ref_grads_classic, ref_grads_fast
from cluctl.models import build_model
from cluctl.store import Store
from cluctl.unlearning import random_labels, salun_mask

from conftest import TINY, clone_state

EPS = 1e-3


def _state(**kw):
    cfg = run_config(**{**TINY, **kw})
    return new_state(cfg, device="cpu")


@pytest.fixture(scope="module")
def learned3():
    """A tiny state that learned tasks 0, 1, 2 with GEM (module-scoped, cloned per test)."""
    st = _state()
    for t in range(3):
        learn_task(st, t)
    return st


@pytest.mark.parametrize("kind,width", [("mlp", 16), ("resnet18", 4)])
def test_fast_reference_gradients_equal_classic(kind, width):
    torch.manual_seed(0)
    model = build_model(kind, width, (1, 8, 8), 10)
    batches = []
    for j, n in enumerate([12, 12, 7]):  # two sizes: exercises the grouping
        x = torch.randn(n, 1, 8, 8)
        y = torch.randint(0, 2, (n,))
        batches.append(TaskBatch(x, y, torch.tensor([2 * j, 2 * j + 1])))
    import copy

    fast_model = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Gc = ref_grads_classic(model, batches)
    Gf = ref_grads_fast(fast_model, batches)
    assert Gc.shape == Gf.shape == (3, sum(p.numel() for p in model.parameters()))
    rel = (Gc - Gf).norm(dim=1) / Gc.norm(dim=1)
    assert float(rel.max()) < 1e-5
    # SPEC §2: each task's reference pass updates BatchNorm's running statistics in turn,
    # and the grouped fast path reproduces the sequential updates (and the counts)
    for (k, vc), vf in zip(model.state_dict().items(), fast_model.state_dict().values()):
        if "num_batches_tracked" in k:
            assert int(vc) == int(vf) == int(before[k]) + 3, k
        else:
            assert torch.allclose(vc, vf, rtol=1e-5, atol=1e-6), k
    if kind == "resnet18":
        # independently: the stem BatchNorm's running mean/var after three momentum-0.1
        # updates with each task's own batch mean and unbiased variance of the stem conv
        bn = model.bn1
        rm, rv = before["bn1.running_mean"].clone(), before["bn1.running_var"].clone()
        for b in batches:
            with torch.no_grad():
                h = torch.nn.functional.conv2d(b.x, model.conv1.weight, None, 1, 1)
            rm = 0.9 * rm + 0.1 * h.mean(dim=(0, 2, 3))
            rv = 0.9 * rv + 0.1 * h.var(dim=(0, 2, 3), unbiased=True)
        assert torch.allclose(bn.running_mean, rm, rtol=1e-5, atol=1e-6)
        assert torch.allclose(bn.running_var, rv, rtol=1e-5, atol=1e-6)
        assert torch.allclose(fast_model.bn1.running_var, rv, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(rm, before["bn1.running_mean"])


def test_gem_learning_respects_constraints_every_step(learned3, monkeypatch):
    import cluctl.projection as gem  # the GEM step the learning algorithm calls

    seen = []
    orig = gem.gem_step

    def spy(g, G, margin, eps=EPS, impl="fast", tol=0.0):
        x, info = orig(g, G, margin, eps=eps, impl=impl, tol=tol)
        seen.append((x, G, info))
        return x, info

    monkeypatch.setattr(gem, "gem_step", spy)
    st = clone_state(learned3)
    learn_task(st, 3)
    assert len(seen) > 10
    projected = 0
    for x, G, info in seen:
        dots = G @ x
        if info.projected:
            projected += 1
            bound = -info.eps * torch.as_tensor(info.v, dtype=x.dtype) - 1e-6 * x.norm() * G.norm(dim=1)
            assert bool((dots >= bound).all())
    assert projected > 0, "the test must exercise the projection"


def test_fast_and_classic_agree_per_step_with_batchnorm():
    """Reduced ResNet (BatchNorm): after every learning and unlearning step the weights and
    the running statistics of fast and classic agree (the reference passes and the current
    batch update them in the same order), and a step moves them."""
    base = _state(model="resnet18", width=4, memories=16, learn_buffer_type="random",
                  unlearn_buffer_type="random")
    for t in range(2):
        learn_task(base, t, impl="classic")

    def trace(impl, op):
        st = clone_state(base)
        snaps = []

        def progress(done, total, msg):
            snaps.append({k: v.detach().clone() for k, v in st.model.state_dict().items()})

        if op == "learn":
            learn_task(st, 2, progress=progress, impl=impl)
        else:
            unlearn_task(st, 1, {"algo": "neggem", "max_epochs": 3, "stop_acc": 0.0}, progress=progress, impl=impl)
        return snaps

    for op in ("learn", "unlearn"):
        fast, classic = trace("fast", op), trace("classic", op)
        assert len(fast) == len(classic) > 2
        for i, (sf, sc) in enumerate(zip(fast, classic)):
            for k in sf:
                if "num_batches_tracked" in k:
                    assert int(sf[k]) == int(sc[k]), (op, i, k)
                else:
                    assert torch.allclose(sf[k], sc[k], rtol=1e-4, atol=1e-5), (op, i, k)
        rm = [s["bn1.running_mean"] for s in fast]
        assert not torch.allclose(rm[0], rm[-1])
        # two reference tasks plus the current batch per learning step: 3 updates a step
        if op == "learn":
            assert int(fast[1]["bn1.num_batches_tracked"]) - int(fast[0]["bn1.num_batches_tracked"]) == 3


def test_step_order_retained_tasks_then_current_batch():
    """SPEC §2: within a step the retained tasks' passes run first (in learned order), then
    the current (or forget) batch — the order that sets BatchNorm's running statistics."""
    st = _state(model="resnet18", width=4, memories=16, learn_buffer_type="random",
                unlearn_buffer_type="random", batch_size=10)
    learn_task(st, 0, impl="classic")
    learn_task(st, 1, impl="classic")
    seen = []
    hook = st.model.bn1.register_forward_pre_hook(lambda m, inp: seen.append((len(inp[0]), m.training)))
    try:
        learn_task(st, 2, impl="classic")
    finally:
        hook.remove()
    sizes = [n for n, train in seen if train]
    assert sizes[:6] == [16, 16, 10, 16, 16, 10]
    seen.clear()
    hook = st.model.bn1.register_forward_pre_hook(lambda m, inp: seen.append((len(inp[0]), m.training)))
    try:
        unlearn_task(st, 2, {"algo": "neggem", "max_epochs": 1, "stop_acc": 0.0}, impl="classic")
    finally:
        hook.remove()
    train_sizes = [n for n, train in seen if train]
    assert train_sizes[:3] == [16, 16, 20]  # tasks 0 and 1, then the forget batch (b + b)


def test_learn_fast_and_classic_agree_per_step(learned3):
    a, b = clone_state(learned3), clone_state(learned3)
    learn_task(a, 3, impl="fast")
    learn_task(b, 3, impl="classic")
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va.float(), vb.float(), rtol=1e-4, atol=1e-5), k


def test_buffers_first_and_random():
    st = _state(memories=20, learn_buffer_type="first", unlearn_buffer_type="same")
    learn_task(st, 0)
    b = st.buffers[0]
    assert len(b["learn"]["indices"]) == 20 and b["unlearn"]["indices"] == b["learn"]["indices"]
    ys = st.dataset.y_train[b["learn"]["indices"]].tolist()
    assert set(ys) <= set(st.classes(0))
    st2 = _state(memories=20, learn_buffer_type="random", unlearn_buffer_type="random")
    learn_task(st2, 0)
    b2 = st2.buffers[0]
    assert len(set(b2["learn"]["indices"])) == 20 and len(set(b2["unlearn"]["indices"])) == 20


GEM_LIKE = ["neggem", "rl-gem", "alt-neggem"]
AGEM_LIKE = ["negagem", "rl-agem"]


@pytest.mark.parametrize("algo", GEM_LIKE + AGEM_LIKE)
def test_unlearning_updates_respect_retained_constraints(learned3, algo):
    st = clone_state(learned3)
    steps = []
    summary = unlearn_task(st, 2, {"algo": algo, "max_epochs": 2}, step_hook=steps.append)
    assert summary["steps"] == len(steps) > 0
    checked = 0
    for s in steps:
        x, G, g_f, info = s["x"], s["G"], s["g_f"], s["info"]
        if info is None or not info.projected:
            continue
        checked += 1
        if algo in AGEM_LIKE:
            g_ref = G.mean(0)
            assert float(x @ g_ref) >= -1e-6 * float(x.norm() * g_ref.norm())
            continue
        rows = torch.cat([G, g_f.unsqueeze(0)]) if algo == "alt-neggem" else G
        v = torch.as_tensor(info.v, dtype=x.dtype)
        bound = -info.eps * v - 1e-6 * x.norm() * rows.norm(dim=1)
        assert bool((rows @ x >= bound).all()), (algo, rows @ x, bound)
        if algo == "alt-neggem":  # the forget direction itself is kept
            assert float(g_f @ x) >= float(-info.eps * v[-1] - 1e-6 * x.norm() * g_f.norm())
    assert checked > 0, f"{algo}: no projected step to check"


def test_neggrad_update_formula(learned3):
    st = clone_state(learned3)
    steps = []
    unlearn_task(st, 2, {"algo": "neggrad", "alpha": 0.3, "max_epochs": 1}, step_hook=steps.append)
    assert steps
    for s in steps:
        expect = 0.3 * s["G"].mean(0) + 0.7 * s["g_f"]
        assert torch.allclose(s["x"], expect, rtol=1e-6, atol=1e-8)


def test_salun_mask_properties():
    g = torch.tensor([0.1, 5.0, 3.0, 0.2, 4.0, 1.0, 2.0, 0.0, 0.5, 6.0])
    m = salun_mask(g, 0.3)
    assert m.tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    assert salun_mask(g, 1.0).sum() == 10
    big = torch.rand(10_000)
    assert int(salun_mask(big, 0.2).sum()) == 2000


def test_salun_gradient_mode_zeroes_masked_entries(learned3):
    st = clone_state(learned3)
    steps = []
    unlearn_task(st, 2, {"algo": "neggem", "salun_strength": 0.1, "salun_on": "gradient", "max_epochs": 1},
                 step_hook=steps.append)
    assert steps
    for s in steps:
        mask = s["mask"]
        assert abs(float(mask.mean()) - 0.1) < 0.01
        assert bool((s["g_f"][mask == 0] == 0).all())


def test_salun_update_mode_freezes_masked_weights(learned3):
    st = clone_state(learned3)
    before = torch.cat([p.detach().reshape(-1).clone() for p in st.model.parameters()])
    steps = []
    unlearn_task(st, 2, {"algo": "neggem", "salun_strength": 0.1, "salun_on": "update", "max_epochs": 1},
                 step_hook=steps.append)
    after = torch.cat([p.detach().reshape(-1) for p in st.model.parameters()])
    mask = steps[0]["mask"]
    assert torch.equal(before[mask == 0], after[mask == 0])
    assert not torch.equal(before[mask == 1], after[mask == 1])


def test_random_labels_differ_and_stay_in_task():
    gen = torch.Generator().manual_seed(0)
    for k in (2, 5):
        y = torch.randint(0, k, (5000,), generator=gen)
        r = random_labels(y, k, gen)
        assert bool((r != y).all()) and int(r.min()) >= 0 and int(r.max()) < k
        # uniform over the other k-1 classes
        if k == 5:
            counts = torch.bincount(r[y == 0], minlength=5)[1:].float()
            assert float(counts.min() / counts.max()) > 0.8


def test_rl_forget_labels_are_random_and_in_task(learned3):
    st = clone_state(learned3)
    steps = []
    unlearn_task(st, 2, {"algo": "rl-gem", "max_epochs": 1}, step_hook=steps.append)
    assert steps
    for s in steps:
        assert int(s["forget_y"].min()) >= 0 and int(s["forget_y"].max()) < st.k


def test_unlearning_reaches_stop_accuracy_and_updates_sets(learned3):
    st = clone_state(learned3)
    s = unlearn_task(st, 2, {"algo": "rl-gem"})
    assert s["stopped"] == "stop-acc" and s["final_forget_acc"] <= s["stop_acc"]
    assert st.learned == [0, 1] and st.forgotten == [2] and 2 not in st.buffers
    with pytest.raises(UsageError, match="not learned"):
        unlearn_task(st, 2, {"algo": "neggem"})
    with pytest.raises(UsageError, match="out of range"):
        unlearn_task(st, 9, {"algo": "neggem"})
    learn_task(st, 2)  # a forgotten task can be learned again
    assert st.learned == [0, 1, 2] and st.forgotten == []


def test_diverging_ascent_fails_and_keeps_the_task_learned(learned3):
    """Gradient ascent that runs away (here: an unlearning rate of 50) fails the request:
    Diverged, with the model, the learned tasks and the buffers as they were (SPEC §3)."""
    from cluctl.errors import Diverged

    st = clone_state(learned3)
    before = {k: v.clone() for k, v in st.model.state_dict().items()}
    with pytest.raises(Diverged) as ei:
        unlearn_task(st, 2, {"algo": "neggem", "unlearning_rate": 50.0, "stop_acc": 0.0})
    assert ei.value.summary["stopped"] == "diverged"
    assert all(torch.equal(v, before[k]) for k, v in st.model.state_dict().items())
    assert st.learned == [0, 1, 2] and st.forgotten == [] and 2 in st.buffers
    assert np.isfinite(evaluate_state(st)["test_acc"]).all()


def test_unlearning_only_task_resets_to_initial_weights():
    st = _state()
    init = {k: v.clone() for k, v in st.model.state_dict().items()}
    learn_task(st, 0)
    s = unlearn_task(st, 0, {"algo": "neggem"})
    assert s["stopped"] == "reset" and s["steps"] == 0
    for k, v in st.model.state_dict().items():
        assert torch.equal(v, init[k])


def test_operations_replay_identically():
    a, b = _state(seed=3), _state(seed=3)
    for st in (a, b):
        learn_task(st, 0)
        learn_task(st, 1)
        unlearn_task(st, 1, {"algo": "rl-agem"})
    for va, vb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(va, vb)
    assert a.buffers == b.buffers


def test_checkpoint_round_trip_is_exact(tmp_path):
    store = Store.open(tmp_path / "s")
    r = api.learn(0, store=store, **TINY)
    r = api.learn(1, from_ref=r.id, store=store)
    st = api.load(r.id, store=store)
    ev_loaded = evaluate_state(st)
    # continue from the loaded state in memory vs from the checkpoint again: identical
    r2 = api.learn(2, from_ref=r.id, store=store)
    st.config = dict(st.config)
    learn_task(st, 2)
    st2 = api.load(r2.id, store=store)
    for va, vb in zip(st.model.state_dict().values(), st2.model.state_dict().values()):
        assert torch.equal(va, vb)
    for key, arr in evaluate_state(st2).items():
        assert np.array_equal(arr, evaluate_state(st)[key])
    assert set(ev_loaded) == {"test_acc", "test_conf", "train_acc", "train_conf"}


def test_evaluate_before_save_equals_after_load(tmp_path):
    from cluctl.engine import load_state, save_state

    store = Store.open(tmp_path / "s")
    st = _state()
    save_state(store, st, "init")
    learn_task(st, 0)
    before = evaluate_state(st)
    oid = save_state(store, st, "L0")
    after = evaluate_state(load_state(store, oid))
    for k in before:
        assert np.array_equal(before[k], after[k]), k


def test_unlearned_indices_appear_in_no_later_manifest(tmp_path):
    store = Store.open(tmp_path / "s")
    r = api.learn(0, store=store, **TINY)
    r = api.learn(1, from_ref=r.id, store=store)
    r = api.learn(2, from_ref=r.id, store=store)
    st = api.load(r.id, store=store)
    idx1 = set(st.buffers[1]["learn"]["indices"]) | set(st.buffers[1]["unlearn"]["indices"])
    r = api.unlearn(1, from_ref=r.id, store=store, algo="neggem")
    r = api.learn(3, from_ref=r.id, store=store)
    from cluctl.store import read_checkpoint_meta

    for oid in (r.id, read_checkpoint_meta(store, r.id)["parent"]):
        man = store.get_json(read_checkpoint_meta(store, oid)["manifest"])
        assert "1" not in man["buffers"]
        listed = set()
        for b in man["buffers"].values():
            listed |= set(b["learn"]["indices"]) | set(b["unlearn"]["indices"])
        assert not (listed & idx1)


def test_library_calls_that_fail_leave_no_new_store(tmp_path):
    """The Python API, like the CLI: a call that raises removes the (still bare) store it
    created; one that succeeds keeps it."""
    import cluctl.launch as launch_api
    from cluctl.errors import NotFound

    new = tmp_path / "n" / "store"
    with pytest.raises(UsageError, match="out of range"):
        api.learn(7, store=new, **TINY)
    with pytest.raises(NotFound):
        api.evaluate("nosuch", store=new)
    with pytest.raises(NotFound):
        api.unlearn(0, "nosuch", store=new)
    with pytest.raises(UsageError, match="L9"):
        launch_api.launch(store=str(new), sequence="L9", **TINY)
    assert not (tmp_path / "n").exists()
    res = api.learn(0, store=new, **TINY)
    assert Store.open(new).has_object(res.id)
    with pytest.raises(UsageError, match="out of range"):
        api.learn(7, store=new, **TINY)
    assert Store.open(new).has_object(res.id)  # an existing store is never discarded
