"""Result spread over seeds on digits: ACC and BWT of a learning algorithm (and, with
``--unlearn``, the final forget/retain test accuracy of unlearning algorithms on A4) for
several models, both implementations and both BatchNorm running-statistics behaviours.

A number is a result only with its spread: this prints mean ± s.d. (ddof 1) over the seeds,
and the paired difference between settings that share a seed.

    python benchmarks/bench_spread.py --seeds 10                       # GEM: resnet18 nf20 and mlp
    python benchmarks/bench_spread.py --seeds 10 --models mlp:100 --unlearn neggem,rl-gem,neggrad

Settings: digits, lr 0.1, batch 10, 3 epochs, 64 random memories per task (the setting of
the comparison in SPEC §2); ``--bn track`` is SPEC §2's behaviour (reference passes update
BatchNorm's running statistics), ``--bn frozen`` the earlier one. Not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch


def run_one(model: str, width: int, seed: int, impl: str, bn: str, algo: str, memories: int,
            unlearn: str | None) -> dict:
    from cluctl import grads
    from cluctl.engine import evaluate_state, learn_task, new_state, run_config, unlearn_task
    from cluctl.errors import Diverged
    from cluctl.metrics import acc_bwt

    grads.REF_BN_UPDATE = bn == "track"
    cfg = run_config(dataset="digits", model=model, width=width, seed=seed, learn_algo=algo, memories=memories,
                     learn_buffer_type="random", unlearn_buffer_type="random", lr=0.1, batch_size=10, epochs=3)
    st = new_state(cfg, device="cpu")
    ops, rows = [], []
    for t in range(st.n_tasks):
        learn_task(st, t, impl=impl)
        ops.append(f"L{t}")
        rows.append(evaluate_state(st)["test_acc"])
    acc, bwt = acc_bwt(ops, np.array(rows))
    out = {"acc": acc, "bwt": bwt}
    if unlearn:
        status = "ok"
        try:
            for t in range(st.n_tasks - 1, 0, -1):
                unlearn_task(st, t, {"algo": unlearn}, impl=impl)
        except Diverged:
            status = "diverged"
        ev = evaluate_state(st)["test_acc"]
        out.update(forget=float(np.mean(ev[1:])) if status == "ok" else None,
                   retain=float(ev[0]) if status == "ok" else None, status=status)
    return out


def _ms(vals) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    a = np.array(vals, dtype=float)
    sd = a.std(ddof=1) if len(a) > 1 else float("nan")
    return f"{a.mean():.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--models", default="resnet18:20,mlp:100", help="kind:width list")
    ap.add_argument("--impls", default="fast,classic")
    ap.add_argument("--bn", default="track,frozen", help="track (SPEC §2) and/or frozen (earlier behaviour)")
    ap.add_argument("--algo", default="gem")
    ap.add_argument("--memories", type=int, default=64)
    ap.add_argument("--unlearn", default="", help="unlearning algorithms to run on A4 after learning (comma list)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write every run's numbers here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    models = [(m.split(":")[0], int(m.split(":")[1])) for m in a.models.split(",") if m]
    impls = [i for i in a.impls.split(",") if i]
    bns = [b for b in a.bn.split(",") if b]
    unlearns = [u for u in a.unlearn.split(",") if u] or [None]
    results = {}
    for (model, width), bn, unlearn in itertools.product(models, bns, unlearns):
        if model == "mlp" and bn == "frozen" and "track" in bns:
            continue  # the MLP has no BatchNorm: the two behaviours are the same computation
        for impl in impls:
            key = f"{model}:{width} bn={bn} impl={impl}" + (f" unlearn={unlearn}" if unlearn else "")
            t0 = time.perf_counter()
            runs = [run_one(model, width, s, impl, bn, a.algo, a.memories, unlearn) for s in range(a.seeds)]
            results[key] = runs
            line = (f"{key:48s} ACC {_ms([r['acc'] for r in runs])}  BWT {_ms([r['bwt'] for r in runs])}")
            if unlearn:
                div = sum(r["status"] == "diverged" for r in runs)
                line += (f"  forget {_ms([r['forget'] for r in runs])}  retain {_ms([r['retain'] for r in runs])}"
                         f"  diverged {div}/{len(runs)}")
            print(f"{line}  ({a.seeds} seeds, {time.perf_counter() - t0:.0f} s)", flush=True)
    keys = list(results)
    for k1, k2 in itertools.combinations(keys, 2):
        if k1.split()[0] != k2.split()[0]:
            continue
        metric = "retain" if "unlearn=" in k1 else "acc"  # the same learning runs: compare what differs
        d = [None if r1.get(metric) is None or r2.get(metric) is None else r1[metric] - r2[metric]
             for r1, r2 in zip(results[k1], results[k2])]
        print(f"paired {metric:6s} [{k1}] - [{k2}]: {_ms(d)}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
