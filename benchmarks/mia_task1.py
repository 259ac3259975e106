"""Loss-based MIA AUC on digits' task 1 training data before and after unlearning it (A4:
learn 0..4 with GEM, then unlearn 4, 3, 2, 1), per unlearning algorithm and seed.

    python benchmarks/mia_task1.py --algos neggem neggrad --seeds 0 1 2 --model mlp
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from cluctl import api


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--algos", nargs="+", default=["neggem", "neggrad"])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    store = tempfile.mkdtemp(prefix="cluctl-mia-")
    rows = []
    for seed in a.seeds:
        r = api.learn(0, store=store, dataset="digits", model=a.model, seed=seed)
        for t in range(1, 5):
            r = api.learn(t, from_ref=r.id, store=store)
        before = api.mia(r.id, 1, members="train", store=store)
        before_eff = None
        for algo in a.algos:
            ref = r.id
            for t in (4, 3, 2, 1):
                ref = api.unlearn(t, from_ref=ref, store=store, algo=algo).id
            after = api.mia(ref, 1, members="train", store=store)
            eff = api.mia(ref, 1, attack="efficacy", store=store)["efficacy"]
            acc1 = api.evaluate(ref, store=store)["tasks"][1]
            rows.append((algo, seed, before["auc"], after["auc"], eff, acc1["train_acc"]))
            print(f"{algo:8} seed {seed}: task-1 MIA AUC before {before['auc']:.3f} -> after {after['auc']:.3f} "
                  f"(n={after['n']} per side), MIA-efficacy {eff:.3f}, task-1 train acc {acc1['train_acc']:.3f}",
                  flush=True)
    print("\n| algorithm | AUC before (mean ± std) | AUC after | MIA-efficacy after | task-1 train acc after |")
    print("|---|---|---|---|---|")
    for algo in a.algos:
        rs = np.array([r[2:] for r in rows if r[0] == algo], dtype=float)
        m, s = rs.mean(0), rs.std(0)
        print(f"| {algo} | {m[0]:.3f} ± {s[0]:.3f} | {m[1]:.3f} ± {s[1]:.3f} | {m[2]:.3f} ± {s[2]:.3f} | "
              f"{m[3]:.3f} ± {s[3]:.3f} |")


if __name__ == "__main__":
    main()
