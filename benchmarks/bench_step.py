"""Time one GEM learn step and one NegGEM unlearn step, classic vs fast, as the engine runs them.

    python benchmarks/bench_step.py                         # CPU, T = 1, 5, 19, 3 repeats
    python benchmarks/bench_step.py --device cuda --repeats 10
    python benchmarks/bench_step.py --tasks 1,5 --impls classic,fast,vmap --json out.json
    python benchmarks/bench_step.py --shape 1,8,8 --classes-per-task 2 --n-tasks 5 --tasks 1,4   # digits-like

Setting (the thesis's CIFAR-100 run): reduced ResNet-18 (nf = 20), 3x32x32 inputs of CIFAR
shape (random uint8 pixels, written to a temporary ``npz:`` dataset and loaded by the real
loader), 100 classes in 20 tasks of 5, 256 memories per task, batch 10. For T retained
tasks the state has tasks 0..T-1 learned with full buffers (indices into the dataset, as
the engine keeps them); the weights are the initial ones.

A learn step is what ``engine.learn_task`` does per batch of task T: ``batch_grad`` of the
current batch, ``RefContext`` (the T reference gradients), ``algo.direction`` (GEM's
violation check and projection) and ``apply_update``. An unlearn step is what
``engine.unlearn_task`` does per step for NegGEM, forgetting task T with tasks 0..T-1
retained (T reference gradients), including the stop-rule accuracy check on the forget
buffers. Before every timed step the weights
are restored, so classic and fast do the same work (same batch, same violation decision);
impls alternate within each repeat (order flipped every repeat); medians after warm-up.

Columns: ``step`` median wall seconds of the whole step, and its parts ``grad`` (current
batch), ``refs`` (reference gradients), ``proj`` (violation check + projection), ``check``
(unlearn stop-rule accuracy), ``proj%`` the fraction of timed steps that projected.
``ratio`` = classic step / this impl's step.

Peak memory of one step at the largest T: on CPU each impl runs one learn step in a fresh
subprocess (ru_maxrss; the baseline RSS after building the state is printed too); on CUDA
``torch.cuda.max_memory_allocated`` around one step.

Pseudo-impls for comparisons: ``vmap`` (the previous fast path: torch.func.vmap over
tasks), ``fast-nocl`` (fast without channels-last), ``fast-nograph`` (fast without CUDA
graphs; on the CPU the same as fast) and ``fast-bf16`` (fast with ``--precision bf16``:
the training forward passes under bf16 autocast; CUDA, or a CPU with native bf16) and ``fast-cudnnbench`` (fast
with cuDNN's algorithm timing for the grouped pass; CUDA only), all with the fast projection.
On CUDA the fast path replays the reference-gradient pass from a CUDA graph from the third
step of an operation on; ``--warmup 2`` keeps the capture out of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

IMPL_CHOICES = ("classic", "fast", "vmap", "fast-nocl", "fast-nograph", "fast-bf16", "fast-cudnnbench")


# ---------------------------------------------------------------- synthetic CIFAR-shaped data


def make_synthetic_npz(path, classes: int = 100, train_per_class: int = 52, test_per_class: int = 2,
                       shape=(32, 32, 3), seed: int = 0, signal: float = 0.6) -> str:
    """A CIFAR-shaped uint8 dataset (N x H x W x C) with a learnable class signal: each class
    has a smooth random template; a sample is template * signal + noise * (1 - signal)."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    low = rng.uniform(-1, 1, size=(classes, 4, 4, c)).astype(np.float32)
    templ = np.repeat(np.repeat(low, (h + 3) // 4, axis=1), (w + 3) // 4, axis=2)[:, :h, :w, :]

    def split(per):
        y = np.repeat(np.arange(classes, dtype=np.int64), per)
        rng.shuffle(y)
        x = np.empty((len(y), h, w, c), dtype=np.uint8)
        for s in range(0, len(y), 4096):
            yy = y[s : s + 4096]
            noise = rng.uniform(-1, 1, size=(len(yy), h, w, c)).astype(np.float32)
            img = 127.5 + 127.5 * (signal * templ[yy] + (1 - signal) * noise)
            x[s : s + 4096] = np.clip(img, 0, 255).astype(np.uint8)
        return x, y

    x_tr, y_tr = split(train_per_class)
    x_te, y_te = split(test_per_class)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return str(path)


# ---------------------------------------------------------------- state and steps


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def impl_variant(name: str):
    """classic/fast as the engine's ``impl``; vmap and fast-nocl patch the fast path."""
    import cluctl.grads as G
    from cluctl.grads import dispatch, options

    if name in ("classic", "fast"):
        yield name
        return
    # the fast path is swapped where ref_grads calls it; the tunables live in grads.options
    saved_fast, saved_opts = dispatch.ref_grads_fast, dict(options.FAST_OPTIONS)
    prec = None
    if name == "vmap":
        dispatch.ref_grads_fast = lambda model, batches, chunk_samples=None: G.ref_grads_vmap(model, batches)
    elif name == "fast-nocl":
        options.FAST_OPTIONS["channels_last"] = False
    elif name == "fast-nograph":
        options.FAST_OPTIONS["cuda_graphs"] = False
    elif name == "fast-bf16":
        prec = "bf16"
    elif name == "fast-cudnnbench":
        options.FAST_OPTIONS["cudnn_benchmark"] = True
    try:
        with G.forward_precision(prec):
            yield "fast"
    finally:
        dispatch.ref_grads_fast = saved_fast
        options.FAST_OPTIONS.clear()
        options.FAST_OPTIONS.update(saved_opts)


def _task_batch(state, task: int, indices):
    """The TaskBatch engine.learn_task/unlearn_task build for ``task``'s ``indices`` (its
    samples on the device, labels as positions among the task's classes), from public API."""
    import torch

    from cluctl.engine import device_data
    from cluctl.grads import TaskBatch
    from cluctl.masking import masked_targets

    x_tr, y_tr, _, _ = device_data(state.dataset, state.device)
    idx = torch.as_tensor(indices, dtype=torch.long).to(state.device)
    cls = state.classes(task)
    return TaskBatch(x_tr[idx], masked_targets(y_tr[idx], cls), torch.tensor(cls, device=state.device))


def _check_accuracy(model, batch) -> float:
    """engine.unlearn_task's stop-rule check: masked accuracy on a buffer, in eval mode."""
    import torch

    from cluctl.masking import task_accuracy

    was = model.training
    model.eval()
    with torch.inference_mode():
        acc = task_accuracy(model(batch.x), batch.y, batch.classes).item()
    model.train(was)
    return acc


class Bench:
    """A State with tasks 0..T-1 learned (random buffers of ``memories`` samples)."""

    def __init__(self, args, dataset: str):
        import torch

        from cluctl import resolve as R
        from cluctl.engine import new_state, run_config

        cfg = run_config(dataset=dataset, tasks=args.n_tasks, model=args.model, width=args.width, seed=0,
                         memories=args.memories, batch_size=args.batch, learn_buffer_type="random",
                         unlearn_buffer_type="random")
        self.state = new_state(cfg, device=args.device, threads=args.threads)
        self.args = args
        self.device = self.state.device
        self.ucfg = R.validate_unlearn(dict(self.state.config, algo="neggem"), classes_per_task=self.state.k)
        self.snapshot = {k: v.detach().clone() for k, v in self.state.model.state_dict().items()}
        self.gen = torch.Generator().manual_seed(0)
        self._task_rows = {}

    def restore(self):
        self.state.model.load_state_dict(self.snapshot)

    def task_indices(self, t):
        from cluctl.data import task_indices

        if t not in self._task_rows:
            self._task_rows[t] = task_indices(self.state.dataset.y_train, self.state.classes(t))
        return self._task_rows[t]

    def setup(self, T: int):
        """Tasks 0..T learned (T is the one being learned / forgotten)."""
        import torch

        st = self.state
        st.learned = list(range(T + 1))
        st.buffers = {}
        g = torch.Generator().manual_seed(1000 + T)
        for t in range(T + 1):
            idx = self.task_indices(t)
            m = min(self.args.memories, len(idx))
            pick = idx[torch.randperm(len(idx), generator=g)[:m]].tolist()
            pick2 = idx[torch.randperm(len(idx), generator=g)[:m]].tolist()
            st.buffers[t] = {"learn": {"indices": pick}, "unlearn": {"indices": pick2}}
        self.T = T
        # what learn_task builds once per operation
        self.ref_batches = [_task_batch(st, j, st.buffers[j]["learn"]["indices"]) for j in range(T)]
        self.cur = _task_batch(st, T, self.task_indices(T).tolist())
        buf = st.buffers[T]
        u_idx = torch.tensor(buf["unlearn"]["indices"])
        l_idx = torch.tensor(buf["learn"]["indices"])
        self.check_batch = _task_batch(st, T, torch.unique(torch.cat([u_idx, l_idx])))
        self.u_batch = _task_batch(st, T, u_idx)
        self.l_batch = _task_batch(st, T, l_idx)

    def learn_step(self, impl: str, r: int) -> dict:
        """engine.learn_task's per-batch body."""
        from cluctl.grads import apply_update, batch_grad, masked_ce, param_list
        from cluctl.learning import RefContext
        from cluctl.learning import get as get_learn_algo

        st, dev = self.state, self.device
        cfg = st.config
        algo = get_learn_algo(cfg["learn_algo"])
        n, bs = len(self.cur.y), cfg["batch_size"]
        s = (r * bs) % max(1, n - bs)
        X, Y, cls_t = self.cur.x[s : s + bs], self.cur.y[s : s + bs], self.cur.classes
        params = param_list(st.model)
        _sync(dev)
        t0 = time.perf_counter()
        g, _ = batch_grad(st.model, lambda m: masked_ce(m(X), Y, cls_t))
        _sync(dev)
        t1 = time.perf_counter()
        refs = RefContext(st.model, self.ref_batches, impl, self.gen)
        if self.ref_batches:
            refs.G  # noqa: B018  (computed here to time it; direction() reuses it)
        _sync(dev)
        t2 = time.perf_counter()
        x, info = algo.direction(g, refs, cfg)
        _sync(dev)
        t3 = time.perf_counter()
        apply_update(params, x, cfg["lr"])
        _sync(dev)
        t4 = time.perf_counter()
        return {"step": t4 - t0, "grad": t1 - t0, "refs": t2 - t1, "proj": t3 - t2, "check": 0.0,
                "projected": bool(getattr(info, "projected", False))}

    def unlearn_step(self, impl: str, r: int) -> dict:
        """engine.unlearn_task's per-step body for NegGEM (stop-rule check included)."""
        import torch

        from cluctl.grads import apply_update, batch_grad, masked_ce, param_list
        from cluctl.learning import RefContext
        from cluctl.unlearning import get as get_unlearn_algo

        st, dev, cfg = self.state, self.device, self.ucfg
        algo = get_unlearn_algo("neggem")
        b, s = cfg["unlearn_batch_size"], cfg["forget_loss_scale"]
        nu, nl = len(self.u_batch.y), len(self.l_batch.y)
        iu = (torch.arange(r * b, r * b + b) % nu).to(dev)
        il = (torch.arange(r * b, r * b + b) % nl).to(dev)
        params = param_list(st.model)
        _sync(dev)
        t0 = time.perf_counter()
        _check_accuracy(st.model, self.check_batch)
        _sync(dev)
        t1 = time.perf_counter()
        fx = torch.cat([self.u_batch.x[iu], self.l_batch.x[il]])
        fy = torch.cat([self.u_batch.y[iu], self.l_batch.y[il]])
        g_f, _ = batch_grad(st.model, lambda m_: -(s * masked_ce(m_(fx), fy, self.u_batch.classes)))
        _sync(dev)
        t2 = time.perf_counter()
        refs = RefContext(st.model, self.ref_batches, impl, self.gen)
        if self.ref_batches:
            refs.G  # noqa: B018
        _sync(dev)
        t3 = time.perf_counter()
        x, info = algo.combine(g_f, refs, cfg)
        _sync(dev)
        t4 = time.perf_counter()
        apply_update(params, x, cfg["unlearning_rate"])
        _sync(dev)
        t5 = time.perf_counter()
        return {"step": t5 - t0, "check": t1 - t0, "grad": t2 - t1, "refs": t3 - t2, "proj": t4 - t3,
                "projected": bool(getattr(info, "projected", False))}


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def run_grid(bench: Bench, args) -> list[dict]:
    rows = []
    for T in args.tasks:
        bench.setup(T)
        for op in args.ops:
            fn = bench.learn_step if op == "learn" else bench.unlearn_step
            samples: dict[str, list[dict]] = {i: [] for i in args.impls}
            for r in range(args.warmup + args.repeats):
                order = args.impls if r % 2 == 0 else list(reversed(args.impls))
                for name in order:
                    bench.restore()
                    with impl_variant(name) as impl:
                        res = fn(impl, r)
                    if r >= args.warmup:
                        samples[name].append(res)
            bench.restore()
            base = None
            for name in args.impls:
                rs = samples[name]
                row = {"op": op, "T": T, "impl": name, "n": len(rs)}
                for key in ("step", "grad", "refs", "proj", "check"):
                    row[key] = _median([x[key] for x in rs])
                row["step_all"] = [round(x["step"], 5) for x in rs]
                row["projected"] = sum(x["projected"] for x in rs) / max(1, len(rs))
                if name == "classic":
                    base = row["step"]
                rows.append(row)
            for row in rows:
                if row["op"] == op and row["T"] == T:
                    row["ratio"] = (base / row["step"]) if base else None
            _print_rows([r for r in rows if r["op"] == op and r["T"] == T], header=(T == args.tasks[0] and op == args.ops[0]))
            if args.json:  # written as it goes: a run cut short by a timeout keeps what it measured
                Path(args.json).write_text(json.dumps({"rows": rows, "partial": True}, indent=1))
    return rows


def _print_rows(rows, header=False):
    if header:
        print(f"{'op':8} {'T':>3} {'impl':15} {'step s':>9} {'grad':>8} {'refs':>9} {'proj':>8} {'check':>8} "
              f"{'proj%':>6} {'ratio':>6}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        print(f"{r['op']:8} {r['T']:>3} {r['impl']:15} {r['step']:9.4f} {r['grad']:8.4f} {r['refs']:9.4f} "
              f"{r['proj']:8.4f} {r['check']:8.4f} {100 * r['projected']:5.0f}% {ratio:>6}", flush=True)


# ---------------------------------------------------------------- peak memory of one step


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _reset_peak_rss() -> bool:
    """Linux: reset this process's peak RSS (VmHWM) so that it measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_step_memory(bench: Bench, impl_name: str, T: int) -> dict:
    """Peak memory of one learn step at T retained tasks (in this process)."""
    import torch

    bench.setup(T)
    dev = bench.device
    with impl_variant(impl_name) as impl:
        if dev.type == "cuda":
            for r in range(2):  # steady state: with CUDA graphs the third step is a replay
                bench.learn_step(impl, r)
                bench.restore()
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            bench.learn_step(impl, 2)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            # a replayed graph's activations live in its private pool (reserved, not counted
            # as allocated during the replay): the reserved figure bounds what the step needs
            return {"impl": impl_name, "T": T, "device": "cuda", "baseline_mb": base / 2**20,
                    "peak_mb": peak / 2**20, "step_extra_mb": (peak - base) / 2**20,
                    "reserved_mb": torch.cuda.memory_reserved(dev) / 2**20}
        bench.learn_step(impl, 0)  # first step: builds the cached stacked buffers, as in an operation
        bench.restore()
        base = _rss_now_mb()
        reset = _reset_peak_rss()
        bench.learn_step(impl, 1)
        peak = _peak_rss_mb() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"impl": impl_name, "T": T, "device": "cpu", "baseline_mb": base, "peak_mb": peak,
                "step_extra_mb": peak - base, "how": "VmHWM after clear_refs" if reset else "ru_maxrss"}


def memory_report(args, dataset) -> list[dict]:
    T = max(args.tasks)
    out = []
    for name in args.impls:
        if args.device.startswith("cuda"):
            import torch

            import cluctl.grads as G

            G.clear_cache()
            torch.cuda.empty_cache()
            bench = Bench(args, dataset)
            out.append(one_step_memory(bench, name, T))
            del bench
            G.clear_cache()
            torch.cuda.empty_cache()
        else:  # a fresh process per impl: ru_maxrss is a per-process high-water mark
            cmd = [sys.executable, __file__, "--_one-step", name, "--_dataset", dataset, "--tasks", str(T),
                   "--device", args.device, "--model", args.model, "--width", str(args.width),
                   "--memories", str(args.memories), "--batch", str(args.batch), "--n-tasks", str(args.n_tasks),
                   "--classes-per-task", str(args.classes_per_task), "--shape", ",".join(map(str, args.shape))]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                print(p.stderr, file=sys.stderr)
                continue
            out.append(json.loads(p.stdout.strip().splitlines()[-1]))
    print(f"\npeak memory of one {'x'.join(map(str, args.shape))} learn step at T = {T} ({args.device}):")
    for m in out:
        print(f"  {m['impl']:15} peak {m['peak_mb']:8.1f} MiB  (before the step {m['baseline_mb']:8.1f} MiB, "
              f"step adds {m['step_extra_mb']:7.1f} MiB)"
              + (f", reserved {m['reserved_mb']:8.1f} MiB" if "reserved_mb" in m else ""))
    return out


# ---------------------------------------------------------------- profile


def profile_steps(bench: Bench, T: int, impls) -> None:
    """Where a step's time goes: operator and kernel totals over 3 steps after 3 warm-up
    steps (on CUDA the warm-up includes the CUDA-graph capture)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    bench.setup(T)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    for name in impls:
        with impl_variant(name) as impl:
            for r in range(3):
                bench.learn_step(impl, r)
            _sync(bench.device)
            with profile(activities=acts) as prof:
                for r in range(3, 6):
                    bench.learn_step(impl, r)
                _sync(bench.device)
        bench.restore()
        table = None
        for key in (("self_device_time_total", "self_cuda_time_total") if bench.device.type == "cuda"
                    else ("self_cpu_time_total",)):
            try:
                table = prof.key_averages().table(sort_by=key, row_limit=22, max_name_column_width=60)
                break
            except Exception:  # noqa: BLE001 - the sort key's name differs between torch versions
                continue
        print(f"\nprofile: {name}, 3 learn steps at T = {T}\n{table}", flush=True)


# ---------------------------------------------------------------- main


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--tasks", default="1,5,19", help="retained-task counts T, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per impl and T (medians)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--impls", default="classic,fast", help=f"comma-separated: {', '.join(IMPL_CHOICES)}")
    ap.add_argument("--ops", default="learn,unlearn")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--width", type=int, default=20)
    ap.add_argument("--memories", type=int, default=256)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--n-tasks", type=int, default=20, help="tasks in the synthetic dataset")
    ap.add_argument("--classes-per-task", type=int, default=5)
    ap.add_argument("--shape", default="3,32,32", help="C,H,W of the synthetic inputs (digits-like: 1,8,8)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--profile", type=int, default=None, metavar="T",
                    help="instead of the grid: torch.profiler table of 3 fast learn steps at T retained tasks")
    ap.add_argument("--_one-step", dest="one_step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_dataset", dest="dataset", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.tasks = [int(t) for t in str(a.tasks).split(",") if t.strip()]
    a.impls = [i.strip() for i in a.impls.split(",") if i.strip()]
    a.ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    a.shape = tuple(int(v) for v in str(a.shape).split(","))
    for i in a.impls:
        if i not in IMPL_CHOICES:
            ap.error(f"unknown impl {i!r}")
    if max(a.tasks) >= a.n_tasks:
        ap.error(f"--tasks needs T < --n-tasks ({a.n_tasks})")
    if a.threads is None and not a.device.startswith("cuda"):
        a.threads = 1
    return a


def main(argv=None):
    args = parse(argv)
    if args.one_step:
        bench = Bench(args, args.dataset)
        print(json.dumps(one_step_memory(bench, args.one_step, max(args.tasks))))
        return 0
    import torch

    tmp = tempfile.mkdtemp(prefix="cluctl-bench-step-")
    k = args.classes_per_task
    per_class = -(-args.memories // k) + 2
    c, h, w = args.shape
    path = make_synthetic_npz(Path(tmp) / "synthetic.npz", classes=k * args.n_tasks,
                              train_per_class=per_class, test_per_class=2, shape=(h, w, c))
    dataset = f"npz:{path}"
    t_build = time.perf_counter()
    bench = Bench(args, dataset)
    dev = bench.device
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"bench_step: {args.model} width {args.width} on {tuple(bench.state.dataset.input_shape)} inputs, "
          f"{k * args.n_tasks} classes / {args.n_tasks} tasks, {args.memories} memories, batch {args.batch}; "
          f"device {dev} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"load average {load:.2f} (a shared machine: timings are noisy)")
    print(f"params {sum(p.numel() for p in bench.state.model.parameters()):,}; state built in "
          f"{time.perf_counter() - t_build:.1f} s; repeats {args.repeats} after {args.warmup} warm-up, "
          f"impls alternated; medians in seconds\n")
    if args.profile is not None:
        profile_steps(bench, args.profile, args.impls)
        return 0
    rows = run_grid(bench, args)
    mem = [] if args.no_memory else memory_report(args, dataset)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k_: v for k_, v in vars(args).items()}, "device": name,
                                               "torch": torch.__version__, "rows": rows, "memory": mem,
                                               "load_average": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
