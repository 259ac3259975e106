"""The grouped pass's autograd functions: convolution (with the dense form of tiny maps),
linear and BatchNorm layers that see all tasks' concatenated samples and write each task's
parameter gradient into its row of the t x p output, and the ``TorchFunctionMode`` that
routes a model's calls through them (:class:`_GroupedMode`). One pass is described by a
:class:`_Plan`; :mod:`cluctl.grads.grouped` drives it."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import options as _opts


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
    if not _opts.FAST_OPTIONS.get("dense_small_conv", True) or conf[3] != 1:
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
