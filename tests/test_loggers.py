"""Experiment loggers (issue 17, item 8): ``launch --log csv,tensorboard,wandb`` and the
engine's per-step records behind them. Every backend's files are read back with that
backend's own reader: TensorBoard's EventAccumulator, wandb's offline run file (its
LevelDB-style log of wandb's own protobuf records), the csv module."""

from __future__ import annotations

import csv
import glob
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cluctl.errors import UsageError
from cluctl.launch import loggers as LG

from conftest import TINY, clone_state

TINY_L = ["--model", "mlp", "--width", "32", "--epochs", "1", "--memories", "32", "--learn-buffer-type", "random",
          "--unlearn-buffer-type", "random", "--devices", "cpu", "--threads", "1", "--no-plots"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def in_process(*args, capfd):
    from cluctl.cli.main import main

    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return e.value.code, out, err


# ---------------------------------------------------------------------- pure parts


def test_parse_kinds():
    assert LG.parse_kinds(None) == []
    assert LG.parse_kinds("") == []
    assert LG.parse_kinds("csv") == ["csv"]
    assert LG.parse_kinds(" TensorBoard, csv,csv ") == ["tensorboard", "csv"]
    assert LG.parse_kinds(["wandb", "csv"]) == ["wandb", "csv"]  # TOML: log = ["wandb", "csv"]
    for bad in ("mlflow", "csv,tb", ["csv", 3]):
        with pytest.raises(UsageError) as e:
            LG.parse_kinds(bad)
        assert "--log" in str(e.value) and "csv, tensorboard, wandb" in str(e.value)


def test_op_metrics_against_a_hand_computation():
    labels = ["L0", "L1", "L2", "U1"]
    row = [0.9, 0.25, 0.7, 0.1, 0.3]  # tasks 3 and 4 unseen
    summary = {"steps": 12, "projections": 5, "qp_fallbacks": 0, "final_forget_acc": 0.2, "wall_s": 1.5,
               "mia_s": None}
    mia = [{"task": 1, "status": "forgotten", "attack": "loss", "acc": 0.55, "auc": 0.6, "cv_acc": None,
            "efficacy": None},
           {"task": 1, "status": "forgotten", "attack": "efficacy", "acc": None, "auc": None, "cv_acc": None,
            "efficacy": 0.8}]
    m = LG.op_metrics(labels, row, 5, summary, mia)
    assert m["forget_acc"] == pytest.approx(0.25)  # the forgotten task 1
    assert m["retain_acc"] == pytest.approx((0.9 + 0.7) / 2)  # learned tasks 0 and 2
    assert {k for k in m if k.startswith("test_acc/")} == {"test_acc/task-0", "test_acc/task-1", "test_acc/task-2"}
    assert m["summary/steps"] == 12 and m["summary/projections"] == 5 and "summary/mia_s" not in m
    assert m["mia/loss/task-1/acc"] == 0.55 and m["mia/efficacy/task-1/efficacy"] == 0.8
    assert "mia/loss/task-1/cv_acc" not in m
    # nothing forgotten yet: no forget accuracy at all (not 0)
    m0 = LG.op_metrics(["L0", "L1"], row, 5, {}, None)
    assert "forget_acc" not in m0 and m0["retain_acc"] == pytest.approx((0.9 + 0.25) / 2)


@pytest.mark.parametrize("kind,package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_missing_backend_is_one_line_before_any_work(kind, package, tmp_path, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    with pytest.raises(UsageError) as e:
        LG.check_available([kind])
    assert f"pip install 'cluctl[{kind}]'" in str(e.value)
    store = tmp_path / "st"
    code, out, err = in_process("launch", "--sequence", "L0-1", *TINY_L, "--store", store, "--out", tmp_path / "res",
                                "--log", f"csv,{kind}", capfd=capfd)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: --log " + kind), err
    assert "Traceback" not in err
    assert not (tmp_path / "res").exists()
    assert not (store / "refs" / "runs").exists()  # no run was registered


def test_bad_log_value_is_one_line(tmp_path, capfd):
    code, out, err = in_process("launch", "--sequence", "L0-1", *TINY_L, "--store", tmp_path / "st",
                                "--log", "csv,mlflow", capfd=capfd)
    assert code == 2 and err.strip().startswith("error: --log 'mlflow' is not a logger"), err
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "afile").write_text("x")
    code, out, err = in_process("launch", "--sequence", "L0-1", *TINY_L, "--store", tmp_path / "st",
                                "--log", "csv", "--log-dir", tmp_path / "afile" / "logs", capfd=capfd)
    assert code == 2 and err.strip().startswith("error: --log-dir") and "is a file" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "st").exists()


