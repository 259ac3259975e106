"""End-to-end runs: classic vs fast wall time, peak memory and accuracy; GPU budget runs.

    python benchmarks/bench_run.py a4                           # digits, A4, seeds 0..2, classic vs fast
    python benchmarks/bench_run.py a4 --model mlp --width 100
    python benchmarks/bench_run.py a4 --dataset cifar-synth --samples-per-task 100 --tasks 5
    python benchmarks/bench_run.py budget --device cuda --budget-s 150 --step-json bench_step.json
    python benchmarks/bench_run.py seeds --device cuda --seeds 3

``a4``: sequence A4 for every seed and impl, each run in a fresh subprocess (its wall time
and its peak RSS, ``RUSAGE_CHILDREN`` of a wrapper process, i.e. the largest process of the
run), impls alternated per seed. ``--driver launch`` (default) runs ``cluctl launch --sequence
A4 --seed-list S --impl I`` (the results' ``summary.json`` gives ACC = mean test accuracy
after the learning prefix, and the final retained accuracy); ``--driver engine`` runs the
same operations in one process through ``cluctl.api.run_operation`` without a store (the
driver launch's workers use; new_state, evaluate_state after every op, ACC via ``cluctl.metrics.acc_bwt``). All runs of one
invocation share one store, so the memorization proxy for ranked buffers (the defaults
least/most) is computed once per seed before any timing (by a ``cluctl learn --epochs 1``
of task 0 per seed, untimed). Besides the wall ratio it prints an equal-work ratio per seed
(``equal_work_ratio``): the two impls' trajectories drift apart by float rounding, so an
unlearning operation, which runs until its stop rule, can take 3x more steps in one run
than in the other; weighting each operation's seconds per step by the same step count
separates the speed of the impls from that chaos. ``cifar-synth`` is a CIFAR-shaped uint8 dataset with a
learnable class signal (``bench_step.make_synthetic_npz``), 5 classes per task.

``budget``: the thesis-scale CIFAR-shaped A4 (20 tasks x 2,500 samples, 3 epochs, batch 10,
256 memories, resnet18 nf 20; random buffers, so no proxy training) through the engine
in this process, stopped after ``--budget-s``; every step is timed. The full run is then
extrapolated as

    total = sum_{i=0..N-1} S_L * t_L(i)  +  sum_{f=N-1..1} S_U * t_U(f)  +  (2N-1) * t_eval

with S_L = epochs * (samples per task // batch) learn steps per task, t_L(T) = a + b T the
least-squares line through the measured per-step medians (learn ops of this run, plus the
``fast`` learn rows of a ``bench_step --json`` file if given), t_U(T) the same from the
``bench_step`` unlearn rows (else t_L), S_U the steps of an unlearn op (unknown before the
run: reported for one pass, ceil(memories / unlearn batch), and for the 48-pass maximum),
and t_eval the measured evaluation time per op (train + test sets).

``probe``: the same thesis-scale setting, but instead of running A4 in order it sets up a
state with T retained tasks (random buffers) for each T in ``--probe-tasks`` and times
``--steps`` steps of a real ``learn_task`` and ``--unlearn-steps`` of a real ``unlearn_task``
(``--unlearn-algo``, default rl-gem, whose steps have NegGEM's structure; stop accuracy 0, so it
does not stop early; each probe says how many steps it timed and why its operation ended), for every impl/precision in
``--configs``, in one process; per-step medians skip each operation's first 3 steps (the
first builds the stacked buffers, the second captures the CUDA graph). The full A4 is then
extrapolated as above with t_L, t_U interpolated linearly between the probed T, so large T
are measured rather than fitted.

``seeds``: ``cluctl launch`` of a short sequence with 3 seeds at ``--per-device 3`` on one
device vs 1 seed; prints both walls and the ratio (3-seed wall / 1-seed wall; 1.0 would be
perfect sharing, 3.0 none).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_step import make_synthetic_npz  # noqa: E402

CLI = [sys.executable, "-m", "cluctl.cli.main"]


def _env(threads: int | None) -> dict:
    e = dict(os.environ)
    src = str(HERE.parent / "src")
    e["PYTHONPATH"] = src + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    if threads:
        e["OMP_NUM_THREADS"] = str(threads)
    return e


def dataset_spec(a, workdir: Path) -> str:
    if a.dataset == "digits":
        return "digits"
    if a.dataset != "cifar-synth":
        return a.dataset
    k = 5
    path = workdir / f"cifar_synth_{a.tasks}x{a.samples_per_task}.npz"
    if not path.exists():
        make_synthetic_npz(path, classes=k * a.tasks, train_per_class=a.samples_per_task // k,
                           test_per_class=max(2, a.samples_per_task // (5 * k)), seed=12345)
    return f"npz:{path}"


def _common_opts(a, ds: str, epochs: int | None = None) -> list[str]:
    out = ["--dataset", ds, "--model", a.model]
    if a.width:
        out += ["--width", str(a.width)]
    if a.dataset != "digits" and a.tasks:
        out += ["--tasks", str(a.tasks)]
    for flag, val in (("--epochs", epochs or a.epochs), ("--memories", a.memories),
                      ("--learn-buffer-type", a.learn_buffer_type),
                      ("--unlearn-buffer-type", a.unlearn_buffer_type)):
        if val is not None:
            out += [flag, str(val)]
    return out


# ---------------------------------------------------------------- measuring wrapper


def measure(cmd: list[str], env: dict, timeout: float | None = None) -> dict:
    """Run ``cmd`` in a fresh wrapper process: wall time and the peak RSS of its largest process."""
    wrapper = [sys.executable, str(Path(__file__).resolve()), "_measure", "--", *cmd]
    p = subprocess.run(wrapper, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"measure wrapper failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _measure_main(cmd: list[str]) -> int:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if p.returncode:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
    print(json.dumps({"rc": p.returncode, "wall_s": wall, "peak_rss_mb": peak, "stdout": p.stdout[-4000:]}))
    return 0


# ---------------------------------------------------------------- a4


def _prewarm(a, ds, store, seeds, env):
    """Compute the memorization proxy of each seed once (cached in the shared store)."""
    if a.learn_buffer_type in ("first", "random") and a.unlearn_buffer_type in ("same", "first", "random"):
        return
    for s in seeds:
        cmd = CLI + ["learn", "--task", "0", "--seed", str(s), "--store", str(store), "-q", "--device",
                     a.device.split(",")[0]] + _common_opts(a, ds, epochs=1)
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode:
            raise RuntimeError(f"prewarm failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
        print(f"  (seed {s}: memorization proxy cached in the shared store, {time.perf_counter() - t0:.1f} s, untimed)",
              flush=True)


def run_launch(a, ds, store, seed, impl, precision, workdir, env, tag="a4", sequence="A4", extra=()):
    name = f"bench-{tag}-{impl}-{precision}-s{seed}-{int(time.time() * 1000) % 10**8}"
    out = workdir / name
    cmd = CLI + ["launch", "--sequence", sequence, "--seed-list", str(seed), "--name", name, "--impl", impl,
                 "--precision", precision, "--devices", a.device, "--store", str(store), "--out", str(out),
                 "--no-plots", "-q"] + _common_opts(a, ds) + list(extra)
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    m = measure(cmd, env)
    if m["rc"]:
        raise RuntimeError(f"launch failed (rc {m['rc']}): {' '.join(cmd)}")
    summ = json.loads((out / "summary.json").read_text())
    s0 = summ["seeds"][0]
    return {"wall_s": m["wall_s"], "peak_rss_mb": m["peak_rss_mb"], "acc": s0.get("acc"),
            "final_retain_acc": s0.get("final_retain_acc"), "train_wall_s": s0.get("wall_s"),
            "op_wall_s": s0.get("op_wall_s"), "op_steps": s0.get("op_steps")}


def run_engine(a, ds, store, seed, impl, precision, workdir, env, sequence="A4"):
    cmd = [sys.executable, str(Path(__file__).resolve()), "_engine", "--dataset-spec", ds, "--seed", str(seed),
           "--impl", impl, "--precision", precision, "--device", a.device, "--store", str(store),
           "--model", a.model, "--sequence", sequence]
    for flag, val in (("--width", a.width), ("--tasks", a.tasks if a.dataset != "digits" else None),
                      ("--epochs", a.epochs), ("--memories", a.memories), ("--threads", a.threads),
                      ("--learn-buffer-type", a.learn_buffer_type), ("--unlearn-buffer-type", a.unlearn_buffer_type)):
        if val is not None:
            cmd += [flag, str(val)]
    m = measure(cmd, env)
    if m["rc"]:
        raise RuntimeError(f"engine run failed (rc {m['rc']})")
    res = json.loads(m["stdout"].strip().splitlines()[-1])
    res.update(wall_s=m["wall_s"], peak_rss_mb=m["peak_rss_mb"])
    return res


def _engine_main(argv) -> int:
    ap = argparse.ArgumentParser()
    for f in ("--dataset-spec", "--impl", "--precision", "--device", "--store", "--model", "--sequence",
              "--learn-buffer-type", "--unlearn-buffer-type"):
        ap.add_argument(f)
    for f in ("--seed", "--width", "--tasks", "--epochs", "--memories", "--threads"):
        ap.add_argument(f, type=int)
    a = ap.parse_args(argv)
    import torch

    from cluctl.api import open_store, run_operation, scores_provider
    from cluctl.engine import evaluate_state, new_state, run_config
    from cluctl.metrics import acc_bwt
    from cluctl.sequences import resolve_sequence

    t0 = time.perf_counter()
    opts = {k: v for k, v in {"epochs": a.epochs, "memories": a.memories, "learn_buffer_type": a.learn_buffer_type,
                              "unlearn_buffer_type": a.unlearn_buffer_type}.items() if v is not None}
    cfg = run_config(dataset=a.dataset_spec, tasks=a.tasks, model=a.model, width=a.width, seed=a.seed, **opts)
    st = new_state(cfg, device=a.device, threads=a.threads)
    st.execution["precision"] = a.precision
    store = open_store(a.store)
    scores_fn = scores_provider(store, st.config)
    ops = resolve_sequence(a.sequence, st.n_tasks, a.seed)
    rows, op_wall, op_steps = [], [], []
    for op in ops:
        t = time.perf_counter()
        summ = run_operation(st, op.kind, op.task, scores_fn=scores_fn, impl=a.impl).summary  # no store: nothing saved
        rows.append(evaluate_state(st)["test_acc"])
        op_wall.append(time.perf_counter() - t)
        op_steps.append(int(summ["steps"]))
    labels = [str(o) for o in ops]
    acc, _ = acc_bwt(labels, np.array(rows))
    last = rows[-1]
    retain = float(np.mean([last[t] for t in st.learned])) if st.learned else None
    print(json.dumps({"acc": acc, "final_retain_acc": retain, "train_wall_s": time.perf_counter() - t0,
                      "op_wall_s": op_wall, "op_steps": op_steps, "torch_threads": torch.get_num_threads()}))
    return 0


def cmd_a4(a) -> int:
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="cluctl-bench-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = Path(a.store or workdir / "store")
    env = _env(a.threads)
    ds = dataset_spec(a, workdir)
    seeds = [int(s) for s in a.seeds.split(",")]
    impls = [i.strip() for i in a.impls.split(",")]
    precisions = [p.strip() for p in a.precisions.split(",")]
    configs = [(i, p) for i in impls for p in precisions]
    load = os.getloadavg()[0]
    print(f"bench_run a4: {a.dataset} ({ds}), model {a.model} width {a.width or 'default'}, sequence {a.sequence}, "
          f"seeds {seeds}, configs {configs}, device {a.device}, threads {a.threads}, driver {a.driver}; "
          f"load average {load:.2f} (a shared machine: timings are noisy); work dir {workdir}", flush=True)
    _prewarm(a, ds, store, seeds, env)
    results = []
    for n, s in enumerate(seeds):
        order = configs if n % 2 == 0 else list(reversed(configs))
        for impl, prec in order:
            fn = run_launch if a.driver == "launch" else run_engine
            r = fn(a, ds, store, s, impl, prec, workdir, env, sequence=a.sequence)
            r.update(seed=s, impl=impl, precision=prec)
            results.append(r)
            print(f"  seed {s} {impl:8} {prec}: wall {r['wall_s']:8.1f} s (ops {r['train_wall_s']:.1f} s), "
                  f"peak RSS {r['peak_rss_mb']:7.1f} MiB, ACC {r['acc']:.4f}, final retained acc "
                  f"{(r['final_retain_acc'] if r['final_retain_acc'] is not None else float('nan')):.4f}"
                  f"{_steps_line(r)}", flush=True)
    print()
    print(f"{'config':18} {'wall s (median)':>16} {'ops s (median)':>15} {'peak RSS MiB':>13} {'mean ACC':>9} "
          f"{'mean retained':>14}")
    summary = {}
    for impl, prec in configs:
        rs = [r for r in results if r["impl"] == impl and r["precision"] == prec]
        row = {"wall_s": statistics.median(r["wall_s"] for r in rs),
               "ops_s": statistics.median(r["train_wall_s"] for r in rs),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
               "acc": float(np.mean([r["acc"] for r in rs])),
               "retain": float(np.mean([r["final_retain_acc"] for r in rs if r["final_retain_acc"] is not None]
                                       or [float("nan")]))}
        summary[f"{impl}/{prec}"] = row
        print(f"{impl + '/' + prec:18} {row['wall_s']:16.1f} {row['ops_s']:15.1f} {row['peak_rss_mb']:13.1f} "
              f"{row['acc']:9.4f} {row['retain']:14.4f}")
    keys = list(summary)
    if "classic/fp32" in summary:
        base = summary["classic/fp32"]
        for k in keys:
            if k != "classic/fp32":
                r = summary[k]
                eq = [equal_work_ratio(c, o) for s in seeds
                      for c in results if c["seed"] == s and (c["impl"], c["precision"]) == ("classic", "fp32")
                      for o in results if o["seed"] == s and f"{o['impl']}/{o['precision']}" == k]
                eq = [x for x in eq if x is not None]
                r["equal_work_ratio"] = statistics.median(eq) if eq else None
                print(f"classic/fp32 vs {k}: wall ratio {base['wall_s'] / r['wall_s']:.2f}x, ops ratio "
                      f"{base['ops_s'] / r['ops_s']:.2f}x, mean ACC difference {r['acc'] - base['acc']:+.4f}, "
                      f"mean final retained difference {r['retain'] - base['retain']:+.4f}")
                if eq:
                    print(f"  equal-work ratio (the same steps in every operation): per seed "
                          f"{', '.join(f'{x:.2f}x' for x in eq)}, median {statistics.median(eq):.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "summary": summary, "dataset": ds,
                                            "load_average": load}, indent=1))
    return 0


def equal_work_ratio(base: dict, other: dict) -> float | None:
    """The speed-up of ``other`` over ``base`` on the same work: the trajectories of two
    impls drift apart (float rounding), so their unlearning operations, which run until the
    stop rule, can take very different numbers of steps. Each operation's seconds per step
    (its wall time, evaluation included, over its steps) is weighted by the mean of the two
    runs' step counts: sum_i n_i b_i / sum_i n_i o_i. None without step counts."""
    bw, bs, ow, os_ = base.get("op_wall_s"), base.get("op_steps"), other.get("op_wall_s"), other.get("op_steps")
    if not (bw and bs and ow and os_) or not (len(bw) == len(bs) == len(ow) == len(os_)):
        return None
    num = den = 0.0
    for wb, nb, wo, no in zip(bw, bs, ow, os_):
        if nb <= 0 or no <= 0:
            continue
        n = (nb + no) / 2
        num += n * wb / nb
        den += n * wo / no
    return num / den if den > 0 else None


