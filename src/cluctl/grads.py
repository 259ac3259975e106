"""Gradients as flat vectors: the current batch's, and the per-task reference gradients.

Implementations of the reference gradients (SPEC §2, §4), selected by ``impl``:

- ``classic``: the structure of GEM's reference code — one forward/backward per retained
  task, each parameter's gradient copied into a preallocated p x t matrix.
- ``fast`` (:func:`ref_grads_fast`): all retained tasks in one forward and one backward
  pass over the concatenated buffers ("grouped" gradients). Convolutions, linear layers
  and BatchNorm are intercepted (a ``TorchFunctionMode``) and replaced by autograd
  functions that

  * normalise each task's samples with that task's own BatchNorm batch statistics
    (exactly what a separate forward per task does), and
  * in the backward pass write each task's parameter gradient straight into its row of
    the t x p output (no per-task backward, no ``.grad`` round trip, no concatenation);
    the input gradients flow through the whole concatenated batch in one call.

  Faster kernels, same sums: 4-D activations go channels-last (mkldnn convolutions ~1.3x
  faster on the reduced ResNet-18, up to 3.5x for its 20-channel 32x32 stage), and a
  convolution over a map with fewer pixels than kernel taps (the 2x2 and 1x1 stages on
  8x8 digits) is one GEMM with the unrolled convolution matrix, which leaves out the
  products with zero padding (2-9x fewer multiplications there). These change float
  rounding only (``FAST_OPTIONS`` turns them off). A model that uses a parameter in any
  other operation falls back to :func:`ref_grads_vmap`.
- :func:`ref_grads_vmap`: the previous fast path, ``torch.func.vmap`` over tasks of
  ``grad(masked CE)``; kept for models the grouped path cannot handle and for benchmarks.

On CUDA the grouped pass is captured as a CUDA graph once per operation (its buffers are
fixed; SGD updates the weights in place) and replayed at every later step
(:class:`GraphedRefGrads`; ``FAST_OPTIONS["cuda_graphs"]`` or ``CLUCTL_CUDA_GRAPHS=0`` turn
it off): the same kernels without hundreds of launches per step.

All compute reference gradients in train mode, each task's buffer normalised with its own
batch statistics, and (SPEC §2) each task's pass updates BatchNorm's running statistics in
turn, in the order of ``batches``, exactly as one forward per task does (the grouped path
calls the same native kernel per task with the running buffers, and counts
``num_batches_tracked`` once per task); they agree to float rounding, running statistics
included (tests/test_fastpath.py). ``REF_BN_UPDATE = False`` restores the earlier behaviour
(reference passes leave the running statistics alone) for benchmarks that compare the two.
Measurements that are not training steps use :func:`reference_mode` (batch statistics,
running statistics untouched).

Mixed precision: inside :func:`forward_precision` (``"bf16"``) the training forward passes
(:func:`batch_grad`, classic and grouped reference gradients; the vmap fallback stays
float32) run under ``torch.autocast``/in bf16; gradients are accumulated into float32 and
the projection is unchanged. The engine allows it on CUDA and on CPUs with native bf16
instructions (:func:`bf16_supported`: AMX or AVX512-BF16; on a 2-core AMX Xeon a
CIFAR-shaped fast step at T = 5 is 2.1x faster than in float32, an 8x8 digits step at
T = 4 1.4x), and refuses it on CPUs without hardware bf16.
"""

from __future__ import annotations

import contextvars
import os
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

# Tunables of the fast path (benchmarks flip them; the defaults are the measured best).
#   channels_last: None = on for 4-D inputs on every device, True/False to force.
#   dense_small_conv: convolutions over maps with fewer pixels than kernel taps as one GEMM
#             with the unrolled convolution matrix (exact; skips the zero-padding products).
#   chunk_mb: bound on the activations of one grouped pass (tasks are processed in chunks);
#             None = $CLUCTL_REF_CHUNK_MB, else 1500 MB on CPU and 12000 MB on CUDA (the
#             full-scale CIFAR step, 19 x 256 memories, needs about 7.5 GB in float32).
#   cuda_graphs: on CUDA, capture the grouped pass of one operation's fixed buffers as a CUDA
#             graph and replay it at every later step (see GraphedRefGrads); None = on unless
#             $CLUCTL_CUDA_GRAPHS=0, True/False to force.
#   cudnn_benchmark: on CUDA, let cuDNN time its algorithms for the grouped pass's shapes
#             (torch.backends.cudnn.benchmark, set only around that pass; off by default:
#             not yet measured, see benchmarks/bench_step.py's fast-cudnnbench).
FAST_OPTIONS: dict = {"channels_last": None, "dense_small_conv": True, "chunk_mb": None, "cuda_graphs": None,
                      "cudnn_benchmark": False}

# Do the reference-gradient passes update BatchNorm's running statistics (SPEC §2: yes)?
# Only benchmarks flip this, to measure the earlier behaviour (False) side by side.
REF_BN_UPDATE = True


@contextmanager
def _ref_bn(model: nn.Module):
    """Train mode for a reference pass: running statistics updated (SPEC §2) unless
    :data:`REF_BN_UPDATE` is off, in which case they are left alone."""
    if not REF_BN_UPDATE:
        with reference_mode(model):
            yield
        return
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class TaskBatch:
    """Inputs, masked targets (0..k-1) and the task's class ids (k) for one loss."""

    x: torch.Tensor
    y: torch.Tensor
    classes: torch.Tensor