def test_launch_help_lists_the_loggers():
    from typer.testing import CliRunner

    from cluctl.cli.main import app

    r = CliRunner().invoke(app, ["launch", "--help"], env={"COLUMNS": "200"})
    assert "--log " in r.output and "--log-dir" in r.output
    assert "csv, tensorboard, wandb" in " ".join(r.output.split())
    assert "<bool>" not in r.output  # flags show no type


# ---------------------------------------------------------------------- engine records


def test_learn_step_records_against_an_independent_loss(tiny_learned3):
    """Every step is recorded; the first step's loss is recomputed here from the operation's
    own permutation and the initial weights (an MLP: no BatchNorm), and the projection flags
    add up to the summary's count."""
    from cluctl.engine import learn_task, new_state, op_generator, run_config
    from cluctl.data import task_indices

    st = new_state(run_config(**TINY), device="cpu")
    learn_task(st, 0)
    recs: list[dict] = []
    w0 = {k: v.clone() for k, v in st.model.state_dict().items()}
    s = learn_task(st, 1, on_step=recs.append)
    assert [r["step"] for r in recs] == list(range(1, s["steps"] + 1))
    assert all(r["op"] == "L1" and r["total"] == s["steps"] and r["forget_acc"] is None for r in recs)
    assert sum(bool(r["projected"]) for r in recs) == s["projections"] == recs[-1]["projections"]
    # independent: the first batch of the op's permutation, cross-entropy over task 1's classes
    model = clone_state(st).model
    model.load_state_dict(w0)
    model.train()
    cls = st.classes(1)
    idx = task_indices(st.dataset.y_train, cls)
    gen = op_generator(st.config["seed"], 1)
    perm = torch.randperm(len(idx), generator=gen)
    b = idx[perm[: st.config["batch_size"]]]
    x = st.dataset.x_train[b]
    y = torch.tensor([cls.index(int(c)) for c in st.dataset.y_train[b]])
    with torch.no_grad():
        logits = model(x)[:, cls]
        expected = torch.nn.functional.cross_entropy(logits, y).item()
    assert recs[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_unlearn_step_records(tiny_learned3):
    """The forget-buffer accuracy of the first record is the model's accuracy on the union of
    the task's buffers before any step (computed here); the loss is the forget term's value:
    negative for NegGEM's gradient ascent; the last record ends above the stop accuracy or
    the operation stopped on it."""
    from cluctl.engine import unlearn_task

    st = clone_state(tiny_learned3)
    buf = st.buffers[1]
    union = sorted(set(buf["learn"]["indices"]) | set(buf["unlearn"]["indices"]))
    cls = st.classes(1)
    st.model.eval()
    with torch.no_grad():
        pred = st.model(st.dataset.x_train[union])[:, cls].argmax(1)
    truth = torch.tensor([cls.index(int(c)) for c in st.dataset.y_train[union]])
    acc0 = (pred == truth).float().mean().item()
    recs: list[dict] = []
    s = unlearn_task(st, 1, {"algo": "neggem"}, on_step=recs.append)
    assert len(recs) == s["steps"] > 0
    assert recs[0]["forget_acc"] == pytest.approx(acc0, abs=1e-6)
    assert all(r["op"] == "U1" and r["loss"] is not None and r["loss"] < 0 for r in recs)
    assert recs[-1]["projections"] == s["projections"] == sum(bool(r["projected"]) for r in recs)
    assert all(r["forget_acc"] > s["stop_acc"] for r in recs)  # a step runs only above the stop accuracy


def test_no_listener_no_records_and_the_same_weights(tiny_learned3):
    """Listening changes nothing: the weights after the operation are bitwise the same."""
    from cluctl.engine import unlearn_task

    a, b = clone_state(tiny_learned3), clone_state(tiny_learned3)
    unlearn_task(a, 2, {"algo": "rl-agem"})
    unlearn_task(b, 2, {"algo": "rl-agem"}, on_step=lambda r: None)
    for (ka, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_api_learn_and_unlearn_take_on_step(tmp_path):
    from cluctl import api

    recs: list[dict] = []
    r = api.learn(0, store=tmp_path / "st", on_step=recs.append, **TINY)
    api.learn(1, from_ref=r.id, store=tmp_path / "st", on_step=recs.append)
    n_learn = len(recs)
    assert {x["op"] for x in recs} == {"L0", "L1"}
    u = api.unlearn(1, from_ref="checkpoints/" + api.learn(1, from_ref=r.id, store=tmp_path / "st").id[:16],
                    store=tmp_path / "st", algo="rl-gem", on_step=recs.append)
    assert len(recs) - n_learn == u.summary["steps"]


# ---------------------------------------------------------------------- wandb's offline file


def wandb_records(run_dir: Path) -> list:
    """The records of a wandb offline run file: wandb writes LevelDB's log format (32 KiB
    blocks of chunks: crc32c, length, type) after a 7-byte header (":W&B", a magic number,
    a version); each record is wandb's own protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "run-*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, out, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += block - pos % block if pos % block else 0
            continue
        if kind == 1:  # full
            payload = chunk
        elif kind == 2:  # first
            partial = chunk
            continue
        elif kind == 3:  # middle
            partial += chunk
            continue
        else:  # last
            payload = partial + chunk
        rec = pb.Record()
        rec.ParseFromString(payload)
        out.append(rec)
    return out


def wandb_history(run_dir: Path) -> tuple[dict, list[dict]]:
    config, history = {}, []
    for rec in wandb_records(run_dir):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            for item in rec.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item})
    return config, history


# ---------------------------------------------------------------------- launch end to end


def _launch(tmp_path, capfd, *extra, name="res"):
    code, out, err = in_process("launch", "--sequence", "L0-1 U1", *TINY_L, "--store", tmp_path / "st",
                                "--out", tmp_path / name, *extra, capfd=capfd)
    assert code == 0, err
    if "--log" in extra:  # where the logs go is said up front (and how to upload offline wandb runs)
        kinds = extra[extra.index("--log") + 1]
        assert f"experiment logs ({kinds.replace(',', ', ')}) in {tmp_path / name / 'logs'}" in err
        assert ("wandb sync" in err) == ("wandb" in kinds)
    return tmp_path / name


def test_launch_with_every_logger_reads_back(tmp_path, capfd, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cluctl.store import Store

    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default: no network here
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = _launch(tmp_path, capfd, "--log", "csv,tensorboard,wandb", "--seed-list", "3")
    logs = res / "logs"
    run = json.loads((res / "summary.json").read_text())["run"]
    st = Store.open(tmp_path / "st")
    results = [st.get_json(st.get_ref(f"runs/{run}/seed-3/op-{i:03d}")) for i in range(3)]
    steps = [r["summary"]["steps"] for r in results]
    assert steps[2] > 0  # U1 took steps

    # csv: one row per step, x-axis continuing over the operations
    rows = _rows(logs / "csv" / "seed-3" / "steps.csv")
    assert len(rows) == sum(steps)
    assert [int(r["global_step"]) for r in rows] == list(range(1, sum(steps) + 1))
    assert [r["op"] for r in rows] == ["L0"] * steps[0] + ["L1"] * steps[1] + ["U1"] * steps[2]
    u_rows = [r for r in rows if r["op"] == "U1"]
    assert all(float(r["loss"]) < 0 and 0 <= float(r["forget_acc"]) <= 1 for r in u_rows)
    assert int(u_rows[-1]["projections"]) == results[2]["summary"]["projections"]
    ops = _rows(logs / "csv" / "seed-3" / "ops.csv")
    by = {(int(r["index"]), r["metric"]): float(r["value"]) for r in ops}
    # the per-op numbers agree with the results folder (written by the aggregation, not the logger)
    metrics = {(int(r["row"]), r["metric"]): r["value"] for r in _rows(res / "results.csv")
               if r["seed"] == "3" and r["row"]}
    assert by[(2, "forget_acc")] == pytest.approx(float(metrics[(2, "forget_acc")]), abs=1e-6)
    assert by[(2, "retain_acc")] == pytest.approx(float(metrics[(2, "retain_acc")]), abs=1e-6)
    assert by[(1, "test_acc/task-1")] == pytest.approx(results[1]["eval"]["test_acc"][1], abs=1e-9)
    cfg = json.loads((logs / "csv" / "seed-3" / "config.json").read_text())
    assert cfg["run"] == run and cfg["seed"] == 3 and cfg["algo"] == "neggem" and cfg["ops"] == "L0 L1 U1"

    # tensorboard: its own event reader
    acc = EventAccumulator(str(logs / "tensorboard" / "seed-3" / "steps"), size_guidance={"scalars": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) >= {"loss/L", "loss/U", "forget_acc/U", "projected/U", "projections/U"}
    tb_loss = [(e.step, e.value) for e in acc.Scalars("loss/U")]
    assert tb_loss == [(int(r["global_step"]), pytest.approx(float(r["loss"]), rel=1e-6)) for r in u_rows]
    acc_ops = EventAccumulator(str(logs / "tensorboard" / "seed-3" / "ops"), size_guidance={"scalars": 0, "tensors": 0})
    acc_ops.Reload()
    assert [(e.step, round(e.value, 6)) for e in acc_ops.Scalars("forget_acc")] == [(2, round(by[(2, "forget_acc")], 6))]
    assert [e.step for e in acc_ops.Scalars("retain_acc")] == [0, 1, 2]
    text = acc_ops.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert f'run = "{run}"' in text and "seed = 3" in text

    # wandb: the offline run directory, read with wandb's own record definitions
    (run_dir,) = [Path(p) for p in glob.glob(str(logs / "wandb" / "wandb" / "offline-run-*"))]
    config, history = wandb_history(run_dir)
    assert config["run"] == run and config["seed"] == 3 and config["algo"] == cfg["algo"]
    step_losses = [h["step/loss"] for h in history if "step/loss" in h]
    assert len(step_losses) == sum(steps)
    assert step_losses[-1] == pytest.approx(float(u_rows[-1]["loss"]), rel=1e-6)
    op_rows = [h for h in history if "op/index" in h]
    assert [h["op/index"] for h in op_rows] == [0, 1, 2]
    assert op_rows[2]["op/forget_acc"] == pytest.approx(by[(2, "forget_acc")], abs=1e-9)


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_logs(tmp_path):
    """A worker killed mid-operation and resumed: the logs of the resumed run are the logs of
    an uninterrupted run (the interrupted operation's rows are dropped, TensorBoard purges
    its events), byte for byte in the CSV."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from conftest import run_cli

    def go(out, store, env=None, check=0):
        return run_cli(["launch", "--sequence", "L0-1 U1", *TINY_L, "--store", store, "--out", out,
                        "--log", "csv,tensorboard"], env=env, check=check)

    go(tmp_path / "clean", tmp_path / "st1")
    go(tmp_path / "res", tmp_path / "st2", env={"CLUCTL_FAULT": "train-step:40"}, check=1)  # dies inside L1
    partial = _rows(tmp_path / "res" / "logs" / "csv" / "seed-0" / "steps.csv")
    assert partial and {r["op"] for r in partial} <= {"L0", "L1"}
    go(tmp_path / "res", tmp_path / "st2")
    for name in ("steps.csv", "ops.csv"):
        a = (tmp_path / "clean" / "logs" / "csv" / "seed-0" / name).read_text()
        b = (tmp_path / "res" / "logs" / "csv" / "seed-0" / name).read_text()
        if name == "ops.csv":  # timings differ between runs
            a, b = ([ln for ln in t.splitlines() if "_s," not in ln] for t in (a, b))
        assert a == b, name
    clean = EventAccumulator(str(tmp_path / "clean" / "logs" / "tensorboard" / "seed-0" / "steps"),
                             size_guidance={"scalars": 0})
    resumed = EventAccumulator(str(tmp_path / "res" / "logs" / "tensorboard" / "seed-0" / "steps"),
                               size_guidance={"scalars": 0})
    clean.Reload()
    resumed.Reload()
    for tag in ("loss/L", "loss/U"):
        assert [(e.step, e.value) for e in resumed.Scalars(tag)] == [(e.step, e.value) for e in clean.Scalars(tag)]


def test_thesis_profile_records_and_a_failed_qp_is_a_divergence(tmp_path, monkeypatch):
    """--profile thesis records every step too (its loss is the reference step's loss), and
    the quadprog error the reference code would stop with is a divergence: one line,
    nothing written, the state restored."""
    from cluctl import api, thesis
    from cluctl.errors import Diverged

    kw = dict(TINY, profile="thesis", lr=0.001)
    recs: list[dict] = []
    r = api.learn(0, store=tmp_path / "st", **kw)
    r = api.learn(1, from_ref=r.id, store=tmp_path / "st", on_step=recs.append)
    assert len(recs) == r.summary["steps"] and all(x["loss"] > 0 for x in recs)
    assert recs[-1]["projections"] == r.summary["projections"] == sum(bool(x["projected"]) for x in recs)
    recs.clear()
    u = api.unlearn(1, from_ref=r.id, store=tmp_path / "st", algo="rl-agem", unlearning_rate=0.0005,
                    forget_loss_scale=0.5, on_step=recs.append)
    assert len(recs) == u.summary["steps"] > 0 and all(x["forget_acc"] is not None for x in recs)

    def no_solution(*a, **k):
        raise ValueError("constraints are inconsistent, no solution")

    monkeypatch.setattr(thesis, "gem_project", no_solution)
    before = sorted(p.name for p in (tmp_path / "st" / "objects").rglob("*") if p.is_file())
    with pytest.raises(Diverged) as e:
        api.unlearn(1, from_ref=r.id, store=tmp_path / "st", algo="neggem", unlearning_rate=0.0005,
                    forget_loss_scale=0.5)
    assert "quadratic program has no solution" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "st" / "objects").rglob("*") if p.is_file()) == before


