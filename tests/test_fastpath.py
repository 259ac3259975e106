"""The fast paths equal the classic path (SPEC §4) step by step, on real digits data.

Every training step of an operation is checked twice: the engine runs it with
``impl="fast"`` and, from the very same state, the classic reference gradients and the
classic update are computed too; both must agree to 1e-5 relative.

The fast path also picks faster kernels: channels-last activations (mkldnn ~1.3x) and,
for convolutions over maps smaller than the kernel (2x2, 1x1 on 8x8 digits), one GEMM
with the unrolled convolution matrix that leaves out the zero-padding products. Both
change float rounding only, but a ReLU input within rounding of 0 then flips sign and
moves that step's reference gradient by up to ~1e-3. The strict per-step checks therefore
run with the classic kernels held (``classic_kernels``: the grouped path then equals
classic to the bit on CPU); the default kernels are checked per step with a median of
1e-5 and a bound that admits those rare kink steps, and directly on small problems.
"""

from __future__ import annotations

import dataclasses
import numpy as np
import pytest
import torch
from conftest import clone_state
import torch.nn as nn

import cluctl.grads as grads
from cluctl.engine import evaluate_state, learn_task, new_state, run_config, unlearn_task
from cluctl.errors import UsageError
from cluctl.grads import TaskBatch, forward_precision, ref_grads_classic, ref_grads_fast, ref_grads_vmap
from cluctl.learning import REGISTRY as LEARN, RefContext
from cluctl.models import build_model
from cluctl.unlearning import REGISTRY as UNLEARN
from cluctl.unlearning import names as unlearn_names

TOL = 1e-5
PROFILES = {
    "resnet": {"model": "resnet18", "width": 4},
    "mlp": {"model": "mlp", "width": 32},
}
UNLEARN_ALGOS = list(unlearn_names())  # every registered unlearning algorithm


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


def _rows_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-30)).max())


@pytest.fixture
def classic_kernels(monkeypatch):
    monkeypatch.setitem(grads.FAST_OPTIONS, "channels_last", False)
    monkeypatch.setitem(grads.FAST_OPTIONS, "dense_small_conv", False)


@pytest.fixture(scope="module", params=sorted(PROFILES))
def learned3(request):
    """digits, 5 tasks; tasks 0, 1, 2 learned with GEM (fast)."""
    cfg = run_config(dataset="digits", epochs=1, memories=32, learn_buffer_type="first",
                     unlearn_buffer_type="same", seed=1, **PROFILES[request.param])
    st = new_state(cfg, device="cpu")
    for t in range(3):
        learn_task(st, t)
    return st


class _Twin:
    """Wraps an algorithm's direction/combine: the engine's fast step also computes the
    classic reference gradients and update from the same state and records both."""

    def __init__(self, fn):
        self.fn = fn
        self.steps: list[dict] = []

    def __call__(self, g, refs, cfg):
        assert refs.impl == "fast"
        state_before = {k: v.clone() for k, v in refs.model.state_dict().items()}
        x, info = self.fn(g, refs, cfg)
        classic = RefContext(refs.model, refs.batches, "classic", refs.gen)
        xc, ic = self.fn(g, classic, cfg)
        # the classic twin's reference passes update BatchNorm's running statistics (SPEC §2);
        # the fast ones already did, before the current batch: undo the twin's, and check
        # that they changed nothing else (running statistics are compared per step in
        # test_engine.py::test_fast_and_classic_agree_per_step_with_batchnorm)
        with torch.no_grad():
            for k, v in refs.model.state_dict().items():
                if "running_" in k or "num_batches_tracked" in k:
                    v.copy_(state_before[k])
                else:
                    assert torch.equal(v, state_before[k]), k
        if refs.batches:
            self.steps.append({"G": _rows_rel(refs.G, classic.G), "x": _rel(x, xc),
                               "same_decision": getattr(info, "projected", None) == getattr(ic, "projected", None),
                               "projected": bool(getattr(info, "projected", False))})
        return x, info