def _bn_modules(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def reference_mode(model: nn.Module):
    """Train mode with batch statistics, but BatchNorm running statistics untouched."""
    bns = _bn_modules(model)
    saved = [m.track_running_stats for m in bns]
    was_training = model.training
    model.train()
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, s in zip(bns, saved):
            m.track_running_stats = s
        model.train(was_training)


# ---------------------------------------------------------------- precision

_PRECISION: contextvars.ContextVar = contextvars.ContextVar("cluctl_forward_precision", default=None)


@contextmanager
def forward_precision(precision: str | None):
    """Run the training forward passes of this module under bf16 autocast (``"bf16"``) or
    in float32 (``None``/``"fp32"``). The caller checks the device (the engine allows bf16
    where :func:`bf16_supported`)."""
    if precision in (None, "fp32"):
        tok = _PRECISION.set(None)
    elif precision == "bf16":
        tok = _PRECISION.set(torch.bfloat16)
    else:
        from .errors import UsageError

        raise UsageError(f"unknown precision {precision!r}", "use fp32 or bf16")
    try:
        yield
    finally:
        _PRECISION.reset(tok)


def cpu_bf16_native() -> bool:
    """Does this CPU have native bf16 matrix instructions (Intel AMX, or AVX512-BF16)?
    ``$CLUCTL_CPU_BF16`` = 0/1 overrides the detection (1 also allows emulated bf16)."""
    env = os.environ.get("CLUCTL_CPU_BF16", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except Exception:  # noqa: BLE001 - a torch without these probes: assume none
        return False


def bf16_supported(device: torch.device) -> bool:
    """Where ``--precision bf16`` is allowed: CUDA, and CPUs with native bf16."""
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_native())


def _autocast(device: torch.device, cache: bool = True):
    dt = _PRECISION.get()
    if dt is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dt, cache_enabled=cache)


# ---------------------------------------------------------------- basics


def masked_ce(logits: torch.Tensor, y: torch.Tensor, classes: torch.Tensor, reduction: str = "mean"):
    """Cross-entropy over a task's k logits; ``y`` already holds positions 0..k-1."""
    idx = classes.reshape(1, -1).expand(logits.shape[0], -1)
    return F.cross_entropy(torch.gather(logits, 1, idx), y, reduction=reduction)


def param_list(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in param_list(model))


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
    )


