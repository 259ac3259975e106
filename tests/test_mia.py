"""Membership-inference metrics on synthetic losses / confidences."""

from __future__ import annotations

import numpy as np
import pytest

from cluctl.errors import UsageError
from cluctl.metrics import mia_efficacy, mia_loss_attack


def test_loss_attack_separable():
    rng = np.random.default_rng(123)
    members = rng.exponential(0.05, size=1000)
    nonmembers = rng.exponential(2.0, size=1200)
    out = mia_loss_attack(members, nonmembers, seed=0)
    assert set(out) == {"acc", "auc", "cv_acc", "n"}
    assert out["n"] == 500  # min(1000, 1200) // 2
    assert out["auc"] > 0.95
    assert out["acc"] > 0.85
    assert out["cv_acc"] > 0.85


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_attack_same_distribution_is_chance(seed):
    # n = 2000 per side on the evaluation half: the AUC's standard deviation under
    # the null is sqrt((2n+1)/(12 n^2)) ~ 0.009, so 0.05 is > 5 sigma.
    rng = np.random.default_rng(1000 + seed)
    members = rng.exponential(1.0, size=4000)
    nonmembers = rng.exponential(1.0, size=4000)
    out = mia_loss_attack(members, nonmembers, seed=seed)
    assert out["n"] == 2000
    assert abs(out["auc"] - 0.5) < 0.05
    assert abs(out["acc"] - 0.5) < 0.05
    assert abs(out["cv_acc"] - 0.5) < 0.06


def test_loss_attack_deterministic_and_validates():
    rng = np.random.default_rng(7)
    a, b = rng.exponential(0.5, 300), rng.exponential(1.0, 300)
    assert mia_loss_attack(a, b, seed=3) == mia_loss_attack(a, b, seed=3)
    with pytest.raises(UsageError, match="too few"):
        mia_loss_attack(np.ones(9), np.ones(100))  # n = 4
    assert mia_loss_attack(rng.random(10), rng.random(10))["n"] == 5
    with pytest.raises(UsageError):
        mia_loss_attack(np.ones((10, 2)), np.ones(10))
    with pytest.raises(UsageError):
        mia_loss_attack(np.r_[np.ones(20), np.nan], np.ones(30))


def _conf(rng, kind, size):
    # members: confident (near 1); non-members: spread out
    if kind == "member":
        return rng.beta(20, 1, size=size)
    return rng.beta(2, 2, size=size)


def test_mia_efficacy_high_when_forget_looks_like_nonmembers():
    rng = np.random.default_rng(5)
    eff = mia_efficacy(
        _conf(rng, "member", 1500), _conf(rng, "nonmember", 800), _conf(rng, "nonmember", 500), seed=0
    )
    assert eff > 0.8


def test_mia_efficacy_low_when_forget_looks_like_members():
    rng = np.random.default_rng(6)
    eff = mia_efficacy(
        _conf(rng, "member", 1500), _conf(rng, "nonmember", 800), _conf(rng, "member", 500), seed=0
    )
    assert eff < 0.2


def test_mia_efficacy_validates():
    rng = np.random.default_rng(8)
    with pytest.raises(UsageError):
        mia_efficacy(rng.random(50), rng.random(50), np.array([]))
    with pytest.raises(UsageError):
        mia_efficacy(rng.random(1), rng.random(50), rng.random(5))
    a, b, c = rng.random(100), rng.random(100), rng.random(30)
    assert mia_efficacy(a, b, c, seed=1) == mia_efficacy(a, b, c, seed=1)


def test_one_mia_routine_for_a_checkpoint_and_for_launch():
    """``api.mia`` (one task, the CLI's ``cluctl mia``) and ``api.mia_all`` (every task after
    each operation of ``launch --mia``) are one routine: the same numbers for the same state,
    and the efficacy attack trains on the learned tasks only."""
    from cluctl import api
    from cluctl.engine import learn_task, new_state, run_config, unlearn_task

    from conftest import TINY

    st = new_state(run_config(**TINY), device="cpu")
    for t in range(3):
        learn_task(st, t)
    unlearn_task(st, 2, {"algo": "neggem", "max_epochs": 2})
    rows = api.mia_all(st, seed=5)
    assert [(r["task"], r["attack"]) for r in rows] == [(0, "loss"), (1, "loss"), (2, "loss"), (2, "efficacy")]
    for r in rows:
        one = api.mia(st, r["task"], attack=r["attack"], seed=5)
        if r["attack"] == "loss":
            assert (one["acc"], one["auc"], one["cv_acc"]) == (r["acc"], r["auc"], r["cv_acc"])
        else:
            assert one["efficacy"] == r["efficacy"] and 0.0 <= r["efficacy"] <= 1.0
    only = new_state(run_config(**TINY), device="cpu")
    learn_task(only, 0)
    with pytest.raises(UsageError, match="at least one other learned task"):
        api.mia(only, 0, attack="efficacy", seed=5)