def _learn_twin(st, monkeypatch):
    twin = _Twin(LEARN["gem"].direction)
    monkeypatch.setitem(LEARN, "gem", dataclasses.replace(LEARN["gem"], direction=twin))
    learn_task(st, 3, impl="fast")
    return twin.steps


def _unlearn_twin(st, algo, monkeypatch):
    orig = UNLEARN[algo]
    twin = _Twin(orig.combine)
    monkeypatch.setitem(UNLEARN, algo, dataclasses.replace(orig, combine=twin))
    unlearn_task(st, 2, {"algo": algo, "max_epochs": 2}, impl="fast")
    return twin.steps


def _assert_strict(steps, what):
    assert steps, f"{what}: no step with reference gradients"
    assert all(s["same_decision"] for s in steps), what
    worst_G, worst_x = max(s["G"] for s in steps), max(s["x"] for s in steps)
    assert worst_G <= TOL, f"{what}: reference gradients differ by {worst_G:.2e}"
    assert worst_x <= TOL, f"{what}: applied updates differ by {worst_x:.2e}"


def test_gem_learning_steps_equal_classic(learned3, classic_kernels, monkeypatch):
    steps = _learn_twin(clone_state(learned3), monkeypatch)
    _assert_strict(steps, "gem")
    assert any(s["projected"] for s in steps), "the test must exercise the projection"


@pytest.mark.parametrize("algo", UNLEARN_ALGOS)
def test_unlearning_steps_equal_classic(learned3, algo, classic_kernels, monkeypatch):
    _assert_strict(_unlearn_twin(clone_state(learned3), algo, monkeypatch), algo)


def test_default_kernels_steps_equal_classic_up_to_relu_kinks(learned3, monkeypatch):
    monkeypatch.setitem(grads.FAST_OPTIONS, "channels_last", None)
    monkeypatch.setitem(grads.FAST_OPTIONS, "dense_small_conv", True)
    steps = _learn_twin(clone_state(learned3), monkeypatch)
    steps += _unlearn_twin(clone_state(learned3), "neggem", monkeypatch)
    assert all(s["same_decision"] for s in steps)
    assert float(np.median([s["G"] for s in steps])) <= TOL
    assert float(np.median([s["x"] for s in steps])) <= TOL
    assert max(s["G"] for s in steps) <= 1e-2 and max(s["x"] for s in steps) <= 1e-3


# ---------------------------------------------------------------- the grouped kernel itself


