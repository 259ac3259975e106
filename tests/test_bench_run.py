"""The pure helpers of benchmarks/bench_run.py (the benchmarks themselves are not run here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_run  # noqa: E402


def test_equal_work_ratio_weights_each_op_by_the_mean_step_count():
    # op 0: the same 10 steps, 2 s/step vs 1 s/step; op 1 (an unlearning that ran 3x longer in
    # the fast run): 1 s/step over 10 steps vs 0.5 s/step over 30 steps
    base = {"op_wall_s": [20.0, 10.0], "op_steps": [10, 10]}
    fast = {"op_wall_s": [10.0, 15.0], "op_steps": [10, 30]}
    # n = 10 and 20: (10*2 + 20*1) / (10*1 + 20*0.5) = 40 / 20
    assert bench_run.equal_work_ratio(base, fast) == pytest.approx(2.0)
    # the plain wall ratio hides it: 30 s vs 25 s
    assert sum(base["op_wall_s"]) / sum(fast["op_wall_s"]) == pytest.approx(1.2)


def test_equal_work_ratio_skips_empty_ops_and_needs_step_counts():
    base = {"op_wall_s": [4.0, 0.1], "op_steps": [4, 0]}
    fast = {"op_wall_s": [2.0, 0.1], "op_steps": [4, 0]}
    assert bench_run.equal_work_ratio(base, fast) == pytest.approx(2.0)
    assert bench_run.equal_work_ratio({"op_wall_s": [1.0]}, fast) is None
    assert bench_run.equal_work_ratio(base, {"op_wall_s": [1.0], "op_steps": [1]}) is None