def batch_grad(model: nn.Module, loss_fn, update_bn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat gradient of ``loss_fn(model)`` (train mode). Returns (grad, loss)."""
    params = param_list(model)
    model.train()
    for p in params:
        p.grad = None
    with _autocast(params[0].device):
        if update_bn:
            loss = loss_fn(model)
        else:
            with reference_mode(model):
                loss = loss_fn(model)
    loss.backward()
    g = flat_grad(params)
    for p in params:
        p.grad = None
    return g, loss.detach()


# ---------------------------------------------------------------- classic


def ref_grads_classic(model: nn.Module, batches: list[TaskBatch]) -> torch.Tensor:
    """GEM reference code's structure: per task forward/backward, store_grad into p x t."""
    params = param_list(model)
    numels = [p.numel() for p in params]
    total = sum(numels)
    grads = torch.zeros(total, len(batches), device=params[0].device, dtype=params[0].dtype)
    for j, b in enumerate(batches):
        for p in params:
            p.grad = None
        with _ref_bn(model), _autocast(params[0].device):
            loss = masked_ce(model(b.x), b.y, b.classes)
        loss.backward()
        beg = 0
        for p, n in zip(params, numels):  # GEM's store_grad
            if p.grad is not None:
                grads[beg : beg + n, j].copy_(p.grad.reshape(-1))
            beg += n
    for p in params:
        p.grad = None
    return grads.t()


# ---------------------------------------------------------------- vmap (previous fast path)


def ref_grads_vmap(model: nn.Module, batches: list[TaskBatch], chunk_samples: int = 8192) -> torch.Tensor:
    """All tasks' gradients at once: vmap over tasks of grad(masked CE).

    Tasks are grouped by buffer size (vmap needs equal shapes); groups are processed in
    chunks of at most ``chunk_samples`` samples to bound memory.
    """
    if not batches:
        p = param_list(model)[0]
        return torch.zeros(0, n_params(model), device=p.device, dtype=p.dtype)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_fn(ps, x, y, cls):
        out = functional_call(model, ({**ps, **frozen}, buffers), (x,))
        return masked_ce(out, y, cls)

    gfn = vmap(grad(loss_fn), in_dims=(None, 0, 0, 0))
    out: list[torch.Tensor | None] = [None] * len(batches)
    groups: dict[tuple, list[int]] = {}
    for j, b in enumerate(batches):
        groups.setdefault((tuple(b.x.shape), b.classes.numel()), []).append(j)
    with reference_mode(model):
        for (shape, _k), members in groups.items():
            per = max(1, chunk_samples // max(1, shape[0]))
            for s in range(0, len(members), per):
                idx = members[s : s + per]
                X = torch.stack([batches[j].x for j in idx])
                Y = torch.stack([batches[j].y for j in idx])
                C = torch.stack([batches[j].classes for j in idx])
                g = gfn(params, X, Y, C)  # float32 even under bf16 (autocast breaks grad in vmap)
                flat = torch.cat([g[n].reshape(len(idx), -1) for n in names], dim=1)
                for r, j in enumerate(idx):
                    out[j] = flat[r]
    if REF_BN_UPDATE and _bn_modules(model):
        # vmap cannot update module buffers: one forward per task, in order, updates the
        # running statistics as the classic passes do (only this fallback pays for it)
        was = model.training
        model.train()
        with torch.no_grad():
            for b in batches:
                model(b.x)
        model.train(was)
    return torch.stack(out)  # type: ignore[arg-type]


# ---------------------------------------------------------------- grouped (fast path)


class _Unsupported(Exception):
    """The model does something the grouped path does not intercept; use vmap instead."""


_conv_bwd = torch.ops.aten.convolution_backward.default
_bn_fwd = torch.ops.aten.native_batch_norm.default
_bn_bwd = torch.ops.aten.native_batch_norm_backward.default
_bn_fwd_out = torch.ops.aten.native_batch_norm.out
_bn_bwd_out = torch.ops.aten.native_batch_norm_backward.out


class _Plan:
    """One grouped pass: row j of ``out`` receives the gradient of task j, whose samples
    are ``segs[j]`` (start, stop) of the concatenated batch."""

    def __init__(self, out: torch.Tensor, offsets: dict, segs: list[tuple[int, int]],
                 cast: torch.dtype | None, channels_last: bool):
        self.out = out
        self.fmt = torch.channels_last if channels_last else None
        self.offsets = offsets  # id(param) -> (offset, numel)
        self.segs = segs
        self.T = len(segs)
        self.N = segs[-1][1]
        sizes = {e - s for s, e in segs}
        self.n = sizes.pop() if len(sizes) == 1 else None  # equal sizes: batched kernels
        self.cast = cast
        self.written: set[int] = set()
        self.token = torch.zeros((), device=out.device, requires_grad=True)
        self.bn_modules: dict[int, nn.Module] = {}  # id(running_mean) -> its BatchNorm module

    def target(self, pid: int) -> tuple[torch.Tensor, bool]:
        """(t x numel view of the parameter's columns, accumulate?)."""
        off, numel = self.offsets[pid]
        add = pid in self.written
        self.written.add(pid)
        return self.out[:, off : off + numel], add


def _put(dst: torch.Tensor, src: torch.Tensor, add: bool) -> None:
    src = src.reshape(dst.shape)
    if add:
        dst.add_(src)
    else:
        dst.copy_(src)


class _GroupedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, token, w, b, conf, plan, ids):
        if plan.cast is not None:
            x, w = x.to(plan.cast), w.to(plan.cast)
            b = None if b is None else b.to(plan.cast)
        ctx.conf, ctx.plan, ctx.ids = conf, plan, ids
        dense = _dense_map(x, w, conf)
        ctx.dense = dense
        if dense is not None:  # tiny spatial map: one GEMM with the unrolled convolution matrix
            N = x.shape[0]
            xf = x.reshape(N, dense.K)
            M = dense.matrix(w)
            out = (xf @ M).view(N, w.shape[0], dense.Ho, dense.Wo)
            if b is not None:
                out = out + b.view(1, -1, 1, 1)
            ctx.save_for_backward(xf, M)
        else:
            if plan.fmt is not None:  # (a 1-channel input does not propagate channels-last by itself)
                x = x.contiguous(memory_format=plan.fmt)
            ctx.save_for_backward(x, w)
            stride, padding, dilation, groups = conf
            out = F.conv2d(x, w, b, stride, padding, dilation, groups)
        return out if plan.fmt is None else out.contiguous(memory_format=plan.fmt)

    @staticmethod
    def backward(ctx, go):
        if ctx.dense is not None:
            return _GroupedConv._dense_backward(ctx, go)
        x, w = ctx.saved_tensors
        plan, (wid, bid) = ctx.plan, ctx.ids
        stride, padding, dilation, groups = ctx.conf
        if go.dtype != x.dtype:
            go = go.to(x.dtype)
        if plan.fmt is not None:
            go = go.contiguous(memory_format=plan.fmt)
        zeros = [0] * len(stride)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = _conv_bwd(go, x, w, None, stride, padding, dilation, False, zeros, groups,
                           [True, False, False])[0]
        dst, add = plan.target(wid)
        for j, (s, e) in enumerate(plan.segs):
            gw = _conv_bwd(go[s:e], x[s:e], w, None, stride, padding, dilation, False, zeros, groups,
                           [False, True, False])[1]
            _put(dst[j], gw, add)
        _GroupedConv._bias(plan, bid, go)
        return gx, None, None, None, None, None, None

    @staticmethod
    def _bias(plan, bid, go):
        if bid is None:
            return
        dst, add = plan.target(bid)
        red = [0] + list(range(2, go.dim()))
        for j, (s, e) in enumerate(plan.segs):
            _put(dst[j], go[s:e].sum(red), add)

    @staticmethod
    def _dense_backward(ctx, go):
        xf, M = ctx.saved_tensors
        plan, (wid, bid), dense = ctx.plan, ctx.ids, ctx.dense
        if go.dtype != xf.dtype:
            go = go.to(xf.dtype)
        N = xf.shape[0]
        gf = go.reshape(N, dense.Q)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = (gf @ M.t()).view(N, *dense.in_shape)
            if plan.fmt is not None:
                gx = gx.contiguous(memory_format=plan.fmt)
        # dM_j = x_j^T go_j, then each weight collects the entries of dM it appears in
        dst, add = plan.target(wid)
        sel, idx = dense.sel, dense.idx
        if plan.n is not None:
            T, n = plan.T, plan.n
            dM = torch.bmm(xf.view(T, n, dense.K).transpose(1, 2), gf.view(T, n, dense.Q))
            vals = dM.reshape(T, -1)[:, sel].to(dst.dtype)
            if add:
                dst.index_add_(1, idx, vals)
            else:
                dst.zero_().index_add_(1, idx, vals)
        else:
            for j, (s, e) in enumerate(plan.segs):
                vals = (xf[s:e].t() @ gf[s:e]).reshape(-1)[sel].to(dst.dtype)
                if not add:
                    dst[j].zero_()
                dst[j].index_add_(0, idx, vals)
        _GroupedConv._bias(plan, bid, go)
        return gx, None, None, None, None, None, None


class _DenseMap:
    """A convolution over a tiny spatial map (fewer input pixels than kernel taps, e.g. the
    reduced ResNet-18's last stages on 8x8 digits: 2x2 and 1x1) as one dense matrix
    ``M`` [Cin*H*W, Cout*Ho*Wo] whose entries are the weights each (input pixel, output
    pixel) pair uses, zero where the kernel only meets padding. ``x @ M`` is the
    convolution with the zero-padding products left out: the same sums, 2-9x fewer
    multiplications. ``sel``/``idx``: the nonzero entries of ``M`` and their weight index."""

    def __init__(self, in_shape, w_shape, conf, device):
        import numpy as np

        (stride, padding, dilation, _groups), (cin, H, W) = conf, in_shape
        cout, _, kh, kw = w_shape
        Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        o, c, ki, kj, i, j = np.ix_(range(cout), range(cin), range(kh), range(kw), range(Ho), range(Wo))
        h = i * stride[0] - padding[0] + ki * dilation[0]
        v = j * stride[1] - padding[1] + kj * dilation[1]
        valid = (h >= 0) & (h < H) & (v >= 0) & (v < W)
        full = np.broadcast_shapes(o.shape, c.shape, ki.shape, kj.shape, i.shape, j.shape)
        valid = np.broadcast_to(valid, full)
        rows = np.broadcast_to((c * H + h) * W + v, full)[valid]
        cols = np.broadcast_to((o * Ho + i) * Wo + j, full)[valid]
        widx = np.broadcast_to(((o * cin + c) * kh + ki) * kw + kj, full)[valid]
        self.in_shape, self.Ho, self.Wo = (cin, H, W), Ho, Wo
        self.K, self.Q = cin * H * W, cout * Ho * Wo
        self.sel = torch.from_numpy(rows * self.Q + cols).to(device)
        self.idx = torch.from_numpy(widx).to(device)

    def matrix(self, w: torch.Tensor) -> torch.Tensor:
        M = torch.zeros(self.K * self.Q, dtype=w.dtype, device=w.device)
        M[self.sel] = w.reshape(-1)[self.idx]
        return M.view(self.K, self.Q)


_DENSE_MAPS: dict[tuple, _DenseMap | None] = {}


def _dense_map(x: torch.Tensor, w: torch.Tensor, conf) -> _DenseMap | None:
    """The dense form of this convolution when it pays: groups 1, fewer than 3/4 as many
    input pixels as kernel taps, and a matrix of at most 4M entries."""
    if not FAST_OPTIONS.get("dense_small_conv", True) or conf[3] != 1:
        return None
    cin, H, W = x.shape[1:]
    kh, kw = w.shape[2:]
    if 4 * H * W > 3 * kh * kw:
        return None
    key = (tuple(x.shape[1:]), tuple(w.shape), tuple(map(tuple, conf[:3])), str(x.device))
    if key not in _DENSE_MAPS:
        m = _DenseMap((cin, H, W), tuple(w.shape), conf, x.device)
        _DENSE_MAPS[key] = m if 0 < m.K * m.Q <= 4 * 2**20 and m.Ho > 0 and m.Wo > 0 else None
    return _DENSE_MAPS[key]


class _GroupedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, token, w, b, plan, ids):
        if plan.cast is not None:
            x, w = x.to(plan.cast), w.to(plan.cast)
            b = None if b is None else b.to(plan.cast)
        ctx.save_for_backward(x, w)
        ctx.plan, ctx.ids = plan, ids
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx, go):
        x, w = ctx.saved_tensors
        plan, (wid, bid) = ctx.plan, ctx.ids
        if go.dtype != x.dtype:
            go = go.to(x.dtype)
        gx = go @ w if ctx.needs_input_grad[0] else None
        dst, add = plan.target(wid)
        if plan.n is not None:
            T, n = plan.T, plan.n
            go3 = go.reshape(T, n, -1)
            _put(dst, torch.bmm(go3.transpose(1, 2), x.reshape(T, n, -1)), add)
            if bid is not None:
                dst, add = plan.target(bid)
                _put(dst, go3.sum(1), add)
        else:
            for j, (s, e) in enumerate(plan.segs):
                _put(dst[j], go[s:e].t() @ x[s:e], add)
            if bid is not None:
                dst, add = plan.target(bid)
                for j, (s, e) in enumerate(plan.segs):
                    _put(dst[j], go[s:e].sum(0), add)
        return gx, None, None, None, None, None


