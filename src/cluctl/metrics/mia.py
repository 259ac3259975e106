"""Membership-inference attacks used as unlearning metrics (SPEC §7).

* :func:`mia_loss_attack` -- loss-based attack as in SCRUB: a logistic regression
  on the per-sample loss, members (label 1) vs non-members (label 0).
* :func:`mia_efficacy` -- MIA-efficacy as in SalUn: an RBF SVC trained on
  true-label confidence (retained tasks' train samples = members, their test
  samples = non-members); reports the fraction of the forgotten task's training
  samples predicted as non-members (higher = better forgetting).

Everything is seeded: the same inputs and ``seed`` give the same numbers.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from cluctl.errors import UsageError

__all__ = ["mia_loss_attack", "mia_efficacy", "MIN_ATTACK_N", "EFFICACY_CAP"]

#: the smallest n (per side, per half) mia_loss_attack accepts: 5-fold CV needs it
MIN_ATTACK_N = 5
#: at most this many samples per side train the MIA-efficacy SVC
EFFICACY_CAP = 5000
#: SalUn's SVC settings
SVC_PARAMS = {"kernel": "rbf", "C": 3.0, "gamma": "auto"}


def _vector(name: str, value) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name} is not a numeric array ({exc})", "pass a 1-D float array, one value per sample") from None
    if v.ndim != 1:
        raise UsageError(f"{name} must be 1-D (one value per sample), got shape {v.shape}", "flatten per-sample values first")
    if not np.all(np.isfinite(v)):
        raise UsageError(f"{name} contains NaN or infinite values", "clip or drop non-finite per-sample values")
    return v


def _seed(seed) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}", "e.g. seed=0")
    return int(seed)


def mia_loss_attack(member_losses, nonmember_losses, seed: int = 0) -> dict:
    """Loss-based membership-inference attack (SCRUB).

    n = min(len(member), len(nonmember)) // 2. 2n of each side are drawn without
    replacement (``numpy.random.default_rng(seed)``); the first n of each train
    the attacker, the other n evaluate it. Feature: the loss (standardised, 1-D).
    Classifier: ``LogisticRegression`` (sklearn defaults).

    Returns ``{"acc", "auc", "cv_acc", "n"}``: attack accuracy and ROC AUC
    (``predict_proba``, label 1 = member) on the evaluation half, 5-fold CV
    accuracy (``StratifiedKFold(shuffle=True, random_state=seed)``) on the
    training half, and n. UsageError if n < 5.
    """
    seed = _seed(seed)
    mem = _vector("member_losses", member_losses)
    non = _vector("nonmember_losses", nonmember_losses)
    n = min(mem.size, non.size) // 2
    if n < MIN_ATTACK_N:
        raise UsageError(
            f"too few samples for the MIA: {mem.size} member and {non.size} non-member losses give n = {n}",
            f"need at least {2 * MIN_ATTACK_N} of each",
        )
    rng = np.random.default_rng(seed)
    mem = mem[rng.choice(mem.size, size=2 * n, replace=False)]
    non = non[rng.choice(non.size, size=2 * n, replace=False)]

    x_train = np.concatenate([mem[:n], non[:n]]).reshape(-1, 1)
    x_eval = np.concatenate([mem[n:], non[n:]]).reshape(-1, 1)
    y = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])

    def model():
        return make_pipeline(StandardScaler(), LogisticRegression())

    clf = model().fit(x_train, y)
    acc = float((clf.predict(x_eval) == y).mean())
    proba = clf.predict_proba(x_eval)[:, list(clf.classes_).index(1)]
    auc = float(roc_auc_score(y, proba))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    cv_acc = float(cross_val_score(model(), x_train, y, cv=cv, scoring="accuracy").mean())
    return {"acc": acc, "auc": auc, "cv_acc": cv_acc, "n": int(n)}


def mia_efficacy(retain_train_conf, retain_test_conf, forget_train_conf, seed: int = 0) -> float:
    """MIA-efficacy (SalUn): fraction of the forgotten task's training samples that
    an attacker predicts as NON-members.

    The attacker is ``SVC(kernel="rbf", C=3, gamma="auto")`` (SalUn's settings;
    with the 1-D feature gamma="auto" is 1) on the true-label confidence, trained
    with the retained tasks' training samples as members (1) and their test
    samples as non-members (0). The two sides are balanced by subsampling both to
    m = min(len(train), len(test), 5000) samples without replacement
    (``numpy.random.default_rng(seed)``). All forget samples are scored.
    """
    seed = _seed(seed)
    mem = _vector("retain_train_conf", retain_train_conf)
    non = _vector("retain_test_conf", retain_test_conf)
    fgt = _vector("forget_train_conf", forget_train_conf)
    if mem.size < 2 or non.size < 2:
        raise UsageError(
            f"too few retained samples for MIA-efficacy ({mem.size} train, {non.size} test)",
            "need at least 2 of each",
        )
    if fgt.size == 0:
        raise UsageError("forget_train_conf is empty", "pass the forgotten task's training-sample confidences")
    m = min(mem.size, non.size, EFFICACY_CAP)
    rng = np.random.default_rng(seed)
    mem = mem[rng.choice(mem.size, size=m, replace=False)]
    non = non[rng.choice(non.size, size=m, replace=False)]
    x = np.concatenate([mem, non]).reshape(-1, 1)
    y = np.concatenate([np.ones(m, dtype=int), np.zeros(m, dtype=int)])
    clf = SVC(**SVC_PARAMS).fit(x, y)
    pred = clf.predict(fgt.reshape(-1, 1))
    return float((pred == 0).mean())
