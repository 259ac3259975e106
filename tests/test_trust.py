"""Results you can trust: rule defaults resolved per operation, divergence never hidden,
the retrained CL-ToW reference, and each dataset's default model."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from cluctl import api
from cluctl import config as C
from cluctl import resolve as R
from cluctl.engine import DIVERGENCE_FACTOR, learn_task, new_state, run_config, unlearn_task
from cluctl.errors import Diverged
from cluctl.store import Store, load_checkpoint, read_checkpoint_meta

from conftest import TINY, TINY_FLAGS, clone_state, run_cli, tree_hash


# ------------------------------------------------------------------ rule defaults


@pytest.fixture(scope="module")
def learned4(tmp_path_factory):
    store = tmp_path_factory.mktemp("rules") / "store"
    r = api.learn(0, store=store, seed=0, **TINY)
    for t in (1, 2, 3):
        r = api.learn(t, from_ref=r.id, store=store)
    return store, r.id


def _used(store, oid):
    meta = read_checkpoint_meta(Store.open(store), oid)
    return meta["config"], meta["given"]


def test_rule_defaults_are_resolved_per_operation_from_the_cli(learned4):
    """SPEC §3/§8: neggem then rl-gem runs rl-gem at 0.03 with s = 5, neggem then negagem
    at s = 1, and an explicit --unlearning-rate given once is kept by later operations."""
    store, top = learned4
    a = run_cli(["unlearn", "--task", "3", "--from", top, "--algo", "neggem", "-q"], store=store, check=0).stdout.strip()
    used, given = _used(store, a)
    assert (used["algo"], used["unlearning_rate"], used["forget_loss_scale"]) == ("neggem", 0.01, 5.0)
    assert "unlearning_rate" not in given and given["algo"] == "neggem"
    b = run_cli(["unlearn", "--task", "2", "--from", a, "--algo", "rl-gem", "-q"], store=store, check=0).stdout.strip()
    used, _ = _used(store, b)
    assert (used["algo"], used["unlearning_rate"], used["forget_loss_scale"]) == ("rl-gem", 0.03, 5.0)
    c = run_cli(["unlearn", "--task", "2", "--from", a, "--algo", "negagem", "-q"], store=store, check=0).stdout.strip()
    used, _ = _used(store, c)
    assert (used["unlearning_rate"], used["forget_loss_scale"]) == (0.01, 1.0)
    # explicit once: inherited by a later operation with another algorithm
    d = run_cli(["unlearn", "--task", "3", "--from", top, "--algo", "neggem", "--unlearning-rate", "0.02", "-q"],
                store=store, check=0).stdout.strip()
    e = run_cli(["unlearn", "--task", "2", "--from", d, "--algo", "rl-gem", "-q"], store=store, check=0).stdout.strip()
    used, given = _used(store, e)
    assert used["unlearning_rate"] == 0.02 and given["unlearning_rate"] == 0.02
    assert used["forget_loss_scale"] == 5.0 and "forget_loss_scale" not in given
    # a learning step in between keeps what was given and does not freeze the rules
    f = run_cli(["learn", "--task", "2", "--from", c, "-q"], store=store, check=0).stdout.strip()
    g = run_cli(["unlearn", "--task", "2", "--from", f, "--algo", "rl-agem", "-q"], store=store, check=0).stdout.strip()
    used, _ = _used(store, g)
    assert (used["unlearning_rate"], used["forget_loss_scale"]) == (0.03, 5.0)
    show = run_cli(["store", "show", g], store=store, check=0).stdout
    assert "given       " in show and "algo=rl-agem" in show and "unlearning_rate=0.03" in show


def test_checkpoints_of_an_older_cluctl_take_rule_values_as_defaults():
    cfg = {**C.LEARN_DEFAULTS, **C.UNLEARN_DEFAULTS, "dataset": "digits", "model": "mlp", "width": 32, "seed": 0,
           "tasks": 5, "algo": "neggem", "unlearning_rate": 0.01, "forget_loss_scale": 5.0, "stop_acc": 7 / 12}
    given = R.given_from_resolved(cfg, 2)
    assert not {"unlearning_rate", "forget_loss_scale", "stop_acc"} & set(given)
    cfg["unlearning_rate"] = 0.05  # not the rule's value: it was given
    assert R.given_from_resolved(cfg, 2)["unlearning_rate"] == 0.05
    assert R.resolve_unlearn(cfg, {"algo": "rl-gem"}, 2)["unlearning_rate"] == 0.03


# ------------------------------------------------------------------ divergence


def _weight_norm(tensors) -> float:
    return math.sqrt(sum(float(v.double().square().sum()) for k, v in tensors.items()
                         if k.startswith("model.") and v.is_floating_point() and "running" not in k))


def test_diverged_unlearning_raises_and_restores_the_state():
    st = new_state(run_config(**TINY), device="cpu")
    for t in range(3):
        learn_task(st, t)
    before = {k: v.clone() for k, v in st.model.state_dict().items()}
    snap = (list(st.learned), list(st.forgotten), list(st.history), dict(st.given))
    with pytest.raises(Diverged) as ei:
        unlearn_task(st, 2, {"algo": "neggem", "unlearning_rate": 50.0, "stop_acc": 0.0})
    e = ei.value
    assert e.exit_code == 1 and e.summary["stopped"] == "diverged" and e.summary["steps"] >= 1
    assert "diverged" in str(e) and "--unlearning-rate" in str(e)
    for k, v in st.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert (st.learned, st.forgotten, st.history, st.given) == snap


def test_divergence_threshold_is_relative_to_the_start(monkeypatch):
    """Weights that grow past DIVERGENCE_FACTOR x their norm at the start fail the request,
    before anything reaches inf; a smaller factor catches the same run earlier."""
    import cluctl.engine as E

    st = new_state(run_config(**TINY), device="cpu")
    for t in range(3):
        learn_task(st, t)
    norms = []
    a = clone_state(st)
    with pytest.raises(Diverged) as ei:
        unlearn_task(a, 2, {"algo": "neggem", "unlearning_rate": 2.0, "stop_acc": 0.0, "max_epochs": 200},
                     step_hook=lambda d: norms.append(1))
    steps_100 = ei.value.summary["steps"]
    assert "weight norm grew" in ei.value.summary["reason"] or "finite" in ei.value.summary["reason"]
    monkeypatch.setattr(E, "DIVERGENCE_FACTOR", 3.0)
    b = clone_state(st)
    with pytest.raises(Diverged) as ei:
        unlearn_task(b, 2, {"algo": "neggem", "unlearning_rate": 2.0, "stop_acc": 0.0, "max_epochs": 200})
    assert ei.value.summary["steps"] < steps_100
    assert "more than 3x" in ei.value.summary["reason"]


DIV_FLAGS = ["--sequence", "L0-4 U4-1 L1-4", "--algo", "neggem", "--epochs", "5", "--dataset", "digits",
             "--model", "mlp", "--width", "8", "--memories", "32", "--seeds", "1", "--devices", "cpu",
             "--threads", "1"]


@pytest.fixture(scope="module")
def diverged_launch(tmp_path_factory):
    root = tmp_path_factory.mktemp("div")
    store, out = root / "store", root / "res"
    p = run_cli(["launch", *DIV_FLAGS, "--out", out, "--no-plots"], store=store)
    return store, out, p


def test_launch_reports_a_diverged_operation_everywhere(diverged_launch):
    store, out, p = diverged_launch
    assert p.returncode == 1, p.stderr
    assert "U2 DIVERGED" in p.stderr and "stopped at U2" in p.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    by_op = [(r["row"], r["op"], r["stopped"]) for r in rows]
    assert ("7", "U2", "diverged") in by_op
    assert all(r["stopped"] == "not-run" for r in rows if int(r["row"]) > 7)
    assert all(r["stopped"] in ("done", "stop-acc", "max-epochs") for r in rows if int(r["row"]) < 7)
    summary = json.loads((out / "summary.json").read_text())
    assert [(f["seed"], f["op"], f["stopped"]) for f in summary["failed"]] == [(0, "U2", "diverged")]
    assert summary["seeds"][0]["status"] == "failed" and summary["mean"]["acc"] is None
    # nothing after U2 ran: no op-result for rows >= 7, and no checkpoint whose weights ran away
    st = Store.open(store)
    ops = sorted(n for n in st.list_refs("runs/") if "/op-" in n)
    assert len(ops) == 7
    for oid in {st.get_json(st.get_ref(n))["checkpoint"] for n in ops}:
        tensors, meta = load_checkpoint(st, oid)
        if meta.get("parent"):
            parent, _ = load_checkpoint(st, meta["parent"])
            assert _weight_norm(tensors) <= DIVERGENCE_FACTOR * _weight_norm(parent)
    # the seed's partial tables are kept, with empty rows from the failure on
    test = list(csv.reader(open(out / "seed-0" / "test_acc.csv")))
    assert test[8][:2] == ["7", "U2"] and all(v == "" for v in test[8][2:])
    assert test[7][:2] == ["6", "U3"] and all(v != "" for v in test[7][2:])


def test_single_unlearn_that_diverges_fails_and_writes_nothing(diverged_launch):
    store, _, _ = diverged_launch
    st = Store.open(store)
    op6 = [n for n in st.list_refs("runs/") if n.endswith("/op-006")][0]
    run = st.get_json(st.get_ref(op6))["checkpoint"]  # the checkpoint after U3
    objects_before = tree_hash(store / "objects")
    refs_before = tree_hash(store / "refs")
    p = run_cli(["unlearn", "--task", "2", "--from", run, "--algo", "neggem", "--threads", "1"], store=store)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "diverged" in lines[0] and "task keeps its status" in lines[0]
    assert p.stdout == ""
    assert tree_hash(store / "objects") == objects_before and tree_hash(store / "refs") == refs_before


def test_max_epochs_outcome_is_reported(tmp_path):
    store, out = tmp_path / "store", tmp_path / "res"
    p = run_cli(["launch", "--sequence", "L0-1 U1", *TINY_FLAGS, "--seeds", "1", "--devices", "cpu",
                 "--threads", "1", "--stop-acc", "0", "--max-epochs", "1", "--out", out, "--no-plots"],
                store=store, check=0)
    assert "hit --max-epochs without reaching the stop accuracy" in p.stderr
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows[-1]["op"] == "U1" and rows[-1]["stopped"] == "max-epochs" and int(rows[-1]["steps"]) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_epochs_ops"] == [{"seed": 0, "row": 2, "op": "U1"}]
    st = Store.open(store)
    after_l1 = st.get_json(st.get_ref(f"runs/{summary['run']}/seed-0/op-001"))["checkpoint"]
    q = run_cli(["unlearn", "--task", "1", "--from", after_l1, "--stop-acc", "0",
                 "--max-epochs", "1"], store=store, check=0)
    assert "WITHOUT reaching the stop accuracy" in q.stderr


# ------------------------------------------------------------------ retrained reference


PRESETS = ["A4", "B4", "C4", "C4v2", "D4", "E4", "F4", "G4", "H4"]
SMALL = dict(TINY)


def _launch(tmp_path, sequence, reference="retrain"):
    from cluctl.launch import execute, make_plan, merge

    plan = make_plan(merge(None, {**SMALL, "sequence": sequence, "seeds": 1, "devices": "cpu", "threads": 1,
                                  "store": str(tmp_path / "store"), "out": str(tmp_path / sequence),
                                  "plots": False, "quiet": True, "reference": reference}))
    outcome = execute(plan)
    assert outcome.exit_code == 0
    return plan, json.loads((tmp_path / sequence / "summary.json").read_text())


def _seed_in_process(tmp_path, sequence):
    """One seed of a launch run in this process (no spawned worker): (plan, op-results)."""
    from cluctl.launch import make_plan, merge, register_run
    from cluctl.launch.core import jobs_for
    from cluctl.launch.worker import completed_prefix, run_seed

    plan = make_plan(merge(None, {**SMALL, "sequence": sequence, "seeds": 1, "devices": "cpu", "threads": 1,
                                  "store": str(tmp_path / "store"), "quiet": True}))
    st = Store.open(tmp_path / "store")
    register_run(st, plan)
    run_seed(jobs_for(plan)[0])
    return plan, [st.get_json(i) for i in completed_prefix(st, plan.run, 0)]


def test_retrain_reference_gives_a_final_tow_for_every_preset(tmp_path):
    from cluctl.launch.reference import retrain_references
    from cluctl.metrics import final_metrics

    st = Store.open(tmp_path / "store") if (tmp_path / "store").exists() else None
    prefix_none, finals, trained = [], {}, 0
    for seq in PRESETS:
        plan, res = _seed_in_process(tmp_path, seq)
        st = Store.open(tmp_path / "store")
        ops = [r["op"] for r in res]
        tr = np.array([r["eval"]["train_acc"] for r in res], dtype=float)
        te = np.array([r["eval"]["test_acc"] for r in res], dtype=float)
        if final_metrics(ops, te, tr, 2)["final_tow"] is None:
            prefix_none.append(seq)
        refs, n = retrain_references(st, plan.run, 0, ops, 5, tr, te, {"device": "cpu", "threads": 1})
        trained += n
        finals[seq] = final_metrics(ops, te, tr, 2, reference=refs)["final_tow"]
    assert all(v is not None and 0.0 <= v <= 1.0 for v in finals.values()), finals
    assert len(prefix_none) == 8 and "A4" not in prefix_none  # what the prefix reference leaves out
    assert trained > 0


def test_launch_and_evaluate_with_the_retrain_reference(tmp_path):
    _, summary = _launch(tmp_path, "B4")
    assert summary["reference"] == "retrain" and summary["retrain_ops_trained"] == 3
    final = summary["seeds"][0]["final_tow"]
    assert final is not None
    # evaluate --metrics --reference retrain on the results folder says the same
    p = run_cli(["evaluate", str(tmp_path / "B4"), "--metrics", "--reference", "retrain", "--json"],
                store=tmp_path / "store", check=0)
    res = json.loads(p.stdout)
    assert res["retrain_ops_trained"] == 0  # the launch trained and stored the oracles already
    assert res["per_op"][-1]["tow"] == pytest.approx(final, abs=1e-12)
    q = run_cli(["evaluate", str(tmp_path / "B4"), "--metrics", "--json"], store=tmp_path / "store", check=0)
    assert json.loads(q.stdout)["per_op"][-1]["tow"] is None  # prefix: B4's last row has no reference


def test_retrained_oracle_equals_the_prefix_reference_on_a4(tmp_path):
    """On A4 the oracle for retained {0..i} learns L0..Li from the initial weights with the
    same generators as the run: it must be the run's own row (the same checkpoint)."""
    from cluctl.launch.reference import oracle_tasks, retrain_references
    from cluctl.metrics import reference_rows, tow

    plan, summary = _launch(tmp_path, "A4", reference="prefix")
    st = Store.open(tmp_path / "store")
    res = [st.get_json(st.get_ref(f"runs/{plan.run}/seed-0/op-{i:03d}")) for i in range(9)]
    ops = [r["op"] for r in res]
    tr = np.array([r["eval"]["train_acc"] for r in res], dtype=float)
    te = np.array([r["eval"]["test_acc"] for r in res], dtype=float)
    prefix = reference_rows(ops, 5)
    refs, trained = retrain_references(st, plan.run, 0, ops, 5, tr, te, {"device": "cpu", "threads": 1},
                                       force=True)
    assert trained == 0  # every oracle prefix is the run's own learning prefix
    for i, r in enumerate(prefix):
        if r is not None:
            np.testing.assert_array_equal(refs[i][0], tr[r])
            np.testing.assert_array_equal(refs[i][1], te[r])
    assert tow(ops, tr, te, reference=refs)[5:] == tow(ops, tr, te)[5:]
    assert oracle_tasks(ops, 5)[-1] == [0]


