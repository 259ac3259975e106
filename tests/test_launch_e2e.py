"""End-to-end tests of ``cluctl launch``: real subprocesses, real digits, a tiny profile.

The reference run (3 seeds, 2 at once, 1 thread each) is shared by the tests that compare
against it: a seed run alone, a run killed with SIGKILL and resumed, a run stopped with
SIGTERM and resumed, and --aggregate-only must all give byte-identical CSVs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluctl import launch as L
from cluctl.store import Store

from conftest import THESIS

TINY = ["--model", "mlp", "--epochs", "1", "--memories", "32", "--learn-buffer-type", "random",
        "--unlearn-buffer-type", "random", "--devices", "cpu", "--threads", "1"]
TINY_KW = dict(model="mlp", epochs=1, memories=32, learn_buffer_type="random", unlearn_buffer_type="random", devices="cpu")
MATRICES = ("test_acc", "test_conf", "train_acc", "train_conf")


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("CLUCTL_FAULT", "CLUCTL_STORE", "CLUCTL_DEBUG")}
    env.update(extra or {})
    return env


def cluctl(*args, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "cluctl.cli.main", "launch", *args], capture_output=True,
                          text=True, env=_env(env), cwd=cwd, timeout=timeout)


def same_csvs(a: Path, b: Path, seeds, extra=("metrics.csv",)):
    for s in seeds:
        for m in MATRICES:
            fa, fb = a / f"seed-{s}" / f"{m}.csv", b / f"seed-{s}" / f"{m}.csv"
            assert fa.read_bytes() == fb.read_bytes(), f"{fa} != {fb}"
    for name in extra:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def in_process(*args, capfd):
    """``cluctl launch ARGS`` in this process (saves a Python + torch start): (code, out, err)."""
    from cluctl.cli.main import main

    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["launch", *args])
    out, errtext = capfd.readouterr()
    return e.value.code, out, errtext


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """A4 on digits, seeds 0-2, two processes at once, one thread each."""
    d = tmp_path_factory.mktemp("ref")
    r = cluctl("--sequence", "A4", "--seeds", "3", "--per-device", "2", *TINY, "--store", str(d / "store"),
               "--out", str(d / "res"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(d / "res")
    summary = json.loads((d / "res" / "summary.json").read_text())
    return {"dir": d, "store": d / "store", "res": d / "res", "run": summary["run"], "summary": summary,
            "stderr": r.stderr}


def test_results_folder(ref, capfd):
    res, s = ref["res"], ref["summary"]
    assert s["run"].startswith("a4-neggem-") and s["sequence"] == "A4"
    assert s["ops"] == ["L0", "L1", "L2", "L3", "L4", "U4", "U3", "U2", "U1"]
    assert [e["seed"] for e in s["seeds"]] == [0, 1, 2] and s["n_tasks"] == 5 and s["k"] == 2
    assert s["provenance"]["device"] == "cpu" and s["provenance"]["threads"] == 1
    assert s["config"]["model"] == "mlp" and s["config"]["memories"] == 32
    for e in s["seeds"]:
        assert len(e["op_wall_s"]) == 9 and e["wall_s"] > 0 and 0 <= e["acc"] <= 1
    for d in ("seed-0", "seed-1", "seed-2", "mean", "std"):
        for m in MATRICES:
            lines = (res / d / f"{m}.csv").read_text().splitlines()
            assert lines[0] == "row,op,0,1,2,3,4" and len(lines) == 10
    assert len((res / "metrics.csv").read_text().splitlines()) == 1 + 27
    assert not (res / "mia.csv").exists()
    # every operation of every seed is a checkpoint + an op-result under the run's refs
    store = Store.open(ref["store"])
    refs = store.list_refs(f"runs/{ref['run']}/")
    assert f"runs/{ref['run']}/config" in refs
    for seed in range(3):
        assert f"runs/{ref['run']}/seed-{seed}/init" in refs
        for i in range(9):
            r = store.get_json(refs[f"runs/{ref['run']}/seed-{seed}/op-{i:03d}"])
            assert r["type"] == "op-result" and r["seed"] == seed and r["index"] == i and r["op"] == s["seeds"][seed]["ops"][i]
            assert store.has_object(r["checkpoint"]) and set(r["eval"]) == set(MATRICES) and r["mia"] is None
            # summary.json's op_steps are the steps each operation's result records (an
            # unlearning whose stop rule already holds takes none)
            assert s["seeds"][seed]["op_steps"][i] == r["summary"]["steps"] >= (1 if r["op"][0] == "L" else 0)
    run_obj = store.get_json(refs[f"runs/{ref['run']}/config"])
    assert run_obj["type"] == "run" and run_obj["config"] == s["config"] and run_obj["sequence"] == "A4"
    # the same command again redoes nothing
    code, out, errtext = in_process("--sequence", "A4", "--seeds", "3", "--per-device", "2", *TINY, "--store",
                                    str(ref["store"]), "--out", str(ref["dir"] / "again"), "--no-plots", capfd=capfd)
    assert code == 0, errtext
    assert "already done" in errtext and out.strip() == str(ref["dir"] / "again")
    assert store.list_refs(f"runs/{ref['run']}/") == refs
    same_csvs(ref["res"], ref["dir"] / "again", range(3))


def test_seed_alone_is_bit_identical(ref, tmp_path):
    r = cluctl("--sequence", "A4", "--seed-list", "1", *TINY, "--store", str(tmp_path / "st"),
               "--out", str(tmp_path / "alone"), "--no-plots")
    assert r.returncode == 0, r.stderr
    same_csvs(ref["res"], tmp_path / "alone", [1], extra=())
    s = json.loads((tmp_path / "alone" / "summary.json").read_text())
    assert s["run"] == ref["run"] and [e["seed"] for e in s["seeds"]] == [1]


def test_dangling_op_ref_is_redone_on_resume(ref, tmp_path):
    """An operation whose result record (or its checkpoint) is gone from the store is not
    finished: the same command redoes it and gives the same results (issue: a dangling op
    ref made the run impossible to resume)."""
    import shutil

    store = tmp_path / "st"
    shutil.copytree(ref["store"], store)
    st = Store.open(store)
    run = ref["run"]
    last = len(ref["summary"]["ops"]) - 1
    gone = st.get_ref(f"runs/{run}/seed-1/op-003")
    st.object_path(gone).unlink()  # the op-result of op 3 of seed 1: its ref now dangles
    rec = st.get_json(st.get_ref(f"runs/{run}/seed-2/op-{last - 1:03d}"))
    st.object_path(rec["checkpoint"]).unlink()  # seed 2, last but one: the record stays, its checkpoint is gone
    r = cluctl("--sequence", "A4", "--seeds", "3", *TINY, "--store", str(store), "--out", str(tmp_path / "res"),
               "--no-plots")
    assert r.returncode == 0, r.stderr
    same_csvs(ref["res"], tmp_path / "res", [0, 1, 2])
    st = Store.open(store)
    redone = st.get_ref(f"runs/{run}/seed-1/op-003")  # a new record (its timings differ), same checkpoint
    assert redone != gone and st.has_object(redone)
    assert st.has_object(rec["checkpoint"])


@pytest.mark.slow
def test_sigkill_midway_then_resume_is_bit_identical(ref, tmp_path):
    args = ["--sequence", "A4", "--seed-list", "1", *TINY, "--store", str(tmp_path / "st"),
            "--out", str(tmp_path / "res"), "--no-plots"]
    # the worker kills itself (SIGKILL) at its 40th training step: inside L1, after L0 is stored
    r = cluctl(*args, env={"CLUCTL_FAULT": "train-step:40"})
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: seed 1 of run {ref['run']} failed: its process was "
                                                     "killed by SIGKILL"), r.stderr
    store = Store.open(tmp_path / "st")
    done = [n for n in store.list_refs(f"runs/{ref['run']}/seed-1/") if "/op-" in n]
    assert done == [f"runs/{ref['run']}/seed-1/op-000"]
    assert not (tmp_path / "res").exists()
    r = cluctl(*args)
    assert r.returncode == 0, r.stderr
    assert "seed 1 [cpu]: resuming after operation 1/9" in r.stderr
    same_csvs(ref["res"], tmp_path / "res", [1], extra=())


@pytest.mark.slow
def test_sigterm_stops_with_143_then_resume_completes(ref, tmp_path):
    args = ["--sequence", "A4", "--seed-list", "0,2", *TINY, "--store", str(tmp_path / "st"),
            "--out", str(tmp_path / "res"), "--no-plots"]
    proc = subprocess.Popen([sys.executable, "-m", "cluctl.cli.main", "launch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    marker = tmp_path / "st" / "refs" / "runs" / ref["run"] / "seed-0" / "op-000"
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1] if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGTERM)
    out, errtext = proc.communicate(timeout=120)
    assert proc.returncode == 143, errtext
    assert "stopped (SIGTERM)" in errtext and out == ""
    assert not (tmp_path / "res").exists()
    store = Store.open(tmp_path / "st")
    assert not store.list_refs(f"runs/{ref['run']}/seed-2/")  # one at a time: seed 2 never started
    r = cluctl(*args)
    assert r.returncode == 0, r.stderr
    assert "resuming after operation" in r.stderr
    same_csvs(ref["res"], tmp_path / "res", [0, 2], extra=())


def test_aggregate_only_reproduces_results(ref, tmp_path, capfd):
    r = cluctl("--aggregate-only", "--resume", ref["run"], "--store", str(ref["store"]), "--out", str(tmp_path / "agg"),
               "--no-plots")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "agg")
    same_csvs(ref["res"], tmp_path / "agg", range(3))
    for d in ("mean", "std"):
        for m in MATRICES:
            assert (ref["res"] / d / f"{m}.csv").read_bytes() == (tmp_path / "agg" / d / f"{m}.csv").read_bytes()
    a = json.loads((tmp_path / "agg" / "summary.json").read_text())
    b = dict(ref["summary"])
    for s in (a, b):
        s["provenance"] = {k: v for k, v in s["provenance"].items() if k not in ("created", "command")}
    assert a == b
    # by options instead of --resume; some seeds unfinished -> warn, aggregate the finished ones
    code, out, errtext = in_process("--aggregate-only", "--sequence", "A4", "--seed-list", "0,7", *TINY, "--store",
                                    str(ref["store"]), "--out", str(tmp_path / "agg2"), "--no-plots", capfd=capfd)
    assert code == 0, errtext
    assert "warning: seeds 7" in errtext
    assert [e["seed"] for e in json.loads((tmp_path / "agg2" / "summary.json").read_text())["seeds"]] == [0]
    same_csvs(ref["res"], tmp_path / "agg2", [0], extra=())
    # no finished seed: one error line, exit 2
    code, out, errtext = in_process("--aggregate-only", "--resume", ref["run"], "--seed-list", "7", "--store",
                                    str(ref["store"]), "--out", str(tmp_path / "agg3"), capfd=capfd)
    assert code == 2
    assert len(errtext.strip().splitlines()) == 1 and errtext.startswith("error: no seed of run")


def test_in_process_seed_matches_spawned(ref, tmp_path):
    """run_seed in this process (no spawn) gives the same matrices as the spawned workers."""
    import torch

    from cluctl.launch.core import register_run
    from cluctl.launch.results import collect, write_results

    threads = torch.get_num_threads()
    try:
        p = L.plan(sequence="A4", seed_list="2", store=str(tmp_path / "st"), out=str(tmp_path / "res"), threads=1, **TINY_KW)
        assert p.run == ref["run"]
        store = Store.open(p.store)
        register_run(store, p)
        msgs = []
        L.run_seed({"run": p.run, "seed": 2, "config": p.config, "sequence": p.sequence, "device": "cpu", "threads": 1,
                    "impl": "fast", "precision": "fp32", "store": p.store, "mia": False}, report=msgs.append)
        assert msgs[0][0] == "start" and msgs[-1][0] == "done"
        complete, incomplete = collect(store, p.run_object(), [2])
        write_results(p.out, p.run_object(), complete)
    finally:
        torch.set_num_threads(threads)
    same_csvs(ref["res"], tmp_path / "res", [2], extra=())


def test_worker_hands_precision_to_the_engine(tmp_path, monkeypatch):
    """The worker passes --precision to the engine (which applies it to the training passes
    only and refuses bf16 off CUDA and native-bf16 CPUs) instead of wrapping whole operations in autocast itself:
    a job that got past the plan's check with bf16 on the CPU fails in the engine, before
    any operation is stored."""
    import torch

    from cluctl.errors import UsageError
    from cluctl.launch.core import register_run

    monkeypatch.setenv("CLUCTL_CPU_BF16", "0")  # as on a CPU without native bf16
    threads = torch.get_num_threads()
    try:
        p = L.plan(sequence="L0-1", seed_list="0", store=str(tmp_path / "st"), out=str(tmp_path / "res"), threads=1,
                   **TINY_KW)
        store = Store.open(p.store)
        register_run(store, p)
        job = {"run": p.run, "seed": 0, "config": p.config, "sequence": p.sequence, "device": "cpu", "threads": 1,
               "impl": "fast", "precision": "bf16", "store": p.store, "mia": False}
        with pytest.raises(UsageError, match="--precision bf16 needs a CUDA device or a CPU with native bf16"):
            L.run_seed(job)
        assert store.get_ref(f"runs/{p.run}/seed-0/op-000") is None
    finally:
        torch.set_num_threads(threads)


def test_crashed_seed_others_finish(tmp_path):
    kw = dict(sequence="L0-2 U2", store=str(tmp_path / "st"), **TINY_KW)
    run = L.plan(**kw).run
    store = Store.open(tmp_path / "st")
    # a bad per-seed condition: seed 1's initial checkpoint ref points at something else
    store.set_ref(f"runs/{run}/seed-1/init", store.put_json({"type": "not-a-checkpoint"}))
    r = cluctl("--sequence", "L0-2 U2", "--seeds", "2", "--per-device", "2", *TINY, "--store", str(tmp_path / "st"),
               "--out", str(tmp_path / "res"), "--no-plots")
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: seed 1 of run {run} failed:"), r.stderr
    assert r.stdout.strip() == str(tmp_path / "res")
    s = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert [e["seed"] for e in s["seeds"]] == [0]
    assert not (tmp_path / "res" / "seed-1").exists()


@pytest.mark.slow
def test_mia_results_and_backfill(tmp_path, capfd):
    args = ["--sequence", "L0-1 U1", *TINY, "--store", str(tmp_path / "st"), "--no-plots"]
    r = cluctl(*args, "--out", str(tmp_path / "plain"))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "plain" / "mia.csv").exists()
    # --mia later: computed for the finished operations, nothing retrained
    r = cluctl(*args, "--mia", "--out", str(tmp_path / "mia"))
    assert r.returncode == 0, r.stderr
    assert "MIA for op" in r.stderr
    same_csvs(tmp_path / "plain", tmp_path / "mia", [0])
    lines = (tmp_path / "mia" / "mia.csv").read_text().splitlines()
    assert lines[0] == "seed,row,op,task,status,attack,members,acc,auc,cv_acc,efficacy"
    rows = [ln.split(",") for ln in lines[1:]]
    # after L0: task 0; after L1: tasks 0, 1; after U1: tasks 0, 1 (loss) + task 1 (efficacy)
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        ("0", "L0", "0", "learned", "loss"), ("1", "L1", "0", "learned", "loss"), ("1", "L1", "1", "learned", "loss"),
        ("2", "U1", "0", "learned", "loss"), ("2", "U1", "1", "forgotten", "loss"),
        ("2", "U1", "1", "forgotten", "efficacy")]
    for r_ in rows:
        if r_[5] == "loss":
            assert 0 <= float(r_[7]) <= 1 and 0 <= float(r_[8]) <= 1 and r_[10] == ""
        else:
            assert r_[7] == "" and 0 <= float(r_[10]) <= 1
    # aggregate-only keeps them
    code, _, errtext = in_process("--aggregate-only", *args, "--out", str(tmp_path / "agg"), capfd=capfd)
    assert code == 0, errtext
    assert (tmp_path / "agg" / "mia.csv").read_bytes() == (tmp_path / "mia" / "mia.csv").read_bytes()


def test_thesis_command_runs(tmp_path):
    """The thesis's command line (ranked buffers from the cached confidence proxy, SalUn),
    shrunk by a tiny model and sequence."""
    r = cluctl(*THESIS, "--model", "mlp", "--epochs", "1", "--memories", "64", "--sequence", "L0-2,U2",
               "--per-device", "3", "--threads", "1", "--no-plots", "--store", str(tmp_path / "st"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip())
    assert out == Path("results") / out.name and (tmp_path / out / "summary.json").exists()
    s = json.loads((tmp_path / out / "summary.json").read_text())
    c = s["config"]
    assert (c["algo"], c["alpha"], c["salun_strength"], c["learn_buffer_type"], c["unlearn_buffer_type"]) == (
        "neggem", 0.9, 0.2, "least", "most")
    assert [e["seed"] for e in s["seeds"]] == [0, 1, 2]
    assert Store.open(tmp_path / "st").list_refs("scores/proxy/")  # the proxy was computed and cached
