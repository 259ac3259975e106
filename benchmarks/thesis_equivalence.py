"""Equivalence of ``--profile thesis`` with the thesis's reference code (issue 18).

    python benchmarks/thesis_equivalence.py PATH_TO_REFERENCE_CHECKOUT [--steps 20] [--skip-a4]

PATH is a checkout of github: DROP-TABLE-CS407/Machine-Unlearning-x-Continual-Learning
(``negGem/`` and ``negGemGradA4.py`` are used; nothing of it is copied here or changed:
its ``.cuda()`` calls are made no-ops in this process at import time).

The script writes tiny CIFAR-format data (CIFAR-100 layout; the reference also reads a
CIFAR-10 folder and ``Memorization/cifar100_mem.npz`` at import, written too) into a
temporary folder, then

1. per step: the same initial weights (cluctl's, copied into the reference's network with
   its last layer's rows permuted: ``logit-slots``), the same class order, the same
   buffers and the same Python random state on both sides; it compares the update each
   side applies (the change of every parameter, cluctl's mapped to the reference's
   order) for GEM and A-GEM learning and for every unlearning algorithm with SalUn off
   and on, and prints the largest relative difference ||d_cluctl - d_ref|| / ||d_ref||
   over the steps, and the relative difference of the weights (and BatchNorm statistics)
   after the last step;
2. A4 end to end (``--a4-algo``, default neggem): 20 tasks x ``--a4-samples`` samples of a
   learnable synthetic set, one seed, the reference's ``run_cifar`` against cluctl's
   engine with ``--profile thesis``; prints both per-operation test accuracy matrices'
   largest difference.

Everything runs on the CPU. It is a benchmark (prints figures), not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cluctl import engine as E  # noqa: E402
from cluctl import thesis as T  # noqa: E402

N_TASKS, K, C = 20, 5, 100
REF_ALGO = {"neggem": "neggem", "negagem": "negagem", "rl-gem": "RL-GEM", "rl-agem": "RL-AGEM",
            "alt-neggem": "ALT-NEGGEM", "neggrad": "neggrad"}


# ---------------------------------------------------------------- data


def write_data(root: Path, per_class: int, test_per_class: int, seed: int = 0, top: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """A learnable CIFAR-100-format set (each class a random prototype plus noise), a tiny
    CIFAR-10 set (the reference reads one at import) and a memorization file whose
    ``tr_classidx_c`` are the training indices of label c and ``tr_mem`` random scores."""
    rng = np.random.default_rng(seed)
    proto = rng.integers(0, top + 1, size=(C, 3, 32, 32))

    def make(n_per):
        y = np.repeat(np.arange(C), n_per)
        rng.shuffle(y)
        noise = rng.normal(0, top / 4, size=(len(y), 3, 32, 32))
        x = np.clip(np.rint(proto[y] + noise), 0, top).astype(np.uint8)
        return x.reshape(len(y), -1), y

    xtr, ytr = make(per_class)
    xte, yte = make(test_per_class)
    d = root / "cifar-100-python"
    d.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": x, b"fine_labels": [int(v) for v in y], b"coarse_labels": [0] * len(y)}, fh)
    with open(d / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(C)]}, fh)
    d10 = root / "cifar-10-python"
    d10.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(d10 / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, fh)
    (root / "Memorization").mkdir(exist_ok=True)
    mem = {"tr_mem": rng.random(len(ytr)), "tr_labels": ytr}
    for c in range(C):
        mem[f"tr_classidx_{c}"] = np.flatnonzero(ytr == c)
    np.savez(root / "Memorization" / "cifar100_mem.npz", **mem)
    return mem["tr_mem"], ytr


# ---------------------------------------------------------------- the reference code


def import_reference(ref: Path, cwd: Path):
    """negGem.net (+ util, salun) with .cuda() made a no-op in this process."""
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    sys.path.insert(0, str(ref))
    os.chdir(cwd)  # negGem.cifar reads ./cifar-10-python and ./cifar-100-python at import
    with contextlib.redirect_stdout(io.StringIO()):
        import negGem.args as ref_args
        import negGem.net as ref_net
    return ref_net, ref_args


def ref_args_for(ref_args, memories: int, algo: str, b: int, salun: float | None, alpha: float = 0.5):
    a = ref_args.Args()
    a.cuda = False
    a.n_memories = a.n_learn_memories = a.n_unlearn_memories = memories
    a.algorithm = REF_ALGO[algo]
    a.alpha = alpha
    a.unlearn_batch_size = b
    a.salun = bool(salun)
    a.salun_threshold = salun if salun else 0.5
    a.unlearn_memory_strength = a.unlearn_mem_strength  # single_run sets it (only printed)
    # single_run takes these from its command line (defaults 0.2, least / most), not Args'
    a.mem_learning_buffer, a.learning_buffer_split, a.learning_buffer_type = 1, 0.2, "least"
    a.mem_unlearning_buffer, a.unlearning_buffer_split, a.unlearning_buffer_type = 1, 0.2, "most"
    return a


def copy_weights(cl_model: torch.nn.Module, ref_model: torch.nn.Module, order: list[int]) -> None:
    """cluctl's weights and BatchNorm statistics into the reference's network (same
    layout; the last layer's row n is class order[n]: logit-slots)."""
    src = list(cl_model.state_dict().items())
    dst = list(ref_model.net.state_dict().items())
    assert len(src) == len(dst), (len(src), len(dst))
    new = {}
    perm = torch.tensor(order)
    for (ks, vs), (kd, vd) in zip(src, dst):
        assert vs.shape == vd.shape, (ks, kd)
        new[kd] = vs[perm].clone() if ks.startswith("linear.") else vs.clone()
    ref_model.net.load_state_dict(new)


def flat_params(model: torch.nn.Module, order: list[int] | None) -> torch.Tensor:
    """All parameters, flat, in the reference's order (cluctl's last layer permuted)."""
    out = []
    perm = torch.tensor(order) if order is not None else None
    for name, p in model.named_parameters():
        v = p.detach()
        if perm is not None and name.startswith("linear."):
            v = v[perm]
        out.append(v.reshape(-1).double())
    return torch.cat(out)


def to_ref_order(model: torch.nn.Module, vec: torch.Tensor, order: list[int]) -> torch.Tensor:
    """A flat vector in cluctl's parameter order (e.g. a SalUn mask) in the reference's."""
    perm = torch.tensor(order)
    out, s = [], 0
    for name, p in model.named_parameters():
        v = vec[s : s + p.numel()].view_as(p)
        s += p.numel()
        out.append((v[perm] if name.startswith("linear.") else v).reshape(-1))
    return torch.cat(out)


def flat_buffers(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([b.detach().reshape(-1).double() for n, b in model.named_buffers() if "running" in n])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-30))


