"""The fast paths on a CUDA GPU: the same per-step equivalence as tests/test_fastpath.py,
and learn/unlearn steps under ``--precision bf16``. Skipped where no CUDA GPU is visible
(run them with ``pytest -m cuda``; benchmarks/gpu_check.sh does).

TF32 is switched off for the equivalence checks (PyTorch lets cuDNN convolutions use TF32
by default, which is ~1e-3 relative, far above the 1e-5 the paths must agree to).
"""

from __future__ import annotations

import dataclasses
import pytest
import torch
from conftest import clone_state

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

TOL = 1e-5


@pytest.fixture
def exact_float32():
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _rows_rel(a, b):
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-30)).max())


def _rel(a, b):
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


@pytest.fixture(scope="module")
def learned3_cuda():
    from cluctl.engine import learn_task, new_state, run_config

    cfg = run_config(dataset="digits", model="resnet18", width=4, epochs=1, memories=32, learn_buffer_type="first",
                     unlearn_buffer_type="same", seed=1)
    st = new_state(cfg, device="cuda")
    for t in range(3):
        learn_task(st, t)
    return st


@pytest.mark.parametrize("kind,width,shape", [("resnet18", 4, (3, 8, 8)), ("mlp", 16, (1, 8, 8))])
@pytest.mark.parametrize("channels_last", [False, None])
def test_grouped_reference_gradients_equal_classic(kind, width, shape, channels_last, exact_float32, monkeypatch):
    import cluctl.grads as grads
    from cluctl.grads import TaskBatch, ref_grads_classic, ref_grads_fast
    from cluctl.models import build_model

    monkeypatch.setitem(grads.FAST_OPTIONS, "channels_last", channels_last)
    torch.manual_seed(0)
    model = build_model(kind, width, shape, 10).cuda()
    gen = torch.Generator().manual_seed(0)
    batches = [TaskBatch(torch.randn(n, *shape, generator=gen).cuda(), torch.randint(0, 2, (n,), generator=gen).cuda(),
                         torch.tensor([2 * j, 2 * j + 1]).cuda()) for j, n in enumerate([12, 12, 7])]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Gc = ref_grads_classic(model, batches)
    Gf = ref_grads_fast(model, batches)
    assert model not in grads._UNSUPPORTED
    assert Gf.device.type == "cuda" and _rows_rel(Gf, Gc) <= TOL
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("algo", ["gem", "neggem", "negagem", "rl-gem", "alt-neggem", "neggrad"])
def test_steps_equal_classic_on_cuda(learned3_cuda, algo, exact_float32, monkeypatch):
    import cluctl.grads as grads
    from cluctl.engine import learn_task, unlearn_task
    from cluctl.learning import REGISTRY as LEARN, RefContext
    from cluctl.unlearning import REGISTRY as UNLEARN

    monkeypatch.setitem(grads.FAST_OPTIONS, "channels_last", False)
    steps = []

    def twin(fn):
        def run(g, refs, cfg):
            x, info = fn(g, refs, cfg)
            classic = RefContext(refs.model, refs.batches, "classic", refs.gen)
            xc, ic = fn(g, classic, cfg)
            if refs.batches:
                steps.append((_rows_rel(refs.G, classic.G), _rel(x, xc),
                              getattr(info, "projected", None) == getattr(ic, "projected", None)))
            return x, info
        return run

    st = clone_state(learned3_cuda)
    if algo == "gem":
        monkeypatch.setitem(LEARN, "gem", dataclasses.replace(LEARN["gem"], direction=twin(LEARN["gem"].direction)))
        learn_task(st, 3, impl="fast")
    else:
        orig = UNLEARN[algo]
        monkeypatch.setitem(UNLEARN, algo, dataclasses.replace(orig, combine=twin(orig.combine)))
        unlearn_task(st, 2, {"algo": algo, "max_epochs": 2}, impl="fast")
    assert steps
    assert all(s[2] for s in steps)
    # cuDNN picks its algorithms per batch size, so the stacked batch rounds differently
    # from per-task batches; a ReLU input within rounding of 0 can then flip and move that
    # step's gradients by up to ~1e-3 (see tests/test_fastpath.py). Typical steps: 1e-5.
    G_err, x_err = sorted(s[0] for s in steps), sorted(s[1] for s in steps)
    assert G_err[len(G_err) // 2] <= TOL and x_err[len(x_err) // 2] <= TOL, (G_err, x_err)
    assert G_err[-1] <= 1e-2 and x_err[-1] <= 1e-3, (G_err, x_err)


def test_fast_projection_stays_on_device_and_equals_classic():
    from cluctl.projection import gem_project

    gen = torch.Generator().manual_seed(0)
    g = torch.randn(200_000, generator=gen)
    G = torch.randn(19, 200_000, generator=gen)
    G[:9] = -0.8 * g + 0.6 * G[:9]
    xc, ic = gem_project(g.cuda(), G.cuda(), 0.5, impl="classic")
    xf, if_ = gem_project(g.cuda(), G.cuda(), 0.5, impl="fast")
    assert xf.device.type == "cuda" and ic.eps == if_.eps
    assert _rel(xf, xc) <= TOL


def test_bf16_learn_and_unlearn_steps_run_on_cuda(learned3_cuda):
    from cluctl.engine import learn_task, unlearn_task

    st = clone_state(learned3_cuda)
    before = [p.detach().clone() for p in st.model.parameters()]
    s = learn_task(st, 3, precision="bf16")
    assert s["steps"] > 0 and not s.get("diverged")
    after = list(st.model.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    st.execution["precision"] = "bf16"  # the state's execution setting is honoured too
    u = unlearn_task(st, 3, {"algo": "neggem", "max_epochs": 1})
    assert u["steps"] >= 0 and all(bool(torch.isfinite(p).all()) for p in st.model.parameters())


def test_bf16_grouped_reference_gradients_track_float32():
    from cluctl.grads import TaskBatch, forward_precision, ref_grads_classic, ref_grads_fast
    from cluctl.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 8, (3, 16, 16), 10).cuda()
    gen = torch.Generator().manual_seed(1)
    batches = [TaskBatch(torch.randn(32, 3, 16, 16, generator=gen).cuda(),
                         torch.randint(0, 2, (32,), generator=gen).cuda(), torch.tensor([2 * j, 2 * j + 1]).cuda())
               for j in range(3)]
    G32 = ref_grads_classic(model, batches)
    with forward_precision("bf16"):
        Gb = ref_grads_fast(model, batches)
    assert Gb.dtype == torch.float32 and bool(torch.isfinite(Gb).all())
    cos = torch.nn.functional.cosine_similarity(Gb, G32, dim=1)
    assert float(cos.min()) > 0.8


def _graph_setup(monkeypatch, width=4, shape=(3, 8, 8), sizes=(12, 12, 7), seed=0):
    import cluctl.grads as grads
    from cluctl.grads import TaskBatch
    from cluctl.models import build_model

    monkeypatch.setitem(grads.FAST_OPTIONS, "cuda_graphs", True)
    monkeypatch.setattr(grads, "_GRAPHS_BROKEN", [])
    grads.clear_cache()
    torch.manual_seed(seed)
    model = build_model("resnet18", width, shape, 10).cuda()
    gen = torch.Generator().manual_seed(seed)
    batches = [TaskBatch(torch.randn(n, *shape, generator=gen).cuda(), torch.randint(0, 2, (n,), generator=gen).cuda(),
                         torch.tensor([2 * j, 2 * j + 1]).cuda()) for j, n in enumerate(sizes)]
    return grads, model, batches


@pytest.mark.parametrize("sizes", [(12, 12, 7), (16, 16, 16)])
def test_cuda_graph_replays_follow_the_weights(sizes, exact_float32, monkeypatch):
    """Replayed reference gradients equal the eager grouped pass (to 1e-5: cuDNN weight-gradient kernels are not bitwise deterministic) at the current weights,
    step after step (SGD updates the weights in place between replays), the caller's copy
    is not overwritten by the next replay, and new buffers make a new capture."""
    grads, model, batches = _graph_setup(monkeypatch, sizes=sizes)
    from cluctl.grads import apply_update, param_list, ref_grads_fast, ref_grads_grouped

    params = param_list(model)
    gen = torch.Generator().manual_seed(3)
    kept = []
    for step in range(6):
        Gf = ref_grads_fast(model, batches)
        Ge = ref_grads_grouped(model, batches)
        assert _rows_rel(Gf, Ge) <= 1e-5, step
        kept.append((Gf, Gf.clone()))
        x = torch.randn(sum(p.numel() for p in params), generator=gen).cuda()
        apply_update(params, x, 0.05)
    assert not grads._GRAPHS_BROKEN, grads._GRAPHS_BROKEN
    entry = grads._GRAPH_CACHE[-1]
    assert entry.graph is not None and entry.calls == 6
    assert all(torch.equal(a, b) for a, b in kept)  # replays never wrote into returned tensors
    assert _rows_rel(kept[-1][0], kept[0][0]) > 1e-3  # and the weights did move
    # a new operation's buffers: eager first, then a new capture
    other = [grads.TaskBatch(b.x.flip(0).contiguous(), b.y.flip(0).contiguous(), b.classes) for b in batches[:2]]
    for _ in range(3):
        assert _rows_rel(ref_grads_fast(model, other), ref_grads_grouped(model, other)) <= 1e-5
    assert grads._GRAPH_CACHE[-1] is not entry and grads._GRAPH_CACHE[-1].graph is not None
    assert entry.graph is not None and len(grads._GRAPH_CACHE) == 2  # two keys are kept
    # the first key again: replayed from its own graph, still following the weights
    before = grads.GRAPH_STATS["replays"]
    assert _rows_rel(ref_grads_fast(model, batches), ref_grads_grouped(model, batches)) <= 1e-5
    assert grads.GRAPH_STATS["replays"] == before + 1
    grads.release_graphs()
    assert entry.graph is None and not grads._GRAPH_CACHE  # graphs and their pools released


def test_engine_steps_replay_graphs_that_match_eager(learned3_cuda, exact_float32, monkeypatch):
    """Inside a real learn operation, every step's reference gradients (eager at step 1,
    warm-up at step 2, replays after) equal the eager grouped pass at that step's weights;
    the operation captures once, replays at every later step and releases the graph at its
    end. (Whole trajectories are not compared: ResNet training at lr 0.1 amplifies
    rounding-level differences between kernels chosen in capture and eagerly; measured on
    an H200, 5e-2 relative after 27 steps.)"""
    import cluctl.grads as grads
    from cluctl.engine import learn_task
    from cluctl.learning import REGISTRY as LEARN

    monkeypatch.setattr(grads, "_GRAPHS_BROKEN", [])
    monkeypatch.setitem(grads.FAST_OPTIONS, "cuda_graphs", True)
    grads.clear_cache()
    errs = []
    orig = LEARN["gem"].direction

    def twin(g, refs, cfg):
        G = refs.G
        errs.append(_rows_rel(G, grads.ref_grads_grouped(refs.model, refs.batches)))
        return orig(g, refs, cfg)

    monkeypatch.setitem(LEARN, "gem", dataclasses.replace(LEARN["gem"], direction=twin))
    st = clone_state(learned3_cuda)
    stats = dict(grads.GRAPH_STATS)
    s = learn_task(st, 3, impl="fast")
    assert s["steps"] > 3 and len(errs) == s["steps"]
    assert max(errs) <= 1e-5, errs  # cuDNN weight-gradient kernels are not bitwise deterministic
    assert not grads._GRAPHS_BROKEN, grads._GRAPHS_BROKEN
    assert grads.GRAPH_STATS["captures"] - stats["captures"] == 1
    assert grads.GRAPH_STATS["replays"] - stats["replays"] == s["steps"] - 2
    assert not grads._GRAPH_CACHE  # released when the operation ended


def test_cuda_graph_under_bf16(monkeypatch):
    grads, model, batches = _graph_setup(monkeypatch, width=8, shape=(3, 16, 16), sizes=(32, 32, 32), seed=1)
    from cluctl.grads import forward_precision, ref_grads_fast, ref_grads_grouped

    with forward_precision("bf16"):
        for _ in range(4):
            Gf = ref_grads_fast(model, batches)
            Ge = ref_grads_grouped(model, batches)
            assert bool(torch.isfinite(Gf).all())
            assert float(torch.nn.functional.cosine_similarity(Gf, Ge, dim=1).min()) > 0.999
    assert not grads._GRAPHS_BROKEN and grads._GRAPH_CACHE[-1].graph is not None


def test_cuda_graph_cache_keeps_the_latest_keys(monkeypatch):
    grads, model, batches = _graph_setup(monkeypatch)
    from cluctl.grads import ref_grads_fast

    sets = [[grads.TaskBatch(b.x.roll(k, 0).contiguous(), b.y.roll(k, 0).contiguous(), b.classes) for b in batches]
            for k in range(grads._GRAPH_CACHE_SIZE + 1)]
    entries = []
    for s in sets:
        for _ in range(3):
            ref_grads_fast(model, s)
        entries.append(grads._GRAPH_CACHE[-1])
    assert len(grads._GRAPH_CACHE) == grads._GRAPH_CACHE_SIZE
    assert entries[0].graph is None and entries[0] not in grads._GRAPH_CACHE  # the oldest was released
    assert all(e.graph is not None for e in entries[1:])
    # the graphs still cached replay correctly after another one was released
    before = grads.GRAPH_STATS["replays"]
    for s in sets[1:]:
        assert _rows_rel(ref_grads_fast(model, s), grads.ref_grads_grouped(model, s)) <= 1e-5
    assert grads.GRAPH_STATS["replays"] == before + len(sets) - 1


def test_cuda_graph_captured_on_the_models_device(monkeypatch):
    """The capture and replays run on the model's GPU even when another one is current
    (launch workers on cuda:N never call set_device)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    import cluctl.grads as grads
    from cluctl.grads import TaskBatch, ref_grads_fast, ref_grads_grouped
    from cluctl.models import build_model

    monkeypatch.setitem(grads.FAST_OPTIONS, "cuda_graphs", True)
    monkeypatch.setattr(grads, "_GRAPHS_BROKEN", [])
    grads.clear_cache()
    torch.cuda.set_device(0)
    dev = torch.device("cuda:1")
    torch.manual_seed(0)
    model = build_model("resnet18", 4, (3, 8, 8), 10).to(dev)
    gen = torch.Generator().manual_seed(0)
    batches = [TaskBatch(torch.randn(12, 3, 8, 8, generator=gen).to(dev), torch.randint(0, 2, (12,), generator=gen).to(dev),
                         torch.tensor([2 * j, 2 * j + 1]).to(dev)) for j in range(2)]
    for _ in range(4):
        G = ref_grads_fast(model, batches)
        assert G.device == dev and _rows_rel(G, ref_grads_grouped(model, batches)) <= 1e-5
    assert not grads._GRAPHS_BROKEN and grads._GRAPH_CACHE[-1].graph is not None
