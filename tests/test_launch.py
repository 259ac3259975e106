"""Unit tests of cluctl launch: options, TOML, thesis aliases, run identity, results files.

Fast: nothing here trains a model (the end-to-end runs are in test_launch_e2e.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cluctl.devices
from cluctl import launch as L
from cluctl.errors import CluctlError, NotFound, UsageError
from cluctl.launch import options as O
from cluctl.launch.results import atomic_write_text, fmt, write_results
from cluctl.store import Store

from conftest import THESIS


def plan(tmp_path, **opts):
    opts.setdefault("store", str(tmp_path / "store"))
    opts.setdefault("devices", "cpu")
    return L.plan(**opts)


# ---------------------------------------------------------------- run identity


def test_run_names_are_stable_across_versions(tmp_path):
    """A run's name is its identity: the same command must find the same run after an
    upgrade (this one was named before --profile existed; the default profile is not
    written into the config), and another profile is another run."""
    kw = dict(sequence="L0-1 U1", epochs=1, memories=16, learn_buffer_type="random", unlearn_buffer_type="random")
    p = plan(tmp_path, **kw)
    assert p.run == "l0-1_u1-neggem-42eafef5" and "profile" not in p.config
    assert plan(tmp_path, profile="spec", **kw).run == p.run
    thesis = plan(tmp_path, profile="thesis", **kw)
    assert thesis.run != p.run and thesis.config["profile"] == "thesis"
    # what the thesis's code had no counterpart for is refused before any work
    with pytest.raises(UsageError, match="--profile thesis has no 'ga'"):
        plan(tmp_path, profile="thesis", algo="ga", **kw)
    with pytest.raises(UsageError, match="bf16"):
        plan(tmp_path, profile="thesis", precision="bf16", **kw)


def test_run_name_format_and_hash_excludes_execution_options(tmp_path, monkeypatch):
    base = plan(tmp_path, sequence="A4", algo="neggem")
    assert re.fullmatch(r"a4-neggem-[0-9a-f]{8}", base.run)
    monkeypatch.setattr(cluctl.devices, "visible_gpus", lambda: 2)  # bf16 needs CUDA devices: pretend two are visible
    same = [
        plan(tmp_path, sequence="a4", algo="NegGEM", threads=3, impl="classic", precision="bf16", per_device=2,
             out=str(tmp_path / "elsewhere"), mia=True, quiet=True, seeds=4, devices="cuda:0,cuda:1"),
        plan(tmp_path, sequence="a4", algo="NegGEM", impl="classic", per_device=2, seeds=4),
        plan(tmp_path, sequence="A4", algo="neggem", store=str(tmp_path / "other-store"), seed_list="5,9"),
        plan(tmp_path, sequence="A4", algo="neggem", devices=None, gpus=0),
    ]
    for p in same:
        assert p.run == base.run
        assert p.config == base.config


@pytest.mark.parametrize("native", [True, False])
def test_plan_allows_bf16_on_cpu_devices_only_with_native_bf16(tmp_path, monkeypatch, native):
    monkeypatch.setenv("CLUCTL_CPU_BF16", "1" if native else "0")
    if native:
        p = plan(tmp_path, sequence="L0-1", precision="bf16")
        assert p.precision == "bf16" and p.devices == ["cpu"]
        assert p.run == plan(tmp_path, sequence="L0-1").run  # precision is not part of the identity
    else:
        with pytest.raises(UsageError, match="--devices includes cpu and this CPU has neither"):
            plan(tmp_path, sequence="L0-1", precision="bf16")


def test_run_name_resolves_dependent_defaults_and_changes_with_science(tmp_path):
    base = plan(tmp_path)
    assert base.config["unlearning_rate"] == 0.01 and base.config["forget_loss_scale"] == 5.0
    assert base.config["stop_acc"] == pytest.approx(0.5 + 0.5 / 6)
    assert base.config["tasks"] == 5 and (base.config["model"], base.config["width"]) == ("mlp", 100)
    explicit = plan(tmp_path, unlearning_rate=0.01, forget_loss_scale=5, tasks=5, width=100, model="MLP")
    assert explicit.run == base.run
    for change in ({"lr": 0.05}, {"algo": "rl-gem"}, {"sequence": "B4"}, {"memories": 32}, {"model": "resnet18"},
                   {"learn_buffer_type": "first"}, {"salun_strength": 0.1}):
        assert plan(tmp_path, **change).run != base.run, change
    assert plan(tmp_path, algo="RL-GEM").run.startswith("a4-rl-gem-")
    assert plan(tmp_path, algo="neggrad", sequence="L0-2 U2").run.startswith("l0-2_u2-neggrad-")
    # the text form is canonicalised: commas, case and ranges do not make another run
    assert plan(tmp_path, sequence="l0,L1,l2,U2").run == plan(tmp_path, sequence="L0-2 U2").run


def test_name_override_is_validated(tmp_path):
    assert plan(tmp_path, name="my-run_1.a").run == "my-run_1.a"
    for bad in ("a/b", "..", "sp ace", ""):
        with pytest.raises(UsageError):
            plan(tmp_path, name=bad)


def test_seeds_and_devices(tmp_path, monkeypatch):
    assert plan(tmp_path).seeds == [0]
    assert plan(tmp_path, seeds=3).seeds == [0, 1, 2]
    assert plan(tmp_path, seed_list="3,7").seeds == [3, 7]
    with pytest.raises(UsageError, match="twice"):
        plan(tmp_path, seed_list="3,3")
    with pytest.raises(UsageError, match="mutually exclusive"):
        plan(tmp_path, seeds=2, seed_list="1")
    p = plan(tmp_path, seeds=5, per_device=2)
    assert p.assignments() == [(s, "cpu") for s in range(5)]
    assert p.threads == max(1, O.available_cores() // 2)
    assert plan(tmp_path, seeds=5, threads=3).threads == 3
    # round robin over devices, an explicit --devices wins over --gpus
    monkeypatch.setattr(cluctl.devices, "visible_gpus", lambda: 2)
    p = plan(tmp_path, seeds=3, devices="cuda:0,cuda:1")
    assert p.assignments() == [(0, "cuda:0"), (1, "cuda:1"), (2, "cuda:0")]
    assert plan(tmp_path, devices="cpu", gpus=3).devices == ["cpu"]
    assert plan(tmp_path, devices=None, gpus=2).devices == ["cuda:0", "cuda:1"]
    assert plan(tmp_path, devices=None).devices == ["cuda:0"]
    with pytest.raises(UsageError, match="twice"):
        plan(tmp_path, devices="cuda:0,cuda:0")
    with pytest.raises(UsageError, match=r"--gpus 3 asks for 3 GPU\(s\) but 2 are visible.*--devices cpu"):
        plan(tmp_path, devices=None, gpus=3)
    monkeypatch.setattr(cluctl.devices, "visible_gpus", lambda: 0)
    assert plan(tmp_path, devices=None).devices == ["cpu"]
    with pytest.raises(UsageError, match="cuda:1"):
        plan(tmp_path, devices="cuda:1")


# ---------------------------------------------------------------- TOML


def test_toml_keys_dashes_underscores_aliases_and_flag_override(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text(
        'sequence = "B4"\nalgo = "rl-gem"\nbatch-size = 20\nunlearn_batch_size = 4\nlearning_buffer_type = "first"\n'
        'seed-list = [3, 7]\nmemories = 64\nsalun-strength = 0.05\ndevices = "cpu"\nmia = true\n'
    )
    values = O.load_toml(f)
    assert values["batch_size"] == 20 and values["learn_buffer_type"] == "first" and values["seed_list"] == [3, 7]
    p = O.make_plan(O.merge(values, {"memories": 128, "seeds": 2, "store": str(tmp_path / "st")}))
    assert p.sequence == "B4" and p.config["algo"] == "rl-gem" and p.config["batch_size"] == 20
    assert p.config["unlearn_batch_size"] == 4 and p.config["salun_strength"] == 0.05 and p.mia is True
    assert p.config["memories"] == 128  # the flag wins
    assert p.seeds == [0, 1]  # a seed flag replaces both seed keys of the file
    # the same options from flags give the same run
    q = plan(tmp_path, sequence="B4", algo="rl-gem", batch_size=20, unlearn_batch_size=4, learn_buffer_type="first",
             memories=128, salun_strength=0.05)
    assert q.run == p.run
    # through the API's config= argument too
    assert L.plan(config=str(f), store=str(tmp_path / "st")).seeds == [3, 7]


def test_toml_unknown_and_duplicate_keys(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('lr = 0.1\nlearning-rat = 0.2\ncolour = "red"\n')
    with pytest.raises(UsageError) as e:
        O.load_toml(f)
    assert "'colour'" in str(e.value) and "'learning-rat'" in str(e.value) and "lr" not in str(e.value).split("key(s)")[1]
    f.write_text("batch_size = 10\nlearn_batch_size = 20\n")
    with pytest.raises(UsageError, match="same option --batch-size"):
        O.load_toml(f)
    f.write_text("lr = [oops\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        O.load_toml(f)
    with pytest.raises(NotFound):
        O.load_toml(tmp_path / "missing.toml")


def test_cli_config_unknown_key_is_one_error_line(tmp_path, capsys):
    from cluctl.cli.main import main

    f = tmp_path / "bad.toml"
    f.write_text("epochz = 3\n")
    with pytest.raises(SystemExit) as e:
        main(["launch", "--config", str(f), "--store", str(tmp_path / "st")])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'epochz'" in lines[0]


# ---------------------------------------------------------------- thesis aliases


def _captured_plan(monkeypatch, args, tmp_path):
    """Parse a launch command line through the real CLI; capture the plan, run nothing."""
    from cluctl.cli.main import app

    seen = {}

    def fake_execute(p, *a, **k):
        seen["plan"] = p
        return L.LaunchOutcome(p.run, None, 0)

    monkeypatch.setattr(L, "execute", fake_execute)
    res = CliRunner().invoke(app, ["launch", *args, "--store", str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    return seen["plan"]


def test_thesis_command_maps_to_cluctl_options(monkeypatch, tmp_path):
    p = _captured_plan(monkeypatch, THESIS, tmp_path)
    c = p.config
    assert (c["algo"], c["alpha"], c["mem_strength"], c["batch_size"]) == ("neggem", 0.9, 0.5, 10)
    assert (c["unlearn_mem_strength"], c["unlearn_batch_size"], c["salun_strength"]) == (0.6, 10, 0.2)
    assert (c["learn_buffer_type"], c["learn_buffer_split"]) == ("least", 0.2)
    assert (c["unlearn_buffer_type"], c["unlearn_buffer_split"]) == ("most", 0.2)
    assert c["dataset"] == "digits" and p.sequence == "A4" and p.seeds == [0, 1, 2]
    assert p.devices == ["cpu"]  # an explicit --devices wins over --number_of_gpus 3
    # the thesis spellings give the same run as cluctl's
    q = plan(tmp_path, algo="neggem", alpha=0.9, mem_strength=0.5, batch_size=10, unlearn_mem_strength=0.6,
             unlearn_batch_size=10, salun_strength=0.2, learn_buffer_type="least", learn_buffer_split=0.2,
             unlearn_buffer_type="most", unlearn_buffer_split=0.2, store=str(tmp_path / "st"))
    assert q.run == p.run


def test_thesis_toggles(monkeypatch, tmp_path):
    p = _captured_plan(monkeypatch, ["--salun", "0", "--salun_strength", "0.2", "--mem_learning_buffer", "0",
                                     "--learning_buffer_type", "least", "--mem_unlearning_buffer", "0",
                                     "--task_sequence", "C4v2", "--devices", "cpu"], tmp_path)
    assert p.config["salun_strength"] is None
    assert p.config["learn_buffer_type"] == "first" and p.config["unlearn_buffer_type"] == "same"
    assert p.sequence == "C4v2"
    with pytest.raises(UsageError, match="--salun 1 needs a strength"):
        plan(tmp_path, salun=1)
    with pytest.raises(UsageError, match="0 or 1"):
        plan(tmp_path, salun=2, salun_strength=0.1)
    assert plan(tmp_path, salun=1, salun_strength=0.3).config["salun_strength"] == 0.3
    assert plan(tmp_path, mem_learning_buffer=1).config["learn_buffer_type"] == "least"


def test_gpus_without_gpus_is_one_error_line(monkeypatch, tmp_path, capsys):
    from cluctl.cli.main import main

    monkeypatch.setattr(cluctl.devices, "visible_gpus", lambda: 0)
    for args in (["--gpus", "3"], ["--number_of_gpus", "3"]):
        with pytest.raises(SystemExit) as e:
            main(["launch", *args, "--store", str(tmp_path / "st")])
        assert e.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: --gpus 3 asks for 3 GPU(s) but 0 are visible") and "--devices cpu" in lines[0]


def test_bad_values_are_usage_errors(tmp_path):
    for opts, pat in (({"algo": "gemini"}, "unknown unlearning algorithm"), ({"sequence": "L0 U3"}, "not learned"),
                      ({"sequence": "Z9"}, "malformed"), ({"tasks": 3}, "does not divide"),
                      ({"per_device": 0}, "per-device"), ({"dataset": "mnist"}, "unknown dataset"),
                      ({"impl": "turbo"}, "--impl"), ({"learn_buffer_type": "same"}, "--learn-buffer-type")):
        with pytest.raises(CluctlError, match=pat):
            plan(tmp_path, **opts)


def test_resume_reads_stored_options_and_refuses_changes(tmp_path):
    from cluctl.launch.core import register_run

    store = Store.open(tmp_path / "store")
    p = plan(tmp_path, model="mlp", lr=0.05, sequence="L0-2 U2")
    register_run(store, p)
    r = plan(tmp_path, resume=p.run)
    assert r.run == p.run and r.config == p.config and r.sequence == p.sequence and r.resume
    assert plan(tmp_path, resume=p.run, lr=0.05, threads=2).config == p.config  # same value is fine
    with pytest.raises(UsageError, match="--lr 0.05; --lr 0.1 would be another run"):
        plan(tmp_path, resume=p.run, lr=0.1)
    with pytest.raises(UsageError, match="runs sequence"):
        plan(tmp_path, resume=p.run, sequence="A4")
    # without seed options, --resume takes the seeds the store has for the run
    store.set_ref(f"runs/{p.run}/seed-4/init", store.put_json({"x": 1}))
    store.set_ref(f"runs/{p.run}/seed-11/init", store.put_json({"x": 1}))
    assert plan(tmp_path, resume=p.run).seeds == [4, 11]
    assert plan(tmp_path, resume=p.run, seeds=2).seeds == [0, 1]
    with pytest.raises(NotFound, match="no run named nope"):
        plan(tmp_path, resume="nope")
    # a different run under an existing name is refused
    other = plan(tmp_path, model="mlp", lr=0.2, sequence="L0-2 U2", name=p.run)
    with pytest.raises(UsageError, match="already exists in the store with different options lr"):
        register_run(store, other)
    register_run(store, plan(tmp_path, model="mlp", lr=0.05, sequence="L0-2 U2", name=p.run))  # same: fine


# ---------------------------------------------------------------- results files


def _fake_op_results(store, run, seed, labels, n_tasks, mia=False):
    import numpy as np

    rng = np.random.default_rng(seed)
    ck = store.put_json({"type": "stand-in", "note": "the checkpoint an op-result links to"})
    for i, label in enumerate(labels):
        ev = {k: [float(x) for x in rng.random(n_tasks)] for k in ("test_acc", "test_conf", "train_acc", "train_conf")}
        ev["test_conf"][0] = None  # a missing value becomes an empty cell
        res = {"type": "op-result", "run": run, "seed": seed, "index": i, "op": label, "checkpoint": ck,
               "eval": ev, "summary": {"steps": 3, "wall_s": 0.5, "op_wall_s": 1.25},
               "mia": [{"task": 0, "status": "learned", "attack": "loss", "members": "train", "acc": 0.5, "auc": 0.51,
                        "cv_acc": 0.49, "efficacy": None}] if mia else None,
               "execution": {"device": "cpu", "threads": 1, "impl": "fast", "precision": "fp32", "host": "h"}}
        store.set_ref(f"runs/{run}/seed-{seed}/op-{i:03d}", store.put_json(res))


def test_a_results_folder_that_cannot_be_written_is_not_left_half_written(tmp_path, monkeypatch):
    """A full disk (here: the figures fail to write) removes a results folder the launch
    created, and says how to rebuild it; an existing folder is kept and the error says so."""
    from cluctl.launch import core
    from cluctl.launch.progress import Console

    store = Store.open(tmp_path / "store")
    p = plan(tmp_path, sequence="L0-2 U2", out=str(tmp_path / "res"), seed_list="0", plots=True)
    core.register_run(store, p)
    _fake_op_results(store, p.run, 0, ["L0", "L1", "L2", "U2"], 5)

    def full_disk(out):
        raise UsageError(f"cannot write {out}/plots/tasks_test.png (No space left on device)", "pick a writable --out")

    monkeypatch.setattr(core, "make_plots", full_disk)
    with pytest.raises(UsageError, match="was not left behind.*--aggregate-only --resume"):
        core.aggregate(p, store, Console(stderr=True))
    assert not (tmp_path / "res").exists()
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="may be partly rewritten"):
        core.aggregate(p, store, Console(stderr=True))
    assert (tmp_path / "res" / "notes.txt").read_text() == "mine"
    # the experiment loggers' folder inside a new results folder is no results: the
    # folder counts as new, its results go, the logs stay
    import shutil

    shutil.rmtree(tmp_path / "res")
    p.log, p.log_dir = ["csv"], str(tmp_path / "res" / "logs")
    (tmp_path / "res" / "logs" / "csv").mkdir(parents=True)
    (tmp_path / "res" / "logs" / "csv" / "steps.csv").write_text("run,seed\n")
    with pytest.raises(UsageError, match="was not left behind"):
        core.aggregate(p, store, Console(stderr=True))
    assert sorted(x.name for x in (tmp_path / "res").iterdir()) == ["logs"]
    assert (tmp_path / "res" / "logs" / "csv" / "steps.csv").read_text() == "run,seed\n"


def test_results_layout_from_store(tmp_path):
    from cluctl.launch.core import aggregate, register_run
    from cluctl.launch.progress import Console

    store = Store.open(tmp_path / "store")
    p = plan(tmp_path, sequence="L0-2 U2", out=str(tmp_path / "res"), seed_list="0,1,2", plots=False)
    register_run(store, p)
    labels = ["L0", "L1", "L2", "U2"]
    for s in (0, 1):
        _fake_op_results(store, p.run, s, labels, 5, mia=True)
    _fake_op_results(store, p.run, 2, labels[:2], 5)  # seed 2 unfinished
    (tmp_path / "res" / "seed-9").mkdir(parents=True)
    (tmp_path / "res" / "seed-9" / "test_acc.csv").write_text("stale\n")
    console = Console(stderr=True)
    out = aggregate(p, store, console)
    assert out.complete == [0, 1] and out.incomplete == [2]
    res = tmp_path / "res"
    assert not (res / "seed-9").exists() and not (res / "seed-2").exists()
    for d in ("seed-0", "seed-1", "mean", "std"):
        for m in ("test_acc", "test_conf", "train_acc", "train_conf"):
            lines = (res / d / f"{m}.csv").read_text().splitlines()
            assert lines[0] == "row,op,0,1,2,3,4"
            assert [ln.split(",")[:2] for ln in lines[1:]] == [[str(i), op] for i, op in enumerate(labels)]
            assert all(len(ln.split(",")) == 7 for ln in lines)
    assert (res / "seed-0" / "test_conf.csv").read_text().splitlines()[1].split(",")[2] == ""
    metrics = (res / "metrics.csv").read_text().splitlines()
    assert metrics[0] == "seed,row,op,retain_acc,forget_acc,tow,clu_mix,steps,stopped" and len(metrics) == 1 + 8
    assert metrics[1].startswith("0,0,L0,") and metrics[1].split(",")[4] == ""  # no forgotten task yet: null
    mia = (res / "mia.csv").read_text().splitlines()
    assert mia[0] == "seed,row,op,task,status,attack,members,acc,auc,cv_acc,efficacy"
    assert mia[1] == "0,0,L0,0,learned,loss,train,0.5,0.51,0.49,"
    s = json.loads((res / "summary.json").read_text())
    for key in ("run", "sequence", "ops", "algo", "learn_algo", "dataset", "n_tasks", "k", "config", "provenance",
                "seeds", "mean", "std"):
        assert key in s
    assert s["ops"] == labels and s["n_tasks"] == 5 and s["k"] == 2 and s["sequence"] == "L0-2 U2"
    assert set(s["provenance"]) >= {"cluctl", "torch", "device", "threads", "python", "host", "created"}
    assert [e["seed"] for e in s["seeds"]] == [0, 1]
    e0 = s["seeds"][0]
    assert set(e0) >= {"seed", "ops", "acc", "bwt", "final_forget_acc", "final_retain_acc", "final_tow",
                       "final_clu_mix", "wall_s", "op_wall_s", "op_steps"}
    assert e0["op_wall_s"] == [1.25] * 4 and e0["wall_s"] == 5.0 and e0["op_steps"] == [3] * 4
    assert set(s["mean"]) == {"acc", "bwt", "final_forget_acc", "final_retain_acc", "final_tow", "final_clu_mix", "wall_s"}
    # mean/std CSVs agree with the seeds
    import numpy as np

    a = np.loadtxt(res / "seed-0" / "test_acc.csv", delimiter=",", skiprows=1, usecols=range(2, 7))
    b = np.loadtxt(res / "seed-1" / "test_acc.csv", delimiter=",", skiprows=1, usecols=range(2, 7))
    m = np.loadtxt(res / "mean" / "test_acc.csv", delimiter=",", skiprows=1, usecols=range(2, 7))
    sd = np.loadtxt(res / "std" / "test_acc.csv", delimiter=",", skiprows=1, usecols=range(2, 7))
    # std: the sample standard deviation (ddof 1) over the two seeds
    assert np.array_equal(m, (a + b) / 2) and np.allclose(sd, np.abs(a - b) / np.sqrt(2))
    assert list(res.rglob("*.tmp")) == []
    # no finished seed at all: an error
    p2 = plan(tmp_path, sequence="L0-2 U2", out=str(tmp_path / "res2"), seed_list="2")
    with pytest.raises(NotFound, match="no seed of run"):
        aggregate(p2, store, console)


def test_atomic_write_and_cells(tmp_path):
    target = tmp_path / "a" / "b.csv"
    atomic_write_text(target, "x\n")
    atomic_write_text(target, "y\n")
    assert target.read_text() == "y\n" and [p.name for p in target.parent.iterdir()] == ["b.csv"]
    assert fmt(None) == "" and fmt(float("nan")) == "" and fmt(0.1) == "0.1" and fmt(3) == "3" and fmt("a,b") == "a,b"
    x = 0.9555555582046509
    assert float(fmt(x)) == x


def test_write_results_needs_a_seed(tmp_path):
    with pytest.raises(NotFound):
        write_results(tmp_path, {"run": "r", "n_tasks": 5, "k": 2, "config": {}, "sequence": "A4"}, {})


def test_help_has_example(tmp_path):
    from cluctl.cli.main import app

    res = CliRunner().invoke(app, ["launch", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert res.exit_code == 0
    assert "Example: cluctl launch" in res.output
    for opt in ("--learn_batch_size", "--average_over_n_runs", "--salun", "--mem_unlearning_buffer", "--aggregate-only"):
        assert opt in res.output
    assert Path(L.__file__).name == "__init__.py"