def test_retrained_oracle_is_learned_in_first_learning_order(tmp_path):
    """C4v2 on digits (L0-1 U1 L2-4): the last row retains 0, 2, 3, 4; the oracle learns
    exactly those from the initial weights, in that order, and CL-ToW uses its accuracies."""
    from cluctl.launch.reference import retrain_ref
    from cluctl.metrics import tow

    plan, summary = _launch(tmp_path, "C4v2")
    st = Store.open(tmp_path / "store")
    oracle = st.get_json(st.get_ref(retrain_ref(plan.run, 0, [0, 2, 3, 4])))
    meta = read_checkpoint_meta(st, oracle["checkpoint"])
    assert meta["history"] == ["L0", "L2", "L3", "L4"] and meta["forgotten"] == []
    assert oracle["oracle"] == ["L0", "L2", "L3", "L4"]
    res = [st.get_json(st.get_ref(f"runs/{plan.run}/seed-0/op-{i:03d}")) for i in range(6)]
    ops = [r["op"] for r in res]
    tr = np.array([r["eval"]["train_acc"] for r in res], dtype=float)
    te = np.array([r["eval"]["test_acc"] for r in res], dtype=float)
    o_tr = np.array(oracle["eval"]["train_acc"], dtype=float)
    o_te = np.array(oracle["eval"]["test_acc"], dtype=float)
    # CL-ToW of the last row by hand: forgotten {1}, retained {0, 2, 3, 4}
    ret, fgt = [0, 2, 3, 4], [1]
    d_s = np.abs(tr[-1, fgt] - o_tr[fgt]).mean()
    d_r = np.abs(tr[-1, ret] - o_tr[ret]).mean()
    d_t = abs(te[-1, ret].mean() - o_te[ret].mean())
    expect = (1 - d_s) * (1 - d_r) * (1 - d_t)
    assert summary["seeds"][0]["final_tow"] == pytest.approx(expect, abs=1e-12)
    refs = [None] * 5 + [(o_tr, o_te)]
    assert tow(ops, tr, te, reference=refs)[-1] == pytest.approx(expect, abs=1e-12)


# ------------------------------------------------------------------ default model


def test_each_dataset_declares_its_default_model(tmp_path):
    from cluctl.launch.options import scientific_config

    oid = run_cli(["learn", "--task", "0", "--dataset", "digits", "--epochs", "1", "--memories", "16",
                   "--learn-buffer-type", "random", "--unlearn-buffer-type", "random", "-q"],
                  store=tmp_path / "store", check=0).stdout.strip()
    meta = read_checkpoint_meta(Store.open(tmp_path / "store"), oid)
    assert (meta["model"], meta["width"]) == ("mlp", 100)
    assert "model" not in meta["given"]
    assert scientific_config({"dataset": "digits"})["model"] == "mlp"
    assert scientific_config({"dataset": "cifar100"}, download=True)["model"] == "resnet18"
    assert scientific_config({"dataset": "cifar10"}, download=True)["model"] == "resnet18"
    assert scientific_config({"dataset": "digits", "model": "resnet18"})["model"] == "resnet18"
