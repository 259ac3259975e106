"""Metrics (SPEC §7) on small hand-made matrices.

Every expected number below is worked out by hand in the comments, not by the
formula under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cluctl.errors import UsageError
from cluctl.metrics import (
    acc_bwt,
    clu_mix,
    final_metrics,
    forget_retain,
    per_op_table,
    reference_rows,
    task_status,
    tow,
)

EPS = 1e-12

# --------------------------------------------------------------------------- #
# A4-style 3-task sequence: L0 L1 L2 U2 U1
# --------------------------------------------------------------------------- #
A4_OPS = ["L0", "L1", "L2", "U2", "U1"]
A4_TRAIN = np.array(
    [
        [0.90, 0.30, 0.35],  # row 0: after L0
        [0.85, 0.95, 0.30],  # row 1: after L1
        [0.80, 0.90, 0.96],  # row 2: after L2
        [0.82, 0.88, 0.40],  # row 3: after U2
        [0.86, 0.30, 0.25],  # row 4: after U1
    ]
)
A4_TEST = np.array(
    [
        [0.80, 0.20, 0.30],
        [0.75, 0.85, 0.25],
        [0.70, 0.80, 0.90],
        [0.72, 0.78, 0.35],
        [0.76, 0.33, 0.30],
    ]
)


def test_task_status():
    assert task_status(A4_OPS, 3) == [
        ["learned", "unseen", "unseen"],
        ["learned", "learned", "unseen"],
        ["learned", "learned", "learned"],
        ["learned", "learned", "forgotten"],
        ["learned", "forgotten", "forgotten"],
    ]
    # relearn: back to learned
    assert task_status(["L0", "U0", "L0"], 2)[-1] == ["learned", "unseen"]


def test_reference_rows_a4_small():
    # U2 (row 3): retained {0,1} = learned set of row 1 -> 1
    # U1 (row 4): retained {0}   = learned set of row 0 -> 0
    # rows 0..2: the reference must be an EARLIER row (r < i); no earlier row has
    # the same learned set, so the definition gives None (not the row itself).
    assert reference_rows(A4_OPS, 3) == [None, None, None, 1, 0]


def test_reference_rows_a4_twenty_tasks():
    ops = [f"L{t}" for t in range(20)] + [f"U{t}" for t in range(19, 0, -1)]
    assert len(ops) == 39
    refs = reference_rows(ops, 20)
    for i in range(20, 39):
        assert refs[i] == 38 - i
    assert refs[:20] == [None] * 20


def test_reference_rows_latest_qualifying_and_no_u_before():
    # L0 L1 U1 L2 U2: row 4 retained {0}; row 0 qualifies (learned {0}, no U yet);
    # row 2 also has learned set {0} but ops[0..2] contains U1 -> not a reference.
    assert reference_rows(["L0", "L1", "U1", "L2", "U2"], 3) == [None, None, 0, None, 0]
    # L0 L0 U0? no: L0 L1 L0 U1 -> rows 1 and 2 both have {0,1}; for row 3
    # (retained {0}) only row 0; row 2's reference is row 1 (earlier, same set).
    assert reference_rows(["L0", "L1", "L0", "U1"], 2) == [None, None, 1, 0]
    # several qualifying rows: L0 L1 L1 L2 U2 -> row 4 retained {0,1}: rows 1, 2
    # qualify, the latest (2) wins.
    assert reference_rows(["L0", "L1", "L1", "L2", "U2"], 3)[4] == 2


def test_tow_hand_computed():
    vals = tow(A4_OPS, A4_TRAIN, A4_TEST)
    # rows 0..2: no earlier reference row -> None
    assert vals[:3] == [None, None, None]
    # row 3 (U2), ref row 1:
    #   dS = |0.40 - 0.30| = 0.10
    #   dR = mean(|0.82-0.85|, |0.88-0.95|) = mean(0.03, 0.07) = 0.05
    #   dT = |mean(0.72, 0.78) - mean(0.75, 0.85)| = |0.75 - 0.80| = 0.05
    #   ToW = 0.90 * 0.95 * 0.95 = 0.81225
    assert abs(vals[3] - 0.81225) < EPS
    # row 4 (U1), ref row 0:
    #   dS = mean(|0.30-0.30|, |0.25-0.35|) = mean(0, 0.10) = 0.05
    #   dR = |0.86 - 0.90| = 0.04
    #   dT = |0.76 - 0.80| = 0.04
    #   ToW = 0.95 * 0.96 * 0.96 = 0.87552
    assert abs(vals[4] - 0.87552) < EPS


def test_tow_no_reference_is_none():
    # L0 L1 U0: retained {1}; learned sets before were {0}, {0,1} -> no reference
    train = np.array([[0.9, 0.1], [0.8, 0.9], [0.2, 0.9]])
    test = np.array([[0.8, 0.1], [0.7, 0.8], [0.2, 0.8]])
    assert tow(["L0", "L1", "U0"], train, test) == [None, None, None]


def test_tow_explicit_reference():
    train = np.array([[0.9, 0.1], [0.8, 0.9], [0.5, 0.85]])
    test = np.array([[0.8, 0.1], [0.7, 0.8], [0.4, 0.70]])
    ref = (np.array([0.3, 0.9]), np.array([0.25, 0.8]))
    # row 2: forgotten {0}: dS = |0.5 - 0.3| = 0.2; retained {1}: dR = |0.85 - 0.9| = 0.05,
    # dT = |0.70 - 0.80| = 0.10; ToW = 0.8 * 0.95 * 0.9 = 0.684
    vals = tow(["L0", "L1", "U0"], train, test, reference=[None, None, ref])
    assert vals[:2] == [None, None]
    assert abs(vals[2] - 0.684) < EPS
    # callable form
    vals2 = tow(["L0", "L1", "U0"], train, test, reference=lambda i: ref if i == 2 else None)
    assert vals2 == vals
    # wrong length / wrong row shape
    with pytest.raises(UsageError):
        tow(["L0", "L1", "U0"], train, test, reference=[ref])
    with pytest.raises(UsageError):
        tow(["L0", "L1", "U0"], train, test, reference=[None, None, (np.zeros(3), np.zeros(2))])


def test_tow_perfect_unlearning_is_one():
    # L0 L1 U1 where after U1 the model equals the row-0 model exactly
    train = np.array([[0.9, 0.1], [0.9, 0.95], [0.9, 0.1]])
    test = np.array([[0.8, 0.1], [0.8, 0.90], [0.8, 0.1]])
    assert tow(["L0", "L1", "U1"], train, test) == [None, None, 1.0]


# --------------------------------------------------------------------------- #
# CLU_mix, F4-style with a relearned task: L0 L1 U1 L2 L1, k = 10
# --------------------------------------------------------------------------- #
F4_OPS = ["L0", "L1", "U1", "L2", "L1"]
F4_TRAIN = np.array(
    [
        [0.90, 0.10, 0.10],  # after L0   anchor0 = 0.90
        [0.85, 0.95, 0.12],  # after L1   anchor1 = 0.95 (first learn)
        [0.80, 0.30, 0.11],  # after U1
        [0.75, 0.25, 0.92],  # after L2   anchor2 = 0.92
        [0.95, 0.90, 0.88],  # after L1 (relearn; anchor1 stays 0.95)
    ]
)


def test_clu_mix_relearned_task():
    vals = clu_mix(F4_OPS, F4_TRAIN, k=10)
    # row 0: R={0}: 0.90 vs 0.90 -> L_ret 0, B 0; P = 1 -> 1/1.2
    assert abs(vals[0] - 1 / 1.2) < EPS
    # row 1: R={0,1}: losses (0.05, 0) -> L_ret 0.025; P = 0.975 -> 0.975/1.2 = 0.8125
    assert abs(vals[1] - 0.8125) < EPS
    # row 2: R={0}: L_ret 0.10; S={1}: max(0, 0.30-0.10) = 0.20; P = 0.9*0.8 = 0.72 -> 0.6
    assert abs(vals[2] - 0.6) < EPS
    # row 3: R={0,2}: losses (0.15, 0) -> 0.075; S={1}: 0.25-0.10 = 0.15
    #        P = 0.925 * 0.85 = 0.78625 -> 0.78625/1.2 = 0.6552083333...
    assert abs(vals[3] - 0.78625 / 1.2) < EPS
    # row 4: task 1 back in R, anchored at 0.95 (its FIRST learn); S empty.
    #   R = {0,1,2}: anchor-acc = (0.90-0.95, 0.95-0.90, 0.92-0.88) = (-0.05, 0.05, 0.04)
    #   L_ret = (0 + 0.05 + 0.04)/3 = 0.03; B = (0.05 + 0 + 0)/3 = 1/60
    #   P = 0.97; CLU = (0.97 + 0.2/60)/1.2 = (292/300)/1.2 = 73/90
    assert abs(vals[4] - 73 / 90) < EPS


def test_clu_mix_chance_and_beta():
    # row 2 with chance 0.2: L_res = 0.30-0.20 = 0.10, P = 0.9*0.9 = 0.81 -> 0.81/1.2 = 0.675
    assert abs(clu_mix(F4_OPS, F4_TRAIN, k=10, chance=0.2)[2] - 0.675) < EPS
    # row 4 with beta 0: CLU = P = 0.97
    assert abs(clu_mix(F4_OPS, F4_TRAIN, k=10, beta=0.0)[4] - 0.97) < EPS
    # default chance = 1/k: k=5 -> chance 0.2 -> same as above
    assert abs(clu_mix(F4_OPS, F4_TRAIN, k=5)[2] - 0.675) < EPS


def test_clu_mix_perfect_run():
    train = np.array([[1.0, 0.5], [1.0, 1.0], [1.0, 0.5]])
    # k=2 -> chance 0.5; after U1 task 1 at chance -> perfect, no gain -> 1/1.2
    for v in clu_mix(["L0", "L1", "U1"], train, k=2):
        assert abs(v - 1 / 1.2) < EPS


# --------------------------------------------------------------------------- #
# ACC / BWT
# --------------------------------------------------------------------------- #


def test_acc_bwt_prefix_stops_before_first_unlearn():
    ops = ["L0", "L1", "L2", "U1", "L3"]
    test = np.array(
        [
            [0.90, 0.10, 0.10, 0.10],
            [0.80, 0.95, 0.10, 0.10],
            [0.70, 0.85, 0.92, 0.10],  # prefix's last row
            [0.65, 0.20, 0.90, 0.10],
            [0.60, 0.25, 0.80, 0.93],
        ]
    )
    acc, bwt = acc_bwt(ops, test)
    # ACC = mean(0.70, 0.85, 0.92) = 2.47/3
    assert abs(acc - 2.47 / 3) < EPS
    # BWT = mean(0.70-0.90, 0.85-0.95) = mean(-0.20, -0.10) = -0.15
    assert abs(bwt - (-0.15)) < EPS


def test_acc_bwt_relearn_in_prefix_uses_last_learn():
    ops = ["L0", "L1", "L0", "L2", "U2"]
    test = np.array(
        [
            [0.90, 0.10, 0.10],
            [0.60, 0.90, 0.10],
            [0.95, 0.80, 0.10],  # last learn of task 0
            [0.85, 0.70, 0.90],  # prefix's last row
            [0.85, 0.70, 0.20],
        ]
    )
    acc, bwt = acc_bwt(ops, test)
    # ACC = mean(0.85, 0.70, 0.90) = 2.45/3
    assert abs(acc - 2.45 / 3) < EPS
    # BWT = mean(0.85-0.95, 0.70-0.90) = mean(-0.10, -0.20) = -0.15
    assert abs(bwt - (-0.15)) < EPS


def test_acc_bwt_single_task_and_empty_prefix():
    test = np.array([[0.9, 0.1], [0.2, 0.1]])
    assert acc_bwt(["L0", "U0"], test) == (0.9, None)
    assert acc_bwt(["U0", "L0"], test) == (None, None)


# --------------------------------------------------------------------------- #
# forget / retain
# --------------------------------------------------------------------------- #


def test_forget_retain_with_empty_sets():
    ops = ["L0", "L1", "U0", "U1"]
    test = np.array(
        [
            [0.80, 0.10],
            [0.70, 0.90],
            [0.20, 0.85],
            [0.15, 0.25],
        ]
    )
    forget, retain = forget_retain(ops, test)
    assert forget[:2] == [None, None]
    assert abs(forget[2] - 0.20) < EPS
    assert abs(forget[3] - 0.20) < EPS  # mean(0.15, 0.25)
    assert abs(retain[0] - 0.80) < EPS
    assert abs(retain[1] - 0.80) < EPS  # mean(0.70, 0.90)
    assert abs(retain[2] - 0.85) < EPS
    assert retain[3] is None


# --------------------------------------------------------------------------- #
# table / final metrics
# --------------------------------------------------------------------------- #


def test_per_op_table_and_final_metrics():
    table = per_op_table(A4_OPS, A4_TEST, A4_TRAIN, k=10)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["op", "retain_acc", "forget_acc", "tow", "clu_mix"]
    assert list(table.index) == [0, 1, 2, 3, 4]
    assert list(table["op"]) == A4_OPS
    assert math.isnan(table.loc[0, "tow"]) and math.isnan(table.loc[0, "forget_acc"])
    assert abs(table.loc[3, "tow"] - 0.81225) < EPS
    # retain after U2 = mean(0.72, 0.78) = 0.75; forget = 0.35
    assert abs(table.loc[3, "retain_acc"] - 0.75) < EPS
    assert abs(table.loc[3, "forget_acc"] - 0.35) < EPS

    final = final_metrics(A4_OPS, A4_TEST, A4_TRAIN, k=10)
    assert set(final) == {"acc", "bwt", "final_forget_acc", "final_retain_acc", "final_tow", "final_clu_mix"}
    # ACC on prefix (rows 0..2): mean(0.70, 0.80, 0.90) = 0.80
    assert abs(final["acc"] - 0.80) < EPS
    # BWT = mean(0.70-0.80, 0.80-0.85) = mean(-0.10, -0.05) = -0.075
    assert abs(final["bwt"] - (-0.075)) < EPS
    assert abs(final["final_forget_acc"] - 0.315) < EPS  # mean(0.33, 0.30)
    assert abs(final["final_retain_acc"] - 0.76) < EPS
    assert abs(final["final_tow"] - 0.87552) < EPS
    # CLU row 4 (train, k=10): R={0}: anchor 0.90, acc 0.86 -> L_ret 0.04, B 0
    # S={1,2}: max(0, 0.30-0.1)=0.20, max(0, 0.25-0.1)=0.15 -> L_res 0.175
    # P = 0.96 * 0.825 = 0.792 -> 0.792/1.2 = 0.66
    assert abs(final["final_clu_mix"] - 0.66) < EPS
    assert all(type(v) is float for v in final.values())
    json.dumps(final)


def test_final_metrics_none_is_json_null():
    train = np.array([[0.9, 0.1], [0.2, 0.1]])
    final = final_metrics(["L0", "U0"], train, train, k=10)
    assert final["bwt"] is None and final["final_retain_acc"] is None and final["final_tow"] is None
    assert '"bwt": null' in json.dumps(final)


# --------------------------------------------------------------------------- #
# validation
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("bad", [["L0", "X1"], ["L0", "l1"], ["L0", "L"], ["L0", " L1"], ["L-1"], "L0"])
def test_bad_op_labels(bad):
    with pytest.raises(UsageError):
        forget_retain(bad, np.zeros((len(bad), 2)))


def test_bad_shapes_and_values():
    with pytest.raises(UsageError, match="rows"):
        forget_retain(["L0", "L1"], np.zeros((3, 2)))
    with pytest.raises(UsageError, match="2-D"):
        forget_retain(["L0"], np.zeros(2))
    with pytest.raises(UsageError, match="task"):
        forget_retain(["L0", "L5"], np.zeros((2, 2)))
    with pytest.raises(UsageError, match="columns"):
        tow(["L0"], np.zeros((1, 2)), np.zeros((1, 3)))
    with pytest.raises(UsageError, match="NaN"):
        forget_retain(["L0"], np.array([[np.nan, 0.1]]))
    with pytest.raises(UsageError, match="percent"):
        forget_retain(["L0"], np.array([[95.0, 10.0]]))
    with pytest.raises(UsageError):
        clu_mix(["L0"], np.zeros((1, 2)), k=0)
    with pytest.raises(UsageError):
        task_status(["L0"], 0)
    with pytest.raises(UsageError):
        forget_retain([], np.zeros((0, 2)))
    # one line
    try:
        forget_retain(["L0", "L1"], np.zeros((3, 2)))
    except UsageError as exc:
        assert "\n" not in str(exc)