class _GroupedBatchNorm(torch.autograd.Function):
    """Training-mode BatchNorm with each task's own batch statistics (native kernels per
    task: on CPU 4x faster than a vectorised formula over all tasks). With running
    statistics (``stats`` = (running_mean, running_var, momentum, module)), each task's
    kernel call updates them in turn, as one forward per task would."""

    @staticmethod
    def forward(ctx, x, token, gamma, beta, eps, plan, ids, stats=None):
        y = torch.empty_like(x)
        T, C = plan.T, x.shape[1]
        rm = rv = None
        mom = 0.0
        if stats is not None:
            rm, rv, mom, module = stats
            if module is not None and T > 1:  # the module counted this forward once; one per task
                module.num_batches_tracked.add_(T - 1)
        if x.dtype == torch.float32 and (gamma is None or gamma.dtype == torch.float32):
            # write straight into y's slices (saves a copy per task)
            means = x.new_empty(T, C)
            invstds = x.new_empty(T, C)
            for j, (s, e) in enumerate(plan.segs):
                _bn_fwd_out(x[s:e], gamma, beta, rm, rv, True, mom, eps,
                            out=y[s:e], save_mean=means[j], save_invstd=invstds[j])
        else:  # mixed precision (bf16 activations, float32 affine parameters)
            ms, istds = [], []
            for s, e in plan.segs:
                ys, m, istd = _bn_fwd(x[s:e], gamma, beta, rm, rv, True, mom, eps)
                y[s:e] = ys
                ms.append(m)
                istds.append(istd)
            means, invstds = torch.stack(ms), torch.stack(istds)
        ctx.save_for_backward(x, gamma, means, invstds)
        ctx.eps, ctx.plan, ctx.ids = eps, plan, ids
        return y

    @staticmethod
    def backward(ctx, gy):
        x, gamma, means, invstds = ctx.saved_tensors
        plan, (gid, bid) = ctx.plan, ctx.ids
        if gy.dtype != x.dtype:
            gy = gy.to(x.dtype)
        need_x = ctx.needs_input_grad[0]
        has_g, has_b = gid is not None, bid is not None
        gx = torch.empty_like(x) if need_x else None
        dg = db = None
        add_g = add_b = False
        if has_g:
            dg, add_g = plan.target(gid)
            db, add_b = plan.target(bid)
        direct = (need_x and has_g and not add_g and not add_b and x.dtype == torch.float32
                  and gamma.dtype == torch.float32 and dg.dtype == torch.float32)
        mask = [need_x, has_g, has_b]
        for j, (s, e) in enumerate(plan.segs):
            if direct:  # input gradient and dgamma/dbeta written in place
                _bn_bwd_out(gy[s:e], x[s:e], gamma, None, None, means[j], invstds[j], True, ctx.eps, mask,
                            out0=gx[s:e], out1=dg[j], out2=db[j])
                continue
            dx, dgam, dbet = _bn_bwd(gy[s:e], x[s:e], gamma, None, None, means[j], invstds[j], True,
                                     ctx.eps, mask)
            if need_x:
                gx[s:e] = dx
            if has_g:
                _put(dg[j], dgam, add_g)
                _put(db[j], dbet, add_b)
        return gx, None, None, None, None, None, None, None


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_BN_DEFAULTS = (None, None, None, None, None, False, 0.1, 1e-5)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = (None, None, None, 1, 0, 1, 1)