def _steps_line(r: dict) -> str:
    return "" if not r.get("op_steps") else f", steps per op {'/'.join(str(n) for n in r['op_steps'])}"


# ---------------------------------------------------------------- budget


class _Budget(Exception):
    pass


def _fit(points):
    """Least-squares a + b T through (T, t) points; constant if only one T."""
    Ts = np.array([p[0] for p in points], dtype=float)
    ts = np.array([p[1] for p in points], dtype=float)
    if len(set(Ts.tolist())) < 2:
        return float(ts.mean()), 0.0
    b, a = np.polyfit(Ts, ts, 1)
    return float(a), float(b)


def _thesis_state(a, name: str, learn_buffer_type: str, unlearn_buffer_type: str):
    """The engine state that ``budget`` and ``probe`` time (dataset written under the work
    dir, torch threads set), and the seconds it took to build."""
    import torch

    from cluctl.engine import new_state, run_config

    workdir = Path(a.workdir or tempfile.mkdtemp(prefix=f"cluctl-bench-{name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_data = time.perf_counter()
    ds = dataset_spec(a, workdir)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = run_config(dataset=ds, tasks=a.tasks, model=a.model, width=a.width, seed=0, epochs=a.epochs,
                     memories=a.memories, learn_buffer_type=learn_buffer_type, unlearn_buffer_type=unlearn_buffer_type)
    return new_state(cfg, device=a.device), time.perf_counter() - t_data


def cmd_budget(a) -> int:
    import torch

    from cluctl.engine import evaluate_state, learn_task, unlearn_task
    from cluctl.sequences import resolve_sequence

    st, data_s = _thesis_state(a, "budget", a.learn_buffer_type or "random", a.unlearn_buffer_type or "random")
    st.execution["precision"] = a.precision
    N, bs = st.n_tasks, st.config["batch_size"]
    spt = int(len(st.dataset.y_train) // N)
    print(f"bench_run budget: {a.model} width {st.config['width']} on {tuple(st.dataset.input_shape)}, {N} tasks x "
          f"{spt} samples, {st.config['epochs']} epochs, batch {bs}, {st.config['memories']} memories; device "
          f"{st.device}, impl {a.impl}, precision {a.precision}, budget {a.budget_s} s (data and state: "
          f"{data_s:.1f} s)", flush=True)
    ops = resolve_sequence("A4", N, 0)
    stamps: list[float] = []
    measured = []
    deadline = time.perf_counter() + a.budget_s
    eval_s = []

    def progress(done, total, msg=""):
        stamps.append(time.perf_counter())
        if stamps[-1] > deadline:
            raise _Budget()

    stopped = False
    for op in ops:
        T = len([t for t in st.learned if t != op.task])
        stamps.clear()
        t0 = time.perf_counter()
        stamps.append(t0)
        try:
            if op.kind == "L":
                learn_task(st, op.task, progress=progress, impl=a.impl)
            else:
                unlearn_task(st, op.task, {}, progress=progress, impl=a.impl)
        except _Budget:
            stopped = True
        steps = np.diff(np.array(stamps))
        if len(steps) > 2:
            med = float(np.median(steps[1:]))  # the first step builds the op's stacked buffers
            measured.append({"op": str(op), "kind": op.kind, "T": T, "steps": int(len(steps)), "median_step_s": med,
                             "complete": not stopped})
            print(f"  {op!s:5} T={T:2}: {len(steps):5} steps, median {med * 1e3:8.2f} ms/step"
                  f"{' (stopped by the budget)' if stopped else ''}", flush=True)
        if stopped:
            break
        if st.device.type == "cuda":
            torch.cuda.synchronize()
        te = time.perf_counter()
        evaluate_state(st)
        if st.device.type == "cuda":
            torch.cuda.synchronize()
        eval_s.append(time.perf_counter() - te)
    if not measured:
        print("nothing measured within the budget")
        return 1
    if not eval_s:  # stopped inside the first operation: time one evaluation now
        te = time.perf_counter()
        evaluate_state(st)
        if st.device.type == "cuda":
            torch.cuda.synchronize()
        eval_s.append(time.perf_counter() - te)
    lpts = [(m["T"], m["median_step_s"]) for m in measured if m["kind"] == "L"]
    upts = [(m["T"], m["median_step_s"]) for m in measured if m["kind"] == "U"]
    if a.step_json and Path(a.step_json).exists():
        rows = json.loads(Path(a.step_json).read_text())["rows"]
        want = a.step_impl or (a.impl if a.precision == "fp32" else f"{a.impl}-{a.precision}")
        lpts += [(r["T"], r["step"]) for r in rows if r["impl"] == want and r["op"] == "learn"]
        upts += [(r["T"], r["step"]) for r in rows if r["impl"] == want and r["op"] == "unlearn"]
    aL, bL = _fit(lpts)
    aU, bU = _fit(upts) if upts else (aL, bL)
    S_L = st.config["epochs"] * sum(1 for s in range(0, spt, bs) if min(bs, spt - s) >= 2)
    ub = 10
    one_pass = math.ceil(st.config["memories"] / ub)
    t_eval = float(np.median(eval_s)) if eval_s else float("nan")
    learn_total = sum(S_L * (aL + bL * i) for i in range(N))
    un_T = list(range(N - 1, 0, -1))
    un_1 = sum(one_pass * (aU + bU * f) for f in un_T)
    un_48 = 48 * un_1
    evals = (2 * N - 1) * t_eval
    lo, hi = learn_total + un_1 + evals, learn_total + un_48 + evals
    print(f"\nper-step fit: learn t_L(T) = {aL * 1e3:.2f} ms + {bL * 1e3:.2f} ms x T   "
          f"(from {len(lpts)} points); unlearn t_U(T) = {aU * 1e3:.2f} ms + {bU * 1e3:.2f} ms x T; "
          f"eval per op {t_eval:.2f} s")
    print(f"extrapolated full A4 ({N} tasks): learning {learn_total:.0f} s ({S_L} steps per task), unlearning "
          f"{un_1:.0f} s at one pass per op ({one_pass} steps) .. {un_48:.0f} s at 48 passes, evaluation {evals:.0f} s")
    print(f"EXTRAPOLATED TOTAL: {lo / 60:.1f} min (one pass per unlearn op) .. {hi / 60:.1f} min (48 passes); "
          f"thesis: 65 min per seed")
    if a.json:
        Path(a.json).write_text(json.dumps({"measured": measured, "learn_fit": [aL, bL], "unlearn_fit": [aU, bU],
                                            "eval_s": eval_s, "S_L": S_L, "one_pass": one_pass,
                                            "total_min_s": lo, "total_max_s": hi, "device": str(st.device),
                                            "impl": a.impl, "precision": a.precision}, indent=1))
    return 0


# ---------------------------------------------------------------- probe


def cmd_probe(a) -> int:
    """Per-step times of real engine operations at chosen T, for several impl/precision
    settings in one process, and the full A4 extrapolated from them."""
    import torch

    from cluctl.data import task_indices
    from cluctl.engine import evaluate_state, learn_task, unlearn_task

    st, data_s = _thesis_state(a, "probe", "random", "random")
    init = {k: v.detach().clone() for k, v in st.model.state_dict().items()}
    N, bs, M = st.n_tasks, st.config["batch_size"], st.config["memories"]
    spt = int(len(st.dataset.y_train) // N)
    Ts = [int(t) for t in a.probe_tasks.split(",")]
    if max(Ts) >= N:
        raise SystemExit(f"--probe-tasks needs T < {N}")
    configs = [c.strip().split("/") for c in a.configs.split(",")]
    sync = torch.cuda.synchronize if st.device.type == "cuda" else (lambda: None)
    print(f"bench_run probe: {a.model} width {st.config['width']} on {tuple(st.dataset.input_shape)}, {N} tasks x "
          f"{spt} samples, batch {bs}, {M} memories; device {st.device}; T in {Ts}; {a.steps} learn and "
          f"{a.unlearn_steps} unlearn steps per probe (median of all but the first 3); configs "
          f"{['/'.join(c) for c in configs]}; data and state {data_s:.1f} s", flush=True)
    rows = {tuple(c): {} for c in configs}
    gen = torch.Generator().manual_seed(0)
    bufs = {}
    for t in range(max(Ts) + 1):
        idx = task_indices(st.dataset.y_train, st.classes(t))
        pick = idx[torch.randperm(len(idx), generator=gen)[: min(M, len(idx))]].tolist()
        bufs[t] = {"learn": {"indices": pick}, "unlearn": {"indices": pick}}

    def timed(fn, limit):
        stamps = [time.perf_counter()]

        def progress(done, total, msg=""):
            sync()
            stamps.append(time.perf_counter())
            if len(stamps) > limit:
                raise _Budget()
        why = "probe done"
        try:
            summary = fn(progress)
            why = f"op ended: {summary.get('stopped') or ('diverged' if summary.get('diverged') else 'complete')}"
        except _Budget:
            pass
        d = np.diff(np.array(stamps))
        return (float(np.median(d[3:])) if len(d) > 4 else float("nan")), len(d), why

    for T in Ts:
        for impl, prec in configs:
            st.model.load_state_dict(init)
            st.learned, st.forgotten, st.history = list(range(T)), [], [f"L{j}" for j in range(T)]
            st.buffers = {j: bufs[j] for j in range(T)}
            tl, nl, wl = timed(lambda pr: learn_task(st, T, progress=pr, impl=impl, precision=prec), a.steps)
            st.model.load_state_dict(init)
            st.learned, st.history = list(range(T + 1)), [f"L{j}" for j in range(T + 1)]
            st.buffers = {j: bufs[j] for j in range(T + 1)}
            tu, nu, wu = timed(lambda pr: unlearn_task(st, T, {"algo": a.unlearn_algo, "stop_acc": 0.0}, progress=pr,
                                                       impl=impl, precision=prec), a.unlearn_steps) \
                if T > 0 else (float("nan"), 0, "no retained task")
            rows[(impl, prec)][T] = (tl, tu)
            print(f"  T={T:2} {impl}/{prec}: learn {tl * 1e3:8.2f} ms/step ({nl} steps, {wl}), unlearn ({a.unlearn_algo}) "
                  f"{tu * 1e3:8.2f} ms/step ({nu} steps, {wu})", flush=True)
    sync()
    te = time.perf_counter()
    evaluate_state(st)
    sync()
    t_eval = time.perf_counter() - te
    S_L = st.config["epochs"] * sum(1 for s_ in range(0, spt, bs) if min(bs, spt - s_) >= 2)
    one_pass = math.ceil(M / 10)
    out = {}
    print(f"\nextrapolated full A4 ({N} tasks x {S_L} learn steps; unlearn ops at one pass = {one_pass} steps .. 48 "
          f"passes; {2 * N - 1} evaluations of {t_eval:.2f} s), per-step times interpolated linearly between the "
          f"probed T:")
    for (impl, prec), r in rows.items():
        Tp = sorted(r)
        tl = [r[t][0] for t in Tp]
        tu_T = [t for t in Tp if t > 0 and not math.isnan(r[t][1])]
        tu = [r[t][1] for t in tu_T]
        learn_total = sum(S_L * float(np.interp(i, Tp, tl)) for i in range(N))
        un_1 = sum(one_pass * float(np.interp(f, tu_T, tu)) for f in range(N - 1, 0, -1)) if tu else float("nan")
        evals = (2 * N - 1) * t_eval
        lo, hi = learn_total + un_1 + evals, learn_total + 48 * un_1 + evals
        out[f"{impl}/{prec}"] = {"probes": {str(t): r[t] for t in Tp}, "learn_s": learn_total, "unlearn_1pass_s": un_1,
                                 "eval_s": evals, "total_min_s": lo, "total_max_s": hi}
        print(f"  {impl}/{prec:5}: learning {learn_total:7.0f} s + unlearning {un_1:5.0f} s (1 pass) + evaluation "
              f"{evals:3.0f} s = EXTRAPOLATED {lo / 60:6.1f} min ({hi / 60:.1f} min at 48 passes per unlearn op)")
    base = out.get("classic/fp32")
    if base:
        for k, v in out.items():
            if k != "classic/fp32":
                print(f"  classic/fp32 vs {k}: {base['total_min_s'] / v['total_min_s']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": str(st.device), "results": out, "S_L": S_L,
                                            "t_eval": t_eval}, indent=1))
    return 0


# ---------------------------------------------------------------- seeds


def cmd_seeds(a) -> int:
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="cluctl-bench-seeds-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = _env(None)
    ds = dataset_spec(a, workdir)
    walls = {}
    for n in (1, a.seeds):
        store = workdir / f"store-{n}"
        name = f"bench-seeds-{n}"
        cmd = CLI + ["launch", "--sequence", a.sequence, "--seeds", str(n), "--per-device", str(n), "--devices",
                     a.device, "--name", name, "--store", str(store), "--out", str(workdir / name), "--no-plots",
                     "-q", "--impl", a.impl, "--precision", a.precision] + _common_opts(a, ds)
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        m = measure(cmd, env)
        if m["rc"]:
            raise RuntimeError(f"launch failed: {' '.join(cmd)}")
        summ = json.loads((workdir / name / "summary.json").read_text())
        walls[n] = m["wall_s"]
        seed_walls = [s.get("wall_s") for s in summ["seeds"]]
        print(f"{n} seed(s), --per-device {n} on {a.device}: wall {m['wall_s']:.1f} s (per-seed op time "
              f"{', '.join(f'{w:.1f}' for w in seed_walls)} s), peak RSS {m['peak_rss_mb']:.0f} MiB", flush=True)
    ratio = walls[a.seeds] / walls[1]
    print(f"RATIO {a.seeds}-seed wall / 1-seed wall = {ratio:.2f} (1.0 = free sharing, {a.seeds}.0 = none)")
    if a.json:
        Path(a.json).write_text(json.dumps({"walls": walls, "ratio": ratio}, indent=1))
    return 0


# ---------------------------------------------------------------- main


def _add_common(p, **defaults):
    p.add_argument("--dataset", default=defaults.get("dataset", "digits"), help="digits, cifar-synth or a cluctl dataset")
    p.add_argument("--samples-per-task", type=int, default=defaults.get("samples_per_task", 100))
    p.add_argument("--tasks", type=int, default=defaults.get("tasks", 5), help="tasks of cifar-synth (5 classes each)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=defaults.get("width"))
    p.add_argument("--epochs", type=int, default=defaults.get("epochs"))
    p.add_argument("--memories", type=int, default=defaults.get("memories"))
    p.add_argument("--learn-buffer-type", default=defaults.get("learn_buffer_type"))
    p.add_argument("--unlearn-buffer-type", default=defaults.get("unlearn_buffer_type"))
    p.add_argument("--device", default=defaults.get("device", "cpu"))
    p.add_argument("--threads", type=int, default=defaults.get("threads"))
    p.add_argument("--impl", default="fast")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_measure"]:
        return _measure_main(argv[2:] if argv[1:2] == ["--"] else argv[1:])
    if argv[:1] == ["_engine"]:
        return _engine_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    p = sub.add_parser("a4", help="classic vs fast end-to-end (default)")
    _add_common(p, threads=1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--impls", default="classic,fast")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--sequence", default="A4")
    p.add_argument("--driver", choices=("launch", "engine"), default="launch")
    p.add_argument("--store", default=None)
    p = sub.add_parser("budget", help="thesis-scale CIFAR-shaped A4 for a time budget, extrapolated")
    _add_common(p, dataset="cifar-synth", samples_per_task=2500, tasks=20, width=20, epochs=3, memories=256,
                device="cuda")
    p.add_argument("--budget-s", type=float, default=150)
    p.add_argument("--step-json", default=None, help="bench_step --json output to anchor large T")
    p.add_argument("--step-impl", default=None,
                   help="which bench_step rows anchor the fit (default: --impl, or e.g. fast-bf16 with --precision bf16)")
    p = sub.add_parser("seeds", help="3 seeds sharing one device vs 1 seed")
    _add_common(p, dataset="cifar-synth", samples_per_task=1000, tasks=20, device="cuda",
                learn_buffer_type="random", unlearn_buffer_type="random")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sequence", default="L0 L1 L2")
    p = sub.add_parser("probe", help="per-step times of real operations at chosen T, full A4 extrapolated")
    _add_common(p, dataset="cifar-synth", samples_per_task=2500, tasks=20, width=20, epochs=3, memories=256,
                device="cuda")
    p.add_argument("--probe-tasks", default="0,1,2,5,10,19", help="retained-task counts T to probe")
    p.add_argument("--configs", default="classic/fp32,fast/fp32", help="impl/precision pairs, comma-separated")
    p.add_argument("--steps", type=int, default=40, help="learn steps per probe")
    p.add_argument("--unlearn-steps", type=int, default=25, help="unlearn steps per probe")
    p.add_argument("--unlearn-algo", default="rl-gem",
                   help="unlearning algorithm probed (default rl-gem: the same step structure as NegGEM - forget "
                        "gradient, T reference gradients, GEM projection - but its random labels keep the forget "
                        "accuracy near chance, so the probe is not cut short; NegGEM reaches the probe's stop "
                        "accuracy of 0 within a few steps at some T)")
    if not argv or argv[0] not in ("a4", "budget", "seeds", "probe", "-h", "--help"):
        argv = ["a4"] + argv
    a = ap.parse_args(argv)
    return {"a4": cmd_a4, "budget": cmd_budget, "seeds": cmd_seeds, "probe": cmd_probe}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