# ---------------------------------------------------------------- part 1: per step


def per_step(ref: Path, work: Path, steps: int, learn_tasks: int, memories: int, b: int, forget: int,
             resync: bool = True, algos: tuple[str, ...] = tuple(REF_ALGO), learn_algos=("gem", "agem")) -> list[str]:
    """Part 1. ``resync``: before every step the reference gets cluctl's current weights and
    BatchNorm statistics, so each step's update is compared from the same point (with raw
    0..255 inputs, lr 0.1 and s = 5 the dynamics are chaotic: a 1e-7 difference grows about
    tenfold per step when the two sides run free, ``--free-run``)."""
    ref_net, ref_args = import_reference(ref, work)
    state = E.new_state(E.run_config(dataset="cifar100", model="resnet18", width=20, profile="thesis",
                                     memories=memories, seed=0), device="cpu", data_root=str(work))
    order = state.class_order
    x_raw, y_tr, _, _ = E._inputs(state)
    newlab = torch.empty(C, dtype=torch.long)
    newlab[torch.tensor(order)] = torch.arange(C)
    lines = []

    def new_ref(algo, salun, learn_algo="GEM"):
        args = ref_args_for(ref_args, memories, algo, b, salun)
        with contextlib.redirect_stdout(io.StringIO()):
            net = ref_net.Net(3 * 32 * 32, C, N_TASKS, args)
        net.is_cifar = True
        return net

    def sync_buffers(net):
        for t, buf in state.buffers.items():
            for kind, data, labs in (("learn", net.learn_memory_data, net.learn_memory_labs),
                                     ("unlearn", net.unlearn_memory_data, net.unlearn_memory_labs)):
                idx = torch.tensor(buf[kind]["indices"])
                data[t, : len(idx)].copy_(x_raw[idx].reshape(len(idx), -1))
                labs[t, : len(idx)].copy_(newlab[y_tr[idx]])

    # --- learning: GEM (and A-GEM) step by step on tasks 0..learn_tasks-1
    for learn_algo in ("gem", *[a for a in learn_algos if a != "gem"]):
        state = E.new_state(E.run_config(dataset="cifar100", model="resnet18", width=20, profile="thesis",
                                         memories=memories, seed=0), device="cpu", data_root=str(work))
        net = new_ref("neggem", None)
        copy_weights(state.model, net, order)
        net.opt = torch.optim.SGD(net.parameters(), 0.1)
        state.model.train()
        net.train()
        worst, n_steps, proj = 0.0, 0, 0
        for t in range(learn_tasks):
            observed = state.learned + [t]
            ctx = E._thesis_ctx(state, state.learned, random.Random(0))
            ctx.observed = observed
            cls = state.classes(t)
            idx = E.task_indices(state.dataset.y_train, cls)
            lut = E._lookup(C, cls, "cpu")
            X, Y = x_raw[idx], lut[y_tr[idx]]
            for s in range(0, len(idx), 10):
                if resync:
                    copy_weights(state.model, net, order)
                before_c, before_r = flat_params(state.model, order), flat_params(net.net, None)
                T.learn_step(ctx, X[s : s + 10], Y[s : s + 10], t, learn_algo, 0.5, 0.1)
                net.observe(learn_algo.upper(), X[s : s + 10].reshape(-1, 3072), t, newlab[y_tr[idx[s : s + 10]]])
                d_c = flat_params(state.model, order) - before_c
                d_r = flat_params(net.net, None) - before_r
                worst = max(worst, rel(d_c, d_r))
                n_steps += 1
            proj = ctx.projections
            # buffers: a thesis random choice on cluctl's side, the same samples into the reference
            r = random.Random(t)
            pos_l = T.select_positions(len(idx), memories, 0.2, "random", r)
            pos_u = T.select_positions(len(idx), memories, 0.2, "random", r)
            il = idx.tolist()
            state.buffers[t] = {"learn": {"indices": [il[p] for p in pos_l]}, "unlearn": {"indices": [il[p] for p in pos_u]}}
            state.learned.append(t)
            sync_buffers(net)
        w = rel(flat_params(state.model, order), flat_params(net.net, None))
        bn = rel(flat_buffers(state.model), flat_buffers(net.net))
        lines.append(f"learn {learn_algo:<6} salun -    SGD steps {n_steps:3d} projected {proj:3d}  "
                     f"max rel diff of update {worst:.2e}  weights after {w:.2e}  BN stats {bn:.2e}")
        print(lines[-1], flush=True)
        if learn_algo == "gem":
            snapshot = {k: v.clone() for k, v in state.model.state_dict().items()}
            gem_state = state

    # --- unlearning: every algorithm, SalUn off and on, from the GEM-learned state
    state = gem_state
    from cluctl.models import build_model

    helper = build_model("resnet18", 20, (3, 32, 32), C)
    for algo in algos:
        for salun in (None, 0.3):
            state.model.load_state_dict(snapshot)
            net = new_ref(algo, salun)
            copy_weights(state.model, net, order)
            sync_buffers(net)
            with contextlib.redirect_stdout(io.StringIO()):
                for t in state.learned:
                    net.observed_tasks.append(t)
            cfg = {**T.unlearn_rule_defaults(algo), "unlearn_mem_strength": 0.5, "alpha": 0.5,
                   "salun_strength": salun}
            net.opt = torch.optim.SGD(net.parameters(), cfg["unlearning_rate"])
            ref_rng = random.Random(1234)
            ref_net.random = ref_rng  # the reference's `random.shuffle` -> this generator
            ctx = E._thesis_ctx(state, list(state.learned), random.Random(1234))
            state.model.train()
            net.train()
            mask_c = mask_r = None
            worst, n = 0.0, 0
            # salun-first-step: the mask is computed from a gradient the two sides agree on to
            # ~1e-6, so entries at the quantile cutoff can flip. The benchmark (a) checks that
            # the reference's apply_salun, given cluctl's gradient, picks cluctl's mask, and
            # (b) hands cluctl's mask to the reference so later updates compare like for like.
            captured = []

            def capture(g, strength, mask, _orig=T.salun_apply):
                out = _orig(g, strength, mask)
                if mask is None:
                    captured.append((g.detach().clone(), out[1]))
                return out

            T.salun_apply = capture
            mask_check = "-"
            js = [j for j in range(0, memories, b)]
            for i in range(steps):
                j = js[i % len(js)]
                if resync:
                    copy_weights(state.model, net, order)
                # every SGD step (neggem takes two per iteration: neggem-plus-rl) is compared
                # from the same point: the reference continues from cluctl's weights after each
                d_cs, sds, d_rs = [], [], []

                def cl_step(x, lr, _orig=T.Ctx.step):
                    before = flat_params(state.model, order)
                    _orig(ctx, x, lr)
                    d_cs.append(flat_params(state.model, order) - before)
                    sds.append({k: v.clone() for k, v in state.model.state_dict().items()})

                ctx.step = cl_step
                mask_c, _ = T.unlearn_step(ctx, algo, forget, j, j + b, cfg, mask_c)
                ref_step = net.opt.step

                def traced_step(*a, **k):
                    before = flat_params(net.net, None)
                    out = ref_step(*a, **k)
                    d_rs.append(flat_params(net.net, None) - before)
                    if resync and len(d_rs) <= len(sds):
                        helper.load_state_dict(sds[len(d_rs) - 1])
                        copy_weights(helper, net, order)
                    return out

                net.opt.step = traced_step
                if captured and mask_check == "-":
                    g0, m0 = captured[0]
                    _, ref_mask = ref_net.apply_salun(g0.clone().view(-1, 1), salun)
                    mask_check = f"{int((ref_mask.view(-1) != m0).sum())}/{m0.numel()}"
                if resync and mask_r is None and mask_c is not None:
                    mask_r = (None, to_ref_order(state.model, mask_c, order))
                with contextlib.redirect_stdout(io.StringIO()):
                    mask_r = net.unlearn(REF_ALGO[algo], forget, x1=j, x2=j + b, alpha=0.5, mask=mask_r)
                net.opt.step = ref_step
                if len(d_cs) != len(d_rs):
                    raise SystemExit(f"{algo}: cluctl took {len(d_cs)} SGD steps, the reference {len(d_rs)}")
                for d_c, d_r in zip(d_cs, d_rs):
                    worst = max(worst, rel(d_c, d_r))
                    n += 1
            T.salun_apply = capture.__defaults__[0]
            w = rel(flat_params(state.model, order), flat_params(net.net, None))
            bn = rel(flat_buffers(state.model), flat_buffers(net.net))
            lines.append(f"unlearn {algo:<10} salun {'on ' if salun else 'off'}  SGD steps {n:3d} projected {ctx.projections:3d}  "
                         f"max rel diff of update {worst:.2e}  mask entries that differ {mask_check:>11}  "
                         f"weights after {w:.2e}  BN stats {bn:.2e}")
            print(lines[-1], flush=True)
    return lines


