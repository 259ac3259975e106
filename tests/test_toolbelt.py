"""The researcher's tool belt: ``python -m cluctl``, --json results, shell completion of
choices and refs, messages through logging (-q silences them; log files get timestamps)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import TINY_FLAGS

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def _cli(*args, env=None, store=None, timeout=300):
    e = dict(os.environ, CLUCTL_DEBUG="0", **(env or {}))
    e.pop("CLUCTL_FAULT", None)
    if store is not None:
        e["CLUCTL_STORE"] = str(store)
    return subprocess.run([sys.executable, "-m", "cluctl", *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=timeout)


class _Done:
    def __init__(self, code, out, err):
        self.returncode, self.stdout, self.stderr = code, out, err


@pytest.fixture
def cli(capfd, monkeypatch):
    """``cluctl ARGS`` in this process (saves a Python + torch start per call); ``store=``
    sets $CLUCTL_STORE. Returns an object with returncode, stdout, stderr."""
    from cluctl.cli.main import main

    monkeypatch.setenv("CLUCTL_DEBUG", "0")
    monkeypatch.delenv("CLUCTL_FAULT", raising=False)

    def run(*args, store=None):
        if store is not None:
            monkeypatch.setenv("CLUCTL_STORE", str(store))
        capfd.readouterr()
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        out, err = capfd.readouterr()
        return _Done(e.value.code, out, err)

    return run


def _complete(words: str, cword: int, **env):
    return _cli(env={"_CLUCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword), **env})


def test_python_dash_m_cluctl():
    p = _cli("--version")
    assert p.returncode == 0 and p.stdout.startswith("cluctl "), p.stderr


def test_completion_lists_choices_and_registry_names():
    p = _complete("cluctl learn --learn-buffer-type ", 3)
    assert p.stdout.split() == ["first", "random", "most", "least"], p.stderr
    p = _complete("cluctl unlearn --algo neg", 3)
    assert set(p.stdout.split()) == {"neggem", "negagem", "neggrad"}
    p = _complete("cluctl launch --reference ", 3)
    assert p.stdout.split() == ["prefix", "retrain"]
    script = _cli("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert script.returncode == 0 and "_CLUCTL_COMPLETE" in script.stdout


def test_learn_and_unlearn_json_then_ref_completion_and_quiet_logging(tmp_path, cli):
    store = tmp_path / "store"
    # default (ranked) buffers: the confidence proxy is computed once, announced on stderr
    # through logging, each line with its time when stderr is not a terminal
    p = cli("learn", "--task", "0", *TINY_FLAGS[:-4], "--json", store=store)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"id", "summary"} and re.fullmatch(r"[0-9a-f]{64}", out["id"])
    assert out["summary"]["op"] == "L0" and out["summary"]["steps"] > 0
    notes = [ln for ln in p.stderr.splitlines() if "confidence proxy" in ln]
    assert notes and all(STAMP.match(ln) for ln in notes), p.stderr
    assert "training images" in notes[0]
    # -q: warnings only (no notice, no summary), for a new proxy (another seed) too
    q = cli("learn", "--task", "0", *TINY_FLAGS[:-4], "--seed", "1", "-q", store=store)
    assert q.returncode == 0 and q.stderr == "", q.stderr
    u = cli("unlearn", "--task", "0", "--from", out["id"], "--json", "-q", store=store)
    assert u.returncode == 0, u.stderr
    uj = json.loads(u.stdout)
    assert uj["summary"]["stopped"] == "reset" and uj["id"] != out["id"]
    # completion of --from: the store's checkpoints (id prefixes) and refs
    c = _complete("cluctl unlearn --from ", 3, CLUCTL_STORE=str(store))
    assert out["id"][:16] in c.stdout.split() and f"checkpoints/{out['id'][:16]}" in c.stdout.split()
    c = _complete(f"cluctl unlearn --from {out['id'][:10]}", 3, CLUCTL_STORE=str(store))
    assert c.stdout.split() == [out["id"][:16]]


@pytest.mark.slow
def test_launch_json_prints_the_outcome_and_summary(tmp_path, cli):
    p = cli("launch", *TINY_FLAGS, "--sequence", "L0-1 U1", "--devices", "cpu", "--threads", "1", "--no-plots",
             "--json", "-q", "--out", tmp_path / "res", store=tmp_path / "store")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["out"] == str(tmp_path / "res") and out["complete"] == [0] and out["failed"] == {}
    assert out["summary"]["ops"] == ["L0", "L1", "U1"] and out["summary"]["run"] == out["run"]
    store = tmp_path / "store"
    # cluctl runs: the run, its seeds done, each seed's last operation
    r = cli("runs", "--json", store=store)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["run"] == out["run"] and row["seeds_done"] == 1 and row["seeds_total"] == 1
    assert row["seeds"] == [{"seed": 0, "done": 3, "n_ops": 3, "last_op": "U1", "status": "done"}]
    # an operation's ref (its result record) names its checkpoint for evaluate and --from
    op1 = f"runs/{out['run']}/seed-0/op-001"
    e = cli("evaluate", op1, "--json", store=store)
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout)["op"] == "L1"
    u = cli("unlearn", "--task", "0", "--from", op1, "--json", "-q", store=store)
    assert u.returncode == 0, u.stderr
    assert json.loads(u.stdout)["summary"]["op"] == "U0"
    # the store commands print JSON too
    lg = cli("store", "log", f"runs/{out['run']}/seed-0/op-002", "--json", store=store)
    assert lg.returncode == 0, lg.stderr
    assert [r["op"] for r in json.loads(lg.stdout)] == ["U1", "L1", "L0", "init"]
    v = cli("store", "verify", "--json", store=store)
    assert v.returncode == 0 and json.loads(v.stdout)["consistent"] is True and json.loads(v.stdout)["problems"] == []
    g = cli("store", "gc", "--dry-run", "--json", store=store)
    assert g.returncode == 0 and set(json.loads(g.stdout)) == {"dry_run", "removed", "bytes_freed", "spared_recent"}
    pd = cli("store", "purge", "--task", "1", "--run", out["run"], "--dry-run", "--json", store=store)
    assert pd.returncode == 0, pd.stderr
    plan = json.loads(pd.stdout)
    assert plan["dry_run"] is True and plan["checkpoints"] and plan["manifests"]
    # before the purge, task 1's data is still there: verify --task (= --erased) says so, exit 1
    ve = cli("store", "verify", "--task", "1", "--run", out["run"], "--json", store=store)
    assert ve.returncode == 1 and json.loads(ve.stdout)["consistent"] is False


def test_memorize_json(tmp_path, cli):
    p = cli("memorize", "estimate", "--method", "confidence", "--width", "16", "--epochs", "1", "--threads", "1",
             "--json", "-q", store=tmp_path / "store")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    out = json.loads(p.stdout)
    assert out["method"] == "confidence" and out["dataset"] == "digits" and out["n"] == 1350
    assert out["min"] <= out["mean"] <= out["max"] and out["ref"].startswith("scores/confidence/")
    assert re.fullmatch(r"[0-9a-f]{64}", out["id"])
