"""Issue-3 table: on digits, learn tasks 0..4 with GEM, then unlearn 4, 3, 2, 1 with each of
the six algorithms, for several seeds (in-process, through the Python API).

Per algorithm (mean over seeds): mean train accuracy on the forgotten tasks at the end,
task 0's test accuracy before (after L4) and after (after U1), unlearning steps (sum over
the four requests), how many requests reached the stop accuracy vs hit --max-epochs, and
wall time of the four unlearning requests.

    python benchmarks/unlearn_table.py --seeds 0 1 2 --model mlp
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from cluctl import api
from cluctl.unlearning import names as unlearn_names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--algos", nargs="+", default=list(unlearn_names()))
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--impl", default="fast")
    ap.add_argument("--salun-strength", type=float, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    store = tempfile.mkdtemp(prefix="cluctl-unlearn-")
    rows = {algo: [] for algo in a.algos}
    for seed in a.seeds:
        t0 = time.perf_counter()
        r = api.learn(0, store=store, dataset="digits", model=a.model, width=a.width, seed=seed, impl=a.impl)
        for t in range(1, 5):
            r = api.learn(t, from_ref=r.id, store=store, impl=a.impl)
        learned = r.id
        before = api.evaluate(learned, store=store)["tasks"][0]["test_acc"]
        print(f"seed {seed}: learned 0..4 with GEM in {time.perf_counter() - t0:.1f} s, task 0 test acc {before:.3f}",
              flush=True)
        for algo in a.algos:
            t0 = time.perf_counter()
            ref, steps, stops, forget_accs = learned, 0, [], []
            for t in (4, 3, 2, 1):
                u = api.unlearn(t, from_ref=ref, store=store, algo=algo, impl=a.impl, salun_strength=a.salun_strength)
                ref = u.id
                steps += u.summary["steps"]
                stops.append(u.summary["stopped"])
                forget_accs.append(u.summary["final_forget_acc"])
            wall = time.perf_counter() - t0
            ev = api.evaluate(ref, store=store)["tasks"]
            rows[algo].append({
                "forgot_train": np.mean([ev[t]["train_acc"] for t in (1, 2, 3, 4)]),
                "forgot_test": np.mean([ev[t]["test_acc"] for t in (1, 2, 3, 4)]),
                "t0_before": before, "t0_after": ev[0]["test_acc"], "steps": steps,
                "reached": sum(s == "stop-acc" for s in stops), "buffer_acc": max(forget_accs), "wall": wall,
            })
            print(f"  {algo:10} steps {steps:5d} stops {stops} buffer acc max {max(forget_accs):.3f} "
                  f"task0 {ev[0]['test_acc']:.3f} {wall:.1f} s", flush=True)
    print(f"\ndigits, model {a.model}, seeds {a.seeds}, impl {a.impl}; stop accuracy 0.583 (2-way tasks)")
    hdr = ("algorithm", "forgotten train acc", "forgotten test acc", "task0 before", "task0 after", "steps",
           "reached stop", "wall s")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for algo, rs in rows.items():
        m = {k: np.mean([r[k] for r in rs]) for k in rs[0]}
        n_req = 4 * len(rs)
        print(f"| {algo} | {m['forgot_train']:.3f} | {m['forgot_test']:.3f} | {m['t0_before']:.3f} | "
              f"{m['t0_after']:.3f} | {m['steps']:.0f} | {sum(r['reached'] for r in rs)}/{n_req} | {m['wall']:.1f} |")


if __name__ == "__main__":
    main()
