"""ACC and BWT (SPEC §7) of naive, gem and agem on digits, each task learned by its own
`cluctl learn` process chained with --from, exactly as a user would in a shell.

    python benchmarks/learn_chain.py --seeds 0 1 2 --model mlp
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from cluctl.metrics import acc_bwt

CLI = [sys.executable, "-m", "cluctl.cli.main"]


def run(args, env):
    p = subprocess.run(CLI + args, capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"failed: cluctl {' '.join(args)}\n{p.stderr}")
    return p.stdout


def chain(algo, seed, model, extra, env):
    ops, rows = [], []
    ref = None
    for t in range(5):
        args = ["learn", "--task", str(t), "-q"]
        args += ["--from", ref] if ref else ["--dataset", "digits", "--model", model, "--seed", str(seed), *extra]
        if t == 0:
            args += ["--algo", algo]
        ref = run(args, env).strip()
        res = json.loads(run(["evaluate", ref, "--json"], env))
        ops.append(f"L{t}")
        rows.append([x["test_acc"] for x in res["tasks"]])
    return acc_bwt(ops, np.array(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--algos", nargs="+", default=["naive", "gem", "agem"])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--threads", default="1")
    ap.add_argument("extra", nargs="*", help="more learn options, after --")
    a = ap.parse_args()
    env = dict(os.environ, CLUCTL_STORE=tempfile.mkdtemp(prefix="cluctl-chain-"), OMP_NUM_THREADS=a.threads)
    print(f"digits, model {a.model}, 5 tasks, one `cluctl learn` per task; store {env['CLUCTL_STORE']}")
    print(f"{'algo':6} {'seed':>4} {'ACC':>7} {'BWT':>8} {'wall s':>7}")
    summary = {}
    for algo in a.algos:
        accs, bwts = [], []
        for seed in a.seeds:
            t0 = time.perf_counter()
            acc, bwt = chain(algo, seed, a.model, a.extra, env)
            accs.append(acc)
            bwts.append(bwt)
            print(f"{algo:6} {seed:>4} {acc:7.4f} {bwt:8.4f} {time.perf_counter() - t0:7.1f}", flush=True)
        summary[algo] = (np.mean(accs), np.std(accs), np.mean(bwts), np.std(bwts))
    print(f"\n{'algo':6} {'ACC mean±std':>16} {'BWT mean±std':>18}")
    for algo, (am, asd, bm, bsd) in summary.items():
        print(f"{algo:6} {am:8.4f} ± {asd:.4f} {bm:9.4f} ± {bsd:.4f}")


if __name__ == "__main__":
    main()
