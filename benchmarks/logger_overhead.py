"""What do the experiment loggers cost? The same operations (learn tasks 0-2 with GEM, then
NegGEM on task 1) without a listener and with ``launch --log``'s SeedLogger (csv, and
tensorboard when installed), alternated in one process, several repeats; prints the median
seconds of each and their ratio. The weights are checked to be bitwise equal: listening
changes no number.

    .venv/bin/python benchmarks/logger_overhead.py --repeats 5 [--model resnet18 --width 8]

Not a test; it prints figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from cluctl.engine import learn_task, new_state, run_config, unlearn_task
from cluctl.launch.loggers import SeedLogger


def one(model: str, width: int, kinds: list[str] | None, log_dir: str) -> tuple[float, dict]:
    st = new_state(run_config(dataset="digits", model=model, width=width, epochs=1, memories=32,
                              learn_buffer_type="random", unlearn_buffer_type="random"), device="cpu")
    logger = SeedLogger(kinds, log_dir, "bench", 0, {"model": model}) if kinds else None
    t0 = time.perf_counter()
    for i, (kind, task) in enumerate([("L", 0), ("L", 1), ("L", 2), ("U", 1)]):
        if logger:
            logger.start_op(i, f"{kind}{task}")
        hook = logger.step if logger else None
        if kind == "L":
            s = learn_task(st, task, on_step=hook)
        else:
            s = unlearn_task(st, task, {"algo": "neggem"}, on_step=hook)
        if logger:
            logger.op({"steps": float(s["steps"])}, steps=s["steps"])
    wall = time.perf_counter() - t0
    if logger:
        logger.close()
    return wall, {k: v.clone() for k, v in st.model.state_dict().items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--width", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    kinds = ["csv"]
    try:
        import tensorboard  # noqa: F401

        kinds.append("tensorboard")
    except ImportError:
        pass
    plain, logged = [], []
    with tempfile.TemporaryDirectory() as d:
        one(a.model, a.width, None, d)  # warm-up
        for r in range(a.repeats):
            w0, s0 = one(a.model, a.width, None, d)
            w1, s1 = one(a.model, a.width, kinds, f"{d}/r{r}")
            assert all(torch.equal(s0[k], s1[k]) for k in s0), "listening changed the weights"
            plain.append(w0)
            logged.append(w1)
    mp, ml = statistics.median(plain), statistics.median(logged)
    print(f"{a.model} width {a.width}, L0 L1 L2 U1 (neggem), {a.repeats} repeats, 1 thread")
    print(f"{'no logger':<24}median {mp:.3f} s  (min {min(plain):.3f}, max {max(plain):.3f})")
    print(f"{'--log ' + ','.join(kinds):<24}median {ml:.3f} s  (min {min(logged):.3f}, max {max(logged):.3f})")
    print(f"ratio logged/plain: {ml / mp:.2f}")


if __name__ == "__main__":
    main()