def test_plan_takes_log_from_flags_toml_and_the_api(tmp_path):
    from cluctl import launch

    base = dict(sequence="L0-1", model="mlp", devices="cpu", store=str(tmp_path / "st"), out=str(tmp_path / "res"))
    p = launch.plan(log="csv, tensorboard", **base)
    assert p.log == ["csv", "tensorboard"] and p.log_dir == str(tmp_path / "res" / "logs")
    toml = tmp_path / "run.toml"
    toml.write_text('log = ["wandb", "csv"]\nlog-dir = "elsewhere"\n')
    p = launch.plan(config=str(toml), **base)
    assert p.log == ["wandb", "csv"] and p.log_dir == "elsewhere"
    assert launch.plan(**base).log == []
    # the loggers are not part of the run's identity
    assert launch.plan(log="csv", **base).run == launch.plan(**base).run
    jobs = launch.core.jobs_for(launch.plan(log="csv", **base))
    assert all(j["log"] == ["csv"] and j["log_dir"].endswith("logs") for j in jobs)
    agg = launch.plan(log="csv", aggregate_only=True, **base)  # nothing is trained, so nothing to log
    assert agg.log == [] and any("--aggregate-only" in w for w in agg.warnings)


def test_the_proxy_shows_progress_inside_learn(tmp_path):
    """Ranked buffers without --mem-scores train the confidence proxy inside the first
    learn: its epochs reach the operation's progress callback (the CLI's bar, launch's
    display) before the learn's own steps are done."""
    from cluctl import api

    seen: list[str] = []
    kw = dict(TINY, learn_buffer_type="least", unlearn_buffer_type="most")
    api.learn(0, store=tmp_path / "st", progress=lambda d, t, msg="": seen.append(msg), **kw)
    proxy = [m for m in seen if m.startswith("proxy epoch")]
    assert proxy and proxy[-1] == "proxy epoch 5/5" and any(m.startswith("L0 epoch") for m in seen)