# ---------------------------------------------------------------- part 2: A4


def a4(ref: Path, work: Path, algo: str, memories: int, b: int, epochs: int, unlearn_epochs: int,
       scores: np.ndarray, seed: int = 0, width: int = 20, n_ops: int | None = None, shared_net: bool = False,
       identity_order: bool = False) -> list[str]:
    """Part 2. ``shared_net``: the reference's Net holds a copy of cluctl's ResNet module (its
    last layer's rows permuted) instead of its own ResNet18 class: the two ResNet classes
    differ in float rounding (adaptive vs fixed average pooling, ~1e-7), which the chaotic
    raw-pixel dynamics amplify; with one network module the comparison isolates what
    Net.observe / Net.unlearn / run_cifar compute."""
    ref_net, ref_args = import_reference(ref, work)
    if width != 20:  # the reference builds ResNet18(n_outputs) with nf 20; a narrower one, the same code
        util = sys.modules["negGem.util"]
        ref_net.ResNet18 = lambda n, nf=width: util.ResNet(util.BasicBlock, [2, 2, 2, 2], n, nf)
    sys.argv = ["negGemGradA4.py", "--task_sequence", "A4", "--number_of_gpus", "1", "--algorithm", REF_ALGO[algo],
                "--alpha", "0.5", "--learn_mem_strength", "0.5", "--learn_batch_size", "10",
                "--unlearn_mem_strength", "0.5", "--unlearn_batch_size", str(b), "--average_over_n_runs", "1",
                "--salun", "0", "--salun_strength", "0"]
    with contextlib.redirect_stdout(io.StringIO()):
        import negGemGradA4 as A

    # cluctl: the thesis profile through the engine
    t0 = time.time()
    state = E.new_state(E.run_config(dataset="cifar100", model="resnet18", width=width, profile="thesis",
                                     memories=memories, seed=seed, epochs=epochs, algo=algo,
                                     unlearn_batch_size=b, max_epochs=unlearn_epochs),
                        device="cpu", data_root=str(work))
    if identity_order:  # logit-slots: class-id outputs = position outputs, no permuted rows
        state.class_order = list(range(C))
    init = {k: v.clone() for k, v in state.model.state_dict().items()}
    seq = (list(range(N_TASKS)) + [-t for t in range(N_TASKS - 1, 0, -1)])[:n_ops]
    cl_rows, cl_ops = [], []
    for op in seq:
        if op >= 0:
            s = E.learn_task(state, op, scores_fn=lambda st: (scores, "bench"))
        else:
            s = E.unlearn_task(state, -op)
        cl_ops.append(s)
        cl_rows.append(E.evaluate_state(state)["test_acc"])
        print(f"  cluctl {s['op']} steps {s['steps']} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    t_cl = time.time() - t0

    # the reference's run_cifar, with cluctl's initial weights, class order and per-op random seeds
    order = state.class_order
    newclasses = [A.negGem.cifar.CLASSES_100[c] for c in order]
    helper = torch.nn.Module()
    from cluctl.models import build_model

    helper = build_model("resnet18", width, (3, 32, 32), C)
    helper.load_state_dict(init)

    class Flat(torch.nn.Module):  # the reference feeds (N, 3072) rows
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x.view(x.size(0), 3, 32, 32))

    class SeededNet(ref_net.Net):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if shared_net:
                m = build_model("resnet18", width, (3, 32, 32), C)
                self.net = Flat(m)
                self.opt = torch.optim.SGD(self.parameters(), a[3].lr)
            copy_weights(helper, self, order)

    class OpRandom:  # the reference's `random` in net.py: reseeded per operation as cluctl's
        def __init__(self):
            self.op = 0
            self.rng = T.op_random(seed, 0)

        def shuffle(self, x):
            self.rng.shuffle(x)

    proxy = OpRandom()
    ref_net.random = proxy
    orig_eval = A.eval_retain_forget_test

    def eval_and_advance(*a, **k):
        out = orig_eval(*a, **k)
        print(f"  reference op {proxy.op} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        proxy.op += 1
        proxy.rng = T.op_random(seed, proxy.op)
        return out

    A.eval_retain_forget_test = eval_and_advance
    A.Net = SeededNet
    args = ref_args_for(ref_args, memories, algo, b, None)
    args.n_epochs = epochs
    args.unlearn_epochs = unlearn_epochs
    args.batch_size = 10
    args.unlearning_rate = T.unlearn_rule_defaults(algo)["unlearning_rate"]
    learning = "GEM"
    if algo in T.AGEM_RUNS:
        args.lr = 0.03
        learning = "AGEM"
    mem = dict(np.load(work / "Memorization" / "cifar100_mem.npz"))
    A.mem_scores = mem["tr_mem"]
    t0 = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        res = A.run_cifar(learning, args, newclasses=newclasses, mem_data_local=mem, task_sequence=seq)
    t_ref = time.time() - t0
    ref_rows = np.array(res[9])
    cl = np.array(cl_rows)
    diff = np.abs(cl - ref_rows)
    globals()["LAST_A4"] = (state, res, order)  # for a debugger
    w_rel = rel(flat_params(state.model, order), flat_params(res[0].net, None))
    lines = [f"A4 {algo} ({'shared network module' if shared_net else 'each side its own ResNet class'}"
             f"{', class order 0..99' if identity_order else ''}): 20 tasks x {len(state.dataset.y_train) // N_TASKS} train samples, ResNet nf {width}, memories {memories}, "
             f"epochs {epochs}, unlearn batch {b}, max unlearn epochs {unlearn_epochs}; cluctl {t_cl:.0f} s, "
             f"reference {t_ref:.0f} s",
             f"  test-accuracy matrices {cl.shape}: max |cluctl - reference| = {diff.max():.4f}, "
             f"rows that differ: {int((diff.max(1) > 1e-6).sum())} of {len(cl)} (first: "
             f"{int(np.argmax(diff.max(1) > 1e-6)) if (diff > 1e-6).any() else '-'}); weights at the end: rel diff {w_rel:.2e}",
             f"  after learning {min(len(cl), N_TASKS)}: mean acc of the learned tasks cluctl "
             f"{cl[min(len(cl), N_TASKS) - 1][:N_TASKS].mean():.4f} reference {ref_rows[min(len(cl), N_TASKS) - 1].mean():.4f}",
             f"  final row: cluctl {np.round(cl[-1], 3).tolist()}",
             f"             ref    {np.round(ref_rows[-1], 3).tolist()}",
             "  unlearning steps (cluctl): " + " ".join(f"U{s['op'][1:]}:{s['steps']}" for s in cl_ops if s["op"][0] == "U")]
    for line in lines:
        print(line, flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--learn-tasks", type=int, default=4)
    ap.add_argument("--memories", type=int, default=20)
    ap.add_argument("--unlearn-batch", type=int, default=2)
    ap.add_argument("--forget", type=int, default=1, help="task forgotten in the per-step part (not the last: "
                    "exercises rl-leaked-task and neggrad-accumulate)")
    ap.add_argument("--skip-steps", action="store_true")
    ap.add_argument("--algos", default=",".join(REF_ALGO), help="unlearning algorithms of the per-step part")
    ap.add_argument("--free-run", action="store_true", help="per step: no re-sync of the reference's weights")
    ap.add_argument("--skip-a4", action="store_true")
    ap.add_argument("--a4-algo", default="neggem", choices=list(REF_ALGO))
    ap.add_argument("--a4-samples", type=int, default=50, help="training samples per task (5 classes)")
    ap.add_argument("--a4-memories", type=int, default=20)
    ap.add_argument("--a4-epochs", type=int, default=1)
    ap.add_argument("--a4-shared-net", action="store_true", help="the reference's Net holds cluctl's ResNet module")
    ap.add_argument("--a4-identity-order", action="store_true", help="class order 0..99 on both sides (the "
                    "permuted last-layer rows of logit-slots change the backward's summation order otherwise)")
    ap.add_argument("--a4-ops", type=int, default=None, help="only the first N operations of A4")
    ap.add_argument("--a4-width", type=int, default=4, help="ResNet nf of the A4 run (the thesis: 20)")
    ap.add_argument("--a4-unlearn-batch", type=int, default=4)
    ap.add_argument("--a4-top", type=int, default=255, help="largest pixel value of the A4 data (raw pixels "
                    "make the dynamics chaotic; a small range keeps them tame)")
    ap.add_argument("--a4-unlearn-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ref = a.reference.resolve()
    out = []
    with tempfile.TemporaryDirectory(prefix="thesis-eq-") as tmp:
        work = Path(tmp)
        if not a.skip_steps:
            write_data(work, per_class=10, test_per_class=4)
            out += per_step(ref, work, a.steps, a.learn_tasks, a.memories, a.unlearn_batch, a.forget,
                            resync=not a.free_run, algos=tuple(a.algos.split(",")))
        if not a.skip_a4:
            work2 = work / "a4"
            work2.mkdir()
            scores, _ = write_data(work2, per_class=a.a4_samples // K, test_per_class=10, seed=1, top=a.a4_top)
            from cluctl.data import datasets as D

            D.clear_cache()
            E._DEVICE_DATA.clear()
            E._RAW.clear()
            for mod in [m for m in sys.modules if m == "negGem" or m.startswith("negGem.") or m == "negGemGradA4"]:
                del sys.modules[mod]
            out += a4(ref, work2, a.a4_algo, a.a4_memories, a.a4_unlearn_batch, a.a4_epochs, a.a4_unlearn_epochs, scores,
                      width=a.a4_width, n_ops=a.a4_ops, shared_net=a.a4_shared_net,
                      identity_order=a.a4_identity_order)
    print("\n".join(["", "summary:"] + out))


if __name__ == "__main__":
    main()
