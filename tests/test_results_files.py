"""The results folder as files (issue 17, item 9): the tidy results.csv, the row column of
the matrices, std with ddof 1, CSV quoting, summary.json's provenance and run.toml, and
`evaluate --metrics --format latex|markdown`.

Fast: op-results are faked in a real store (nothing is trained)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cluctl import launch as L
from cluctl.errors import UsageError
from cluctl.launch import options as O
from cluctl.launch.core import aggregate, register_run
from cluctl.launch.progress import Console
from cluctl.launch.results import MATRICES, TIDY_COLUMNS, _csv, write_results
from cluctl.plots import load_results
from cluctl.store import Store

OPS = ["L0", "L1", "U1", "L1"]  # an operation that occurs twice: rows tell them apart
N_TASKS = 5


def _fake_ops(store, run, seed, labels, mia=False):
    rng = np.random.default_rng(100 + seed)
    ck = store.put_json({"type": "stand-in", "note": "the checkpoint an op-result links to"})
    for i, label in enumerate(labels):
        ev = {k: [float(x) for x in rng.random(N_TASKS)] for k in MATRICES}
        ev["test_conf"][4] = None  # a missing value
        res = {"type": "op-result", "run": run, "seed": seed, "index": i, "op": label, "checkpoint": ck, "eval": ev,
               "summary": {"steps": 2 + i, "op_wall_s": 0.5 + i, **({"stopped": "stop-acc"} if label[0] == "U" else {})},
               "mia": [{"task": 0, "status": "learned", "attack": "loss", "members": "train", "acc": 0.5,
                        "auc": 0.6, "cv_acc": 0.4, "efficacy": None}] if mia else None,
               "execution": {"device": "cpu", "threads": 1, "impl": "fast", "precision": "fp32", "host": "h"}}
        store.set_ref(f"runs/{run}/seed-{seed}/op-{i:03d}", store.put_json(res))


def _folder(tmp_path, seeds=(0, 1, 2), mia=True, **opts):
    store = Store.open(tmp_path / "store")
    p = L.plan(store=str(tmp_path / "store"), devices="cpu", sequence="L0-1 U1 L1", out=str(tmp_path / "res"),
               seed_list=",".join(map(str, seeds)), plots=False, mia=mia, **opts)
    register_run(store, p)
    for s in seeds:
        _fake_ops(store, p.run, s, OPS, mia=mia)
    aggregate(p, store, Console(stderr=True))
    return tmp_path / "res", p


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("res"), alpha=0.3)


# ---------------------------------------------------------------- matrices: the row column


def test_matrices_have_a_row_column_and_repeated_ops_stay_apart(folder):
    res, _ = folder
    for d in ("seed-0", "seed-2", "mean", "std"):
        for m in MATRICES:
            df = pd.read_csv(res / d / f"{m}.csv")
            assert list(df.columns) == ["row", "op", "0", "1", "2", "3", "4"]
            assert df["row"].tolist() == [0, 1, 2, 3] and df["op"].tolist() == OPS
    r = load_results(str(res))
    assert r.ops == OPS and r.seeds == [0, 1, 2] and r.tables["test_acc"].shape == (3, 4, 5)
    seed1 = pd.read_csv(res / "seed-1" / "train_acc.csv").iloc[:, 2:].to_numpy()
    np.testing.assert_array_equal(r.tables["train_acc"][1], seed1)
    assert np.isnan(r.tables["test_conf"][:, :, 4]).all()


def test_the_reader_takes_folders_with_and_without_the_row_column(folder, tmp_path):
    import shutil

    res, _ = folder
    old = tmp_path / "old"
    shutil.copytree(res, old)
    for f in old.rglob("*.csv"):
        df = pd.read_csv(f)
        if "row" in df.columns and "op" in df.columns and "seed" not in df.columns:
            df.drop(columns="row").to_csv(f, index=False)  # the layout before the row column
    a, b = load_results(str(res)), load_results(str(old))
    assert a.ops == b.ops == OPS
    for m in MATRICES:
        np.testing.assert_array_equal(a.tables[m], b.tables[m])
    # a row column that is not 0..n-1 is refused, naming the file
    bad = pd.read_csv(res / "seed-0" / "test_acc.csv")
    bad["row"] = [0, 2, 1, 3]
    bad.to_csv(old / "seed-0" / "test_acc.csv", index=False)
    with pytest.raises(UsageError, match="test_acc.csv: its 'row' column"):
        load_results(str(old))


# ---------------------------------------------------------------- results.csv


def test_tidy_results_csv_holds_every_value(folder):
    res, p = folder
    df = pd.read_csv(res / "results.csv", keep_default_na=False)
    assert tuple(df.columns) == TIDY_COLUMNS
    assert set(df["run"]) == {p.run} and set(df["algo"]) == {"neggem"} and set(df["dataset"]) == {"digits"}
    per_seed = 4 * len(MATRICES) * N_TASKS + 4 * 5 + 2 + 4 * 3  # tables, op metrics, acc/bwt, mia (3 measures)
    assert len(df) == 3 * per_seed
    num = pd.read_csv(res / "results.csv")
    # every matrix cell, by (seed, row, task): the same numbers as seed-*/ tables
    for s in (0, 2):
        for m in MATRICES:
            table = pd.read_csv(res / f"seed-{s}" / f"{m}.csv").iloc[:, 2:].to_numpy()
            got = num[(num.seed == s) & (num.metric == m)].pivot(index="row", columns="task", values="value")
            np.testing.assert_array_equal(got.to_numpy(), table)
    # task status after each op: task 1 learned, forgotten, learned again
    t1 = df[(df.seed == 0) & (df.metric == "test_acc") & (df.task == "1")]
    assert t1["status"].tolist() == ["unseen", "learned", "forgotten", "learned"]
    assert t1["op"].tolist() == OPS and t1["row"].tolist() == ["0", "1", "2", "3"]
    # per-op metrics agree with metrics.csv; status = how the op ended; no task
    metrics = pd.read_csv(res / "metrics.csv")
    for col in ("retain_acc", "forget_acc", "tow", "clu_mix", "steps"):
        got = num[num.metric == col].sort_values(["seed", "row"])["value"].to_numpy(dtype=float)
        np.testing.assert_array_equal(got, metrics.sort_values(["seed", "row"])[col].to_numpy(dtype=float))
    steps = df[(df.seed == 1) & (df.metric == "steps")]
    assert steps["status"].tolist() == ["done", "done", "stop-acc", "done"] and set(steps["task"]) == {""}
    assert steps["value"].tolist() == ["2", "3", "4", "5"]
    # ACC/BWT per seed, as in summary.json; MIA values per task
    summary = json.loads((res / "summary.json").read_text())
    acc = num[(num.metric == "acc")].sort_values("seed")["value"].tolist()
    assert acc == pytest.approx([e["acc"] for e in summary["seeds"]])
    assert set(df.loc[df.metric.str.startswith("mia_"), "metric"]) == {"mia_loss_train_acc", "mia_loss_train_auc",
                                                                       "mia_loss_train_cv_acc"}
    # nulls are empty cells, not "nan" or "None"
    assert not df["value"].isin(["nan", "NaN", "None"]).any()
    assert (df[(df.metric == "test_conf") & (df.task == "4")]["value"] == "").all()


def test_csv_cells_are_quoted_by_the_csv_module(tmp_path):
    tricky = 'my "set", v2'
    text = _csv(["a", "b"], [[tricky, 1.5], [None, float("nan")]])
    assert list(csv.reader(io.StringIO(text))) == [["a", "b"], [tricky, "1.5"], ["", ""]]
    assert '"my ""set"", v2"' in text  # quotes doubled
    # a dataset name with a comma and quotes (npz:PATH) survives results.csv
    run = {"run": "r", "n_tasks": 2, "k": 1, "sequence": "L0-1",
           "config": {"algo": "neggem", "learn_algo": "gem", "dataset": f"npz:/d/{tricky}.npz"}}
    results = [{"op": op, "eval": {m: [0.5, 0.25] for m in MATRICES}, "summary": {}} for op in ("L0", "L1")]
    out = write_results(tmp_path / "res", run, {0: results})
    df = pd.read_csv(out / "results.csv")
    assert set(df["dataset"]) == {f"npz:/d/{tricky}.npz"}


# ---------------------------------------------------------------- std: ddof 1, empty for one seed


def test_std_is_the_sample_std_everywhere(folder, tmp_path):
    res, _ = folder
    seeds = np.stack([pd.read_csv(res / f"seed-{s}" / "test_acc.csv").iloc[:, 2:].to_numpy() for s in range(3)])
    std = pd.read_csv(res / "std" / "test_acc.csv").iloc[:, 2:].to_numpy()
    np.testing.assert_allclose(std, seeds.std(axis=0, ddof=1), rtol=1e-12)
    summary = json.loads((res / "summary.json").read_text())
    assert summary["std_ddof"] == 1
    accs = [e["acc"] for e in summary["seeds"]]
    assert summary["std"]["acc"] == pytest.approx(np.std(accs, ddof=1), rel=1e-12)
    # the reader and the figures' bands: ddof 1
    mean, sd = load_results(str(res)).mean_std("test_acc")
    np.testing.assert_allclose(sd, seeds.std(axis=0, ddof=1), rtol=1e-12)
    # one seed: no std at all (empty cells, null in summary.json, NaN bands)
    one, _ = _folder(tmp_path, seeds=(0,), mia=False)
    assert all(v == "" for line in (one / "std" / "test_acc.csv").read_text().splitlines()[1:]
               for v in line.split(",")[2:])
    s1 = json.loads((one / "summary.json").read_text())
    assert s1["std"]["acc"] is None and all(v is None for v in s1["std"].values())
    assert np.isnan(load_results(str(one)).mean_std("test_acc")[1]).all()


# ---------------------------------------------------------------- summary.json and run.toml


def test_summary_records_provenance(folder):
    res, _ = folder
    prov = json.loads((res / "summary.json").read_text())["provenance"]
    assert {"cluctl", "torch", "numpy", "python", "command", "dataset_fingerprint", "mem_scores",
            "run_toml"} <= set(prov)
    assert prov["numpy"] == np.__version__ and isinstance(prov["command"], list) and prov["run_toml"] == "run.toml"


def test_fingerprint_and_scores_come_from_the_checkpoints(tmp_path, monkeypatch):
    import cluctl.store.checkpoint as ckpt

    fp, scores = "ab" * 32, "cd" * 32
    monkeypatch.setattr(ckpt, "read_checkpoint_meta", lambda store, oid: {"dataset_fingerprint": fp, "scores": scores})
    res, _ = _folder(tmp_path, seeds=(0, 1), mia=False)
    s = json.loads((res / "summary.json").read_text())
    assert s["provenance"]["dataset_fingerprint"] == fp and s["provenance"]["mem_scores"] == scores
    assert [e["mem_scores"] for e in s["seeds"]] == [scores, scores]


@pytest.mark.parametrize("name", [None, "my-run"])
def test_run_toml_relaunches_the_same_run(tmp_path, name):
    opts = {"alpha": 0.3, "lr": 0.05} | ({"name": name} if name else {})
    res, p = _folder(tmp_path, seeds=(0, 2), mia=True, **opts)
    text = (res / "run.toml").read_text()
    assert ("name = " in text) == (name is not None)
    values = O.load_toml(res / "run.toml")  # what `cluctl launch --config run.toml` reads
    again = O.make_plan(O.merge(values, {"store": str(tmp_path / "store2"), "devices": "cpu"}))
    assert again.run == p.run and again.config == p.config and again.sequence == p.sequence
    assert again.seeds == [0, 2] and again.mia is True and again.reference == "prefix"
    assert again.given == p.given  # only what was given is given again: the same checkpoint ids


# ---------------------------------------------------------------- evaluate --format


def test_evaluate_latex_and_markdown_tables(folder, capsys):
    from cluctl.cli.results import evaluate_results

    res, _ = folder
    evaluate_results(str(res), as_json=True)
    per_op = json.loads(capsys.readouterr().out)["per_op"]
    tow = pd.read_csv(res / "metrics.csv").query("row == 2")["tow"].to_numpy()
    assert per_op[2]["tow_std"] == pytest.approx(np.std(tow, ddof=1), rel=1e-12)  # ddof 1 here too
    evaluate_results(str(res), fmt="latex")
    tex = capsys.readouterr().out
    assert "\\begin{tabular}{rlrrrr}" in tex and "\\toprule" in tex and "\\end{tabular}" in tex
    assert "CLU\\_mix" in tex and "$\\pm$" in tex and "±" not in tex.split("\n", 2)[2]
    body = [ln for ln in tex.splitlines() if ln[:1].isdigit()]
    assert [ln.split(" & ")[1] for ln in body] == OPS
    assert body[2].split(" & ")[4] == f"{per_op[2]['tow']:.3f} $\\pm$ {per_op[2]['tow_std']:.3f} \\\\".split(" \\\\")[0]
    evaluate_results(str(res), fmt="markdown")
    md = capsys.readouterr().out.splitlines()
    assert md[1] == "| row | op | retain acc | forget acc | CL-ToW | CLU_mix |" and md[2].startswith("|---:|")
    assert [ln.split(" | ")[1] for ln in md[3:7]] == OPS and "3 seeds" in md[0]
    with pytest.raises(UsageError, match="latex or markdown"):
        evaluate_results(str(res), fmt="html")
    with pytest.raises(UsageError, match="mutually exclusive"):
        evaluate_results(str(res), fmt="latex", as_json=True)
    # the flag of `cluctl evaluate`
    from typer.testing import CliRunner

    from cluctl.cli.main import app

    r = CliRunner().invoke(app, ["evaluate", str(res), "--metrics", "--format", "markdown"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1] == md[1]


def test_results_csv_is_the_same_bytes_for_the_same_results(tmp_path):
    """Wall times stay out of results.csv (they are in summary.json): a resumed or
    re-aggregated run gives the same file."""
    run = {"run": "r", "n_tasks": 2, "k": 1, "sequence": "L0-1",
           "config": {"algo": "neggem", "learn_algo": "gem", "dataset": "digits"}}

    def results(wall):
        return [{"op": op, "eval": {m: [0.5, 0.25] for m in MATRICES}, "summary": {"steps": 3, "op_wall_s": wall}}
                for op in ("L0", "L1")]

    a = write_results(tmp_path / "a", run, {0: results(1.0), 1: results(2.0)})
    b = write_results(tmp_path / "b", run, {0: results(7.5), 1: results(0.1)})
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    assert (a / "run.toml").read_text() == (b / "run.toml").read_text()