def _batches(shape, sizes, n_classes=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for j, n in enumerate(sizes):
        x = torch.randn(n, *shape, generator=gen)
        y = torch.randint(0, 2, (n,), generator=gen)
        out.append(TaskBatch(x, y, torch.tensor([(2 * j) % n_classes, (2 * j + 1) % n_classes])))
    return out


@pytest.mark.parametrize("kernels", ["classic", "default"])
@pytest.mark.parametrize("kind,width,shape", [("resnet18", 4, (1, 8, 8)), ("resnet18", 4, (3, 8, 8)),
                                              ("resnet18", 4, (1, 4, 4)), ("mlp", 16, (1, 8, 8))])
def test_grouped_equals_classic_ragged_and_chunked(kind, width, shape, kernels, monkeypatch):
    if kernels == "classic":
        monkeypatch.setitem(grads.FAST_OPTIONS, "channels_last", False)
        monkeypatch.setitem(grads.FAST_OPTIONS, "dense_small_conv", False)
    torch.manual_seed(0)
    model = build_model(kind, width, shape, 10)
    batches = _batches(shape, [12, 12, 7, 5])  # unequal buffer sizes
    import copy

    fast, chunked = copy.deepcopy(model), copy.deepcopy(model)
    Gc = ref_grads_classic(model, batches)
    Gf = ref_grads_fast(fast, batches)
    assert grads._UNSUPPORTED.get(fast) is None
    assert Gf.shape == Gc.shape and _rows_rel(Gf, Gc) <= TOL
    monkeypatch.setitem(grads.FAST_OPTIONS, "chunk_mb", 1e-6)  # one task per chunk
    grads.clear_cache()
    assert _rows_rel(ref_grads_fast(chunked, batches), Gc) <= TOL
    # BatchNorm running statistics: the same sequential updates, one per task, in one
    # grouped pass or in chunks, as the classic per-task passes (SPEC §2)
    for k, v in model.state_dict().items():
        for other in (fast, chunked):
            w = other.state_dict()[k]
            if "num_batches_tracked" in k:
                assert int(w) == int(v) == len(batches), k
            else:
                assert torch.allclose(w, v, rtol=1e-5, atol=1e-6), k


def test_stacked_buffers_are_cached_per_batch_list_and_invalidated():
    torch.manual_seed(0)
    model = build_model("resnet18", 4, (1, 8, 8), 10)
    batches = _batches((1, 8, 8), [8, 8])
    grads.clear_cache()
    G1 = ref_grads_fast(model, batches)
    cached = grads._STACK_CACHE[0]
    G2 = ref_grads_fast(model, list(batches))  # same tensors: reused
    assert grads._STACK_CACHE[0] is cached and torch.equal(G1, G2)
    batches[1].x.mul_(2.0)  # modified in place: rebuilt
    G3 = ref_grads_fast(model, batches)
    assert grads._STACK_CACHE[0] is not cached
    assert _rows_rel(G3, ref_grads_classic(model, batches)) <= 1e-4


class _Scaled(nn.Module):
    """Uses a parameter outside conv/linear/batch_norm: the grouped path must step aside."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x.flatten(1)) * self.scale


def test_unsupported_models_fall_back_and_unused_parameters_get_zero():
    torch.manual_seed(0)
    model = _Scaled()
    batches = _batches((1, 8, 8), [6, 6])
    Gc = ref_grads_classic(model, batches)
    Gf = ref_grads_fast(model, batches)
    assert "parameter used by" in grads._UNSUPPORTED[model]
    assert _rows_rel(Gf, Gc) <= TOL
    assert torch.equal(Gf[:, -12:], torch.zeros(2, 12))  # self.unused
    assert _rows_rel(ref_grads_vmap(model, batches), Gc) <= TOL


def test_unused_parameters_zero_in_grouped_path(classic_kernels):
    torch.manual_seed(0)
    model = build_model("mlp", 16, (1, 8, 8), 10)
    model.extra = nn.Linear(2, 2)  # registered after the net: its columns come last
    batches = _batches((1, 8, 8), [6, 6])
    Gf = ref_grads_fast(model, batches)
    assert model not in grads._UNSUPPORTED
    assert torch.equal(Gf[:, -6:], torch.zeros(2, 6))
    assert _rows_rel(Gf, ref_grads_classic(model, batches)) <= TOL


def test_empty_reference_set():
    model = build_model("mlp", 8, (1, 8, 8), 10)
    assert ref_grads_fast(model, []).shape == (0, sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------- projection, precision


def test_blocked_cpu_projection_equals_unblocked(monkeypatch):
    from cluctl import projection as proj

    gen = torch.Generator().manual_seed(3)
    g = torch.randn(300_000, generator=gen)
    G = torch.randn(7, 300_000, generator=gen)
    G[:3] = -0.7 * g + 0.5 * G[:3]
    assert proj._blocked(G)
    xb, ib = proj.gem_step(g, G, 0.5, impl="fast")
    monkeypatch.setattr(proj, "_BLOCK_MIN_NUMEL", 1 << 62)
    xu, iu = proj.gem_step(g, G, 0.5, impl="fast")
    assert ib.projected and iu.projected
    # x is float32 (formed in float64, then cast): blocked and unblocked float64 sums differ
    # in their last bits, which can flip a float32 rounding; tolerances follow the dtype
    assert xb.dtype == torch.float32
    assert _rel(xb, xu) <= 4 * torch.finfo(xb.dtype).eps
    np.testing.assert_allclose(ib.v, iu.v, rtol=1e-9)  # v is float64


def test_bf16_grouped_path_runs_close_to_float32():
    """The grads-level bf16 code on the CPU (the engine allows it on CPUs with native bf16)."""
    torch.manual_seed(0)
    model = build_model("mlp", 32, (1, 8, 8), 10)
    batches = _batches((1, 8, 8), [16, 16])
    G32 = ref_grads_classic(model, batches)
    with forward_precision("bf16"):
        Gf = ref_grads_fast(model, batches)
        Gc = ref_grads_classic(model, batches)
    assert Gf.dtype == torch.float32 and bool(torch.isfinite(Gf).all())
    assert _rows_rel(Gf, G32) < 0.1 and _rows_rel(Gc, G32) < 0.1
    with forward_precision("bf16"):
        torch.manual_seed(1)
        resnet = build_model("resnet18", 4, (1, 8, 8), 10)
        assert bool(torch.isfinite(ref_grads_fast(resnet, batches)).all())


def test_engine_refuses_bf16_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setenv("CLUCTL_CPU_BF16", "0")  # as on a CPU without AMX or AVX512-BF16
    st = new_state(run_config(dataset="digits", model="mlp", width=8, epochs=1, memories=8,
                              learn_buffer_type="first", unlearn_buffer_type="same"), device="cpu")
    msg = "--precision bf16 needs a CUDA device or a CPU with native bf16"
    with pytest.raises(UsageError, match=msg):
        learn_task(st, 0, precision="bf16")
    st.execution["precision"] = "bf16"
    with pytest.raises(UsageError, match=msg):
        learn_task(st, 0)
    assert st.learned == [] and st.history == []


@pytest.mark.parametrize("env,native,expected", [("0", True, False), ("off", True, False), ("1", False, True),
                                                 ("", True, True), ("", False, False), ("auto", False, False)])
def test_cpu_bf16_detection_and_its_override(monkeypatch, env, native, expected):
    import cluctl.grads as G

    monkeypatch.setenv("CLUCTL_CPU_BF16", env)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert G.cpu_bf16_native() is expected
    assert G.bf16_supported(torch.device("cpu")) is expected
    assert G.bf16_supported(torch.device("cuda")) is True


def test_engine_runs_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    """Where the CPU has native bf16 the engine runs the training forward passes under bf16
    autocast (forced here, so the test runs on any CPU): the result differs from float32 by
    rounding, and learns as well."""
    monkeypatch.setenv("CLUCTL_CPU_BF16", "1")
    cfg = run_config(dataset="digits", model="mlp", width=32, epochs=1, memories=32, learn_buffer_type="first",
                     unlearn_buffer_type="same", seed=3)
    runs = {}
    for prec in ("fp32", "bf16"):
        st = new_state(cfg, device="cpu")
        for t in (0, 1):  # task 1 has a reference gradient (the grouped path under autocast)
            learn_task(st, t, precision=prec)
        runs[prec] = (torch.cat([p.detach().flatten() for p in st.model.parameters()]),
                      evaluate_state(st)["test_acc"])
    (w32, acc32), (w16, acc16) = runs["fp32"], runs["bf16"]
    assert (w32 - w16).abs().max() > 1e-4  # bf16 was applied
    assert bool(torch.isfinite(w16).all())
    assert abs(float(np.mean(acc16[:2])) - float(np.mean(acc32[:2]))) < 0.1, (acc16, acc32)


@pytest.mark.parametrize("impl", [ref_grads_classic, ref_grads_fast, ref_grads_vmap])
def test_ref_bn_update_set_through_the_package_takes_effect(impl, monkeypatch):
    """``cluctl.grads.REF_BN_UPDATE`` (what benchmarks/bench_spread.py assigns) is the state in
    ``cluctl.grads.options`` that every implementation reads: off, the reference passes leave
    BatchNorm's running statistics alone; on (SPEC §2), they update them."""
    import cluctl.grads.options as options

    batches = _batches((1, 8, 8), [6, 6])
    for flag in (False, True):
        torch.manual_seed(0)
        model = build_model("resnet18", 4, (1, 8, 8), 10)
        before = model.bn1.running_mean.clone()
        monkeypatch.setattr(grads, "REF_BN_UPDATE", flag)
        assert options.REF_BN_UPDATE is flag and grads.REF_BN_UPDATE is flag
        impl(model, batches)
        assert torch.equal(model.bn1.running_mean, before) is (not flag)
    grads.clear_cache()