def test_a_failing_logger_is_dropped_with_one_warning_and_the_run_goes_on(tmp_path, caplog):
    """A logger that fails mid-run (here the CSV file's disk "fills up") stops recording
    with one warning; the other loggers and the operation go on."""
    pytest.importorskip("tensorboard")
    lg = LG.SeedLogger(["csv", "tensorboard"], tmp_path / "logs", "r", 0, {"algo": "neggem"})
    lg.start_op(0, "L0")
    lg.step({"op": "L0", "step": 1, "loss": 0.5})
    csv_backend = lg.backends[0]

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    csv_backend.step = full
    with caplog.at_level("WARNING", logger="cluctl"):
        lg.step({"op": "L0", "step": 2, "loss": 0.4})
        lg.step({"op": "L0", "step": 3, "loss": 0.3})
    warnings = [r for r in caplog.records if "stopped recording" in r.getMessage()]
    assert len(warnings) == 1 and "--log csv" in warnings[0].getMessage()
    assert "No space left" in warnings[0].getMessage()
    assert [LG._kind_of(b) for b in lg.backends] == ["tensorboard"]
    lg.op({"retain_acc": 0.9}, steps=3)
    lg.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs" / "tensorboard" / "seed-0" / "steps"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/L")] == [1, 2, 3]
    assert len(_rows(tmp_path / "logs" / "csv" / "seed-0" / "steps.csv")) == 1