def _bind(names, defaults, args, kwargs) -> dict:
    vals = dict(zip(names, defaults))
    vals.update(zip(names, args))
    vals.update(kwargs)
    return vals


def _pair(v) -> list[int]:
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


class _GroupedMode(TorchFunctionMode):
    """Routes conv2d / linear / batch_norm calls through the grouped autograd functions;
    any other use of a trainable parameter raises :class:`_Unsupported`."""

    def __init__(self, plan: _Plan):
        super().__init__()
        self.plan = plan

    def _pid(self, t):
        if t is None:
            return None
        if not isinstance(t, torch.Tensor) or id(t) not in self.plan.offsets:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise _Unsupported("a weight that is not a trainable parameter of the model")
            raise _Unsupported("a frozen or foreign weight")
        return id(t)

    @staticmethod
    def _detach(t):
        return None if t is None else t.detach()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        plan = self.plan
        if func is F.conv2d or func is torch.conv2d:
            a = _bind(_CONV_ARGS, _CONV_DEFAULTS, args, kwargs)
            if isinstance(a["padding"], str):
                raise _Unsupported("string padding")
            if a["input"].dim() != 4 or a["input"].shape[0] != plan.N:
                raise _Unsupported("conv2d over something else than the stacked batch")
            ids = (self._pid(a["weight"]), self._pid(a["bias"]))
            conf = (_pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"]), int(a["groups"]))
            return _GroupedConv.apply(a["input"], plan.token, a["weight"].detach(), self._detach(a["bias"]),
                                      conf, plan, ids)
        if func is F.linear:
            a = _bind(("input", "weight", "bias"), (None, None, None), args, kwargs)
            if a["input"].dim() != 2 or a["input"].shape[0] != plan.N:
                raise _Unsupported("linear over something else than the stacked batch")
            ids = (self._pid(a["weight"]), self._pid(a["bias"]))
            return _GroupedLinear.apply(a["input"], plan.token, a["weight"].detach(), self._detach(a["bias"]),
                                        plan, ids)
        if func is F.batch_norm:
            a = _bind(_BN_ARGS, _BN_DEFAULTS, args, kwargs)
            if not a["training"]:
                raise _Unsupported("batch norm in eval mode")
            stats = None
            if a["running_mean"] is not None or a["running_var"] is not None:
                module = plan.bn_modules.get(id(a["running_mean"]))
                if (a["running_mean"] is None or a["running_var"] is None or module is None
                        or module.momentum is None):
                    raise _Unsupported("batch norm with running statistics the grouped pass cannot update")
                stats = (a["running_mean"], a["running_var"], float(a["momentum"]), module)
            ids = (self._pid(a["weight"]), self._pid(a["bias"]))
            if (ids[0] is None) != (ids[1] is None):
                raise _Unsupported("batch norm with only one of weight/bias")
            if a["input"].shape[0] != plan.N:
                raise _Unsupported("batch norm over something else than the stacked batch")
            return _GroupedBatchNorm.apply(a["input"], plan.token, self._detach(a["weight"]),
                                           self._detach(a["bias"]), float(a["eps"]), plan, ids, stats)
        offsets = plan.offsets
        for v in (*args, *kwargs.values()):
            if isinstance(v, torch.Tensor):
                if id(v) in offsets:
                    raise _Unsupported(f"parameter used by {getattr(func, '__name__', func)}")
            elif isinstance(v, (list, tuple)):
                for u in v:
                    if isinstance(u, torch.Tensor) and id(u) in offsets:
                        raise _Unsupported(f"parameter used by {getattr(func, '__name__', func)}")
        return func(*args, **kwargs)


class _Stacked:
    """The concatenated buffers of one list of TaskBatch (built once per operation: the
    engine reuses the same batches at every step)."""

    def __init__(self, batches: list[TaskBatch], channels_last: bool):
        self.refs = [(b.x, b.y, b.classes) for b in batches]
        self.versions = [tuple(t._version for t in r) for r in self.refs]
        self.channels_last = channels_last
        X = torch.cat([b.x for b in batches])
        if channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        self.X = X
        self.Y = torch.cat([b.y for b in batches])
        self.idx = torch.cat([b.classes.reshape(1, -1).expand(len(b.y), -1) for b in batches])
        sizes = [len(b.y) for b in batches]
        self.starts = [0]
        for n in sizes:
            self.starts.append(self.starts[-1] + n)
        self.weights = torch.cat([torch.full((n,), 1.0 / n, device=X.device) for n in sizes])

    def matches(self, batches: list[TaskBatch], channels_last: bool) -> bool:
        if channels_last != self.channels_last or len(batches) != len(self.refs):
            return False
        for b, r, v in zip(batches, self.refs, self.versions):
            if b.x is not r[0] or b.y is not r[1] or b.classes is not r[2]:
                return False
            if (b.x._version, b.y._version, b.classes._version) != v:
                return False
        return True


_STACK_CACHE: list[_Stacked] = []  # one entry: the latest operation's buffers
_UNSUPPORTED: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()
_SUPPORTED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()
_ACT_BYTES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _stacked(batches: list[TaskBatch], channels_last: bool) -> _Stacked:
    if _STACK_CACHE and _STACK_CACHE[0].matches(batches, channels_last):
        return _STACK_CACHE[0]
    _STACK_CACHE.clear()
    st = _Stacked(batches, channels_last)
    _STACK_CACHE.append(st)
    return st


def clear_cache() -> None:
    """Forget the cached concatenated buffers and CUDA graphs (tests, benchmarks)."""
    _STACK_CACHE.clear()
    release_graphs()


def _chunks(st: _Stacked, per_sample_bytes: float, device: torch.device) -> list[tuple[int, int]]:
    """Task ranges [a, b) whose activations fit the memory bound."""
    mb = FAST_OPTIONS.get("chunk_mb") or os.environ.get("CLUCTL_REF_CHUNK_MB")
    mb = float(mb) if mb else (12000 if device.type == "cuda" else 1500)
    budget = mb * 2**20
    out, a = [], 0
    T = len(st.starts) - 1
    while a < T:
        b = a + 1
        while b < T and (st.starts[b + 1] - st.starts[a]) * per_sample_bytes <= budget:
            b += 1
        out.append((a, b))
        a = b
    return out


def _per_sample_bytes(model: nn.Module, x: torch.Tensor) -> float:
    """A rough upper bound of the activation memory per sample of one grouped pass:
    (6 + 0.75 per conv/linear layer, at most 24 layers) float32 tensors the size of the
    widest activation (reduced ResNet-18 on 32x32: ~1.8 MB; measured ~1.5 MB)."""
    key = tuple(x.shape[1:])
    est = _ACT_BYTES.get(model)
    if est is not None and est[0] == key:
        return est[1]
    widest = x[0].numel()
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and x.dim() == 4:
            widest = max(widest, m.out_channels * x.shape[2] * x.shape[3])
        elif isinstance(m, nn.Linear):
            widest = max(widest, m.out_features)
    n_layers = sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    val = float(4 * widest * (6 + min(n_layers, 24) * 0.75))
    _ACT_BYTES[model] = (key, val)
    return val


def _want_channels_last(x: torch.Tensor) -> bool:
    opt = FAST_OPTIONS.get("channels_last")
    if x.dim() != 4:
        return False
    return True if opt is None else bool(opt)


@contextmanager
def _cudnn_benchmark(device: torch.device):
    if device.type != "cuda" or not FAST_OPTIONS.get("cudnn_benchmark"):
        yield
        return
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def ref_grads_grouped(model: nn.Module, batches: list[TaskBatch], autocast_cache: bool = True) -> torch.Tensor:
    """The grouped fast path (module docstring). Raises :class:`_Unsupported` for a model
    it cannot handle (nothing is changed in that case)."""
    params = param_list(model)
    p0 = params[0]
    offsets, off = {}, 0
    for p in params:
        offsets[id(p)] = (off, p.numel())
        off += p.numel()
    out = torch.empty(len(batches), off, device=p0.device, dtype=p0.dtype)
    st = _stacked(batches, _want_channels_last(batches[0].x))
    cast = _PRECISION.get()
    per = _per_sample_bytes(model, st.X) * (0.5 if cast is not None else 1.0)
    written: set[int] = set()
    bn_modules = {id(m.running_mean): m for m in _bn_modules(model) if m.running_mean is not None}
    with _ref_bn(model), torch.enable_grad(), _cudnn_benchmark(p0.device):
        for a, b in _chunks(st, per, p0.device):
            s0, s1 = st.starts[a], st.starts[b]
            segs = [(st.starts[j] - s0, st.starts[j + 1] - s0) for j in range(a, b)]
            plan = _Plan(out[a:b], offsets, segs, cast, st.channels_last)
            plan.bn_modules = bn_modules
            with _autocast(p0.device, cache=autocast_cache):
                with _GroupedMode(plan):
                    logits = model(st.X[s0:s1])
                ce = F.cross_entropy(torch.gather(logits, 1, st.idx[s0:s1]), st.Y[s0:s1], reduction="none")
                loss = (ce.float() * st.weights[s0:s1]).sum()
            loss.backward()
            written = plan.written
    for pid, (o, n) in offsets.items():
        if pid not in written:  # a parameter the loss does not depend on: zero, as classic
            out[:, o : o + n].zero_()
    return out


# ---------------------------------------------------------------- CUDA graphs


def _want_cuda_graphs(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    opt = FAST_OPTIONS.get("cuda_graphs")
    if opt is None:
        return os.environ.get("CLUCTL_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")
    return bool(opt)


class GraphedRefGrads:
    """The grouped pass over one operation's buffers, captured as a CUDA graph.

    Within one learn or unlearn operation the retained tasks and their buffers do not
    change; only the weights do, and SGD updates them in place. So the whole grouped
    forward/backward (a few hundred small kernels for the reduced ResNet-18, launch-bound
    on a GPU at nf = 20) is captured once and replayed at every later step: the replay
    reads the current weights from the same memory and writes the [t, p] gradients into
    the same output, which is cloned for the caller. Call 1 of a new key runs eagerly; call
    2 runs eagerly on a side stream (the warm-up that capture needs; its result is
    returned) and captures; later calls replay. The key is the model, the identity and
    version of every buffer tensor and of every parameter's storage, the precision and the
    fast-path options, so anything that changes them (a new operation, weights loaded into
    new tensors) makes a new capture. A capture that fails switches graphs off for the
    rest of the process with one warning; the eager path is then used.
    """

    def __init__(self, key: tuple, model: nn.Module, batches: list[TaskBatch]):
        self.key = key
        self.calls = 0
        self.graph = None
        self.out: torch.Tensor | None = None
        # strong references: the ids in the key cannot be reused by other objects, and the
        # memory the graph reads (buffers, their concatenation) stays allocated
        self.model, self.batches = model, list(batches)
        self.stacked: _Stacked | None = None
        self.stream = None

    def release(self) -> None:
        self.graph = self.out = self.stacked = self.model = self.stream = None
        self.batches = []


# the latest keys' graphs, most recent last; the engine releases them when an operation
# ends (within one operation there is one key). Four, so that a benchmark alternating
# settings (fp32, bf16, cuDNN benchmark mode) keeps them all instead of recapturing.
_GRAPH_CACHE: list[GraphedRefGrads] = []
_GRAPH_CACHE_SIZE = 4
_GRAPHS_BROKEN: list[str] = []
GRAPH_STATS = {"captures": 0, "replays": 0}  # counters for tests and benchmarks


def release_graphs() -> None:
    """Drop every captured graph and the memory pools behind them (the engine calls this
    at the end of each operation: its buffers are not used again)."""
    for entry in _GRAPH_CACHE:
        entry.release()
    _GRAPH_CACHE.clear()


def _graph_key(model: nn.Module, batches: list[TaskBatch]) -> tuple:
    params = param_list(model)
    return (id(model), tuple((id(b.x), b.x._version, id(b.y), b.y._version, id(b.classes), b.classes._version)
                             for b in batches),
            tuple((p.data_ptr(), tuple(p.shape)) for p in params), _PRECISION.get(),
            tuple(sorted((k, str(v)) for k, v in FAST_OPTIONS.items())))


def _graphed_ref_grads(model: nn.Module, batches: list[TaskBatch]) -> torch.Tensor:
    dev = param_list(model)[0].device
    # everything on the model's GPU, which need not be the current one (launch workers on
    # cuda:1 never call set_device): its streams, the capture and the replays
    with torch.cuda.device(dev):
        return _graphed_on_device(model, batches, dev)


def _graphed_on_device(model: nn.Module, batches: list[TaskBatch], dev: torch.device) -> torch.Tensor:
    key = _graph_key(model, batches)
    entry = next((e for e in _GRAPH_CACHE if e.key == key), None)
    if entry is None:
        while len(_GRAPH_CACHE) >= _GRAPH_CACHE_SIZE:
            _GRAPH_CACHE.pop(0).release()
        entry = GraphedRefGrads(key, model, batches)
    else:
        _GRAPH_CACHE.remove(entry)
    _GRAPH_CACHE.append(entry)
    entry.calls += 1
    if entry.graph is not None:
        entry.graph.replay()
        GRAPH_STATS["replays"] += 1
        return entry.out.clone()
    if entry.calls == 1:
        return ref_grads_grouped(model, batches)
    cur = torch.cuda.current_stream(dev)
    # the stacked buffers the graph will read: built (or found) on the current stream and
    # pinned by the entry before anything is captured
    entry.stacked = _stacked(batches, _want_channels_last(batches[0].x))
    # warm-up (its result is this step's) and capture on the entry's own stream: graphs
    # that share a capture stream share cuBLAS workspaces, which releasing one can free
    side = torch.cuda.Stream(device=dev)
    side.wait_stream(cur)
    with torch.cuda.stream(side):
        result = ref_grads_grouped(model, batches)
    cur.wait_stream(side)
    result.record_stream(cur)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(side):  # restores the caller's stream even if capture fails
            with torch.cuda.graph(graph, stream=side):
                out = ref_grads_grouped(model, batches, autocast_cache=False)
    except Exception as exc:  # noqa: BLE001 - any capture failure: eager from now on
        _GRAPHS_BROKEN.append(f"{type(exc).__name__}: {exc}")
        release_graphs()
        torch.cuda.synchronize(dev)
        import sys

        print(f"warning: CUDA graph capture of the reference gradients failed ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); using the eager fast path from now on "
              f"(if this process misbehaves later, rerun it with CLUCTL_CUDA_GRAPHS=0)", file=sys.stderr)
        return result
    entry.graph, entry.out, entry.stream = graph, out, side
    GRAPH_STATS["captures"] += 1
    return result


def ref_grads_fast(model: nn.Module, batches: list[TaskBatch], chunk_samples: int | None = None) -> torch.Tensor:
    """All retained tasks' reference gradients together, [t, p] (see the module docstring).
    ``chunk_samples`` is accepted for compatibility; memory is bounded by
    ``FAST_OPTIONS["chunk_mb"]``. On CUDA the grouped pass is replayed from a CUDA graph
    from an operation's third step on (:class:`GraphedRefGrads`)."""
    if not batches:
        p = param_list(model)[0]
        return torch.zeros(0, n_params(model), device=p.device, dtype=p.dtype)
    if model not in _UNSUPPORTED:
        known = model in _SUPPORTED
        # a model the grouped path meets for the first time may turn out unsupported after
        # some BatchNorm layers updated their running statistics: put them back first
        saved = None if known else [(b, b.detach().clone()) for b in model.buffers()]
        try:
            if not _GRAPHS_BROKEN and _want_cuda_graphs(param_list(model)[0].device):
                out = _graphed_ref_grads(model, batches)
            else:
                out = ref_grads_grouped(model, batches)
            if not known:
                _SUPPORTED[model] = True
            return out
        except _Unsupported as err:
            _UNSUPPORTED[model] = str(err)
            with torch.no_grad():
                for b, v in saved or []:
                    b.copy_(v)
    return ref_grads_vmap(model, batches, chunk_samples or 8192)


def ref_grads(model: nn.Module, batches: list[TaskBatch], impl: str) -> torch.Tensor:
    if impl == "classic":
        return ref_grads_classic(model, batches)
    return ref_grads_fast(model, batches)


@torch.no_grad()
def apply_update(params: list[torch.Tensor], x: torch.Tensor, lr: float) -> None:
    """Plain SGD (no momentum, no weight decay): p <- p - lr * x, x flat."""
    views = [v.view_as(p) for v, p in zip(x.split([p.numel() for p in params]), params)]
    torch._foreach_add_(params, views, alpha=-lr)


__all__ = [
    "TaskBatch", "reference_mode", "forward_precision", "bf16_supported", "cpu_bf16_native", "masked_ce",
    "param_list", "n_params", "flat_grad",
    "batch_grad", "ref_grads_classic", "ref_grads_vmap", "ref_grads_grouped", "ref_grads_fast", "ref_grads",
    "apply_update", "clear_cache", "release_graphs", "FAST_OPTIONS", "REF_BN_UPDATE",
]
