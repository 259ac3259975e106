"""The Slurm wrappers in sbatch/.

Tests marked ``slurm`` submit the wrappers to a real single-node Slurm that
``sbatch/ci-slurm.sh`` starts for this module (Debian's packages; CI installs them with
``bash sbatch/ci-slurm.sh install``) and skip, with the reason, where it cannot run. Jobs
run on CPU with the tiny digits profile: launch-node.sbatch with 2 seeds, submit-array.sh
with seeds 0 and 1 (an array, then the aggregate job), both compared with a direct
``cluctl launch`` of the same seeds; and a SIGTERM to a running job's batch script, which
must stop launch at a safe point, requeue the job and resume.

The other tests run the wrappers' shell logic outside Slurm (they need only bash).
Run with ``-s`` to see how long each Slurm job took from submission to results.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SB = ROOT / "sbatch"
CI_SLURM = SB / "ci-slurm.sh"
SLURM_DIR = os.environ.get("CLUCTL_SLURM_DIR", "/tmp/cluctl-ci-slurm")
SLURM_CONF = f"{SLURM_DIR}/etc/slurm.conf"
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"



def tiny(epochs: int = 1) -> list[str]:
    return ["--sequence", "A4", "--dataset", "digits", "--model", "mlp", "--width", "32", "--epochs", str(epochs),
            "--memories", "32", "--learn-buffer-type", "random", "--unlearn-buffer-type", "random", "--threads", "1"]


TINY = tiny()
MATRICES = ("test_acc", "test_conf", "train_acc", "train_conf")
SUMMARY_NUMBERS = ("acc", "bwt", "final_forget_acc", "final_retain_acc", "final_tow", "final_clu_mix")


def _cluctl_exe() -> str | None:
    exe = Path(sys.executable).parent / "cluctl"
    return str(exe) if exe.exists() else shutil.which("cluctl")


def job_env(**extra) -> dict:
    """The environment a submission (or a wrapper run outside Slurm) gets: no Slurm job or
    sbatch variables of our own caller, no stray cluctl settings, one thread."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))
           and k not in ("CLUCTL_FAULT", "CLUCTL_STORE", "CLUCTL_OUT", "CLUCTL_DEVICES", "CLUCTL_GPUS", "CLUCTL")}
    env.update(OMP_NUM_THREADS="1", PATH=SBIN_PATH)
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ------------------------------------------------------------------ Slurm helpers


def slurm_cmd(*args, timeout=30) -> str:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                       env=job_env(SLURM_CONF=SLURM_CONF))
    assert p.returncode == 0, f"{' '.join(map(str, args))}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def job_states(job: str) -> dict[str, dict]:
    """scontrol's records of a job (every task of an array): JobId -> fields."""
    out = slurm_cmd("scontrol", "-o", "show", "job", job)
    recs = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            recs[fields["JobId"]] = fields
    return recs


ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT")


def wait_job(job: str, timeout: float = 240, logs: Path | None = None) -> dict[str, dict]:
    end = time.monotonic() + timeout
    while True:
        recs = job_states(job)
        if recs and not any(r["JobState"] in ACTIVE for r in recs.values()):
            return recs
        if time.monotonic() > end:
            pytest.fail(f"job {job} still {[r['JobState'] for r in recs.values()]} after {timeout} s\n" + read_logs(logs))
        time.sleep(0.2)


def read_logs(d: Path | None) -> str:
    if d is None:
        return ""
    return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')}" for p in sorted(d.glob("slurm-*.out")))


def assert_completed(recs: dict[str, dict], logs: Path) -> None:
    bad = {j: (r["JobState"], r.get("ExitCode")) for j, r in recs.items() if r["JobState"] != "COMPLETED"}
    assert not bad, f"jobs not COMPLETED: {bad}\n{read_logs(logs)}"


def submit(args: list, env: dict) -> str:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, f"{args}: rc {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def report(what: str, seconds: float) -> None:
    print(f"\nslurm timing: {what}: {seconds:.1f} s", file=sys.stderr)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A fresh single-node Slurm (sbatch/ci-slurm.sh start) for this module; stopped at the end."""
    missing = [c for c in ("sbatch", "scontrol", "slurmctld", "slurmd", "munged")
               if shutil.which(c, path=SBIN_PATH) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} not found): "
                    "run `bash sbatch/ci-slurm.sh install` as root (Debian)")
    if os.geteuid() != 0:
        pytest.skip("the CI Slurm (sbatch/ci-slurm.sh) runs as root")
    cluctl = _cluctl_exe()
    if cluctl is None:
        pytest.skip("no cluctl executable next to the test's Python or on PATH (pip install -e .)")
    # One test session at a time owns the CI Slurm (its ports and folder are fixed).
    lock = open(f"{SLURM_DIR}.lock", "w")
    end = time.monotonic() + 900
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > end:
                pytest.skip(f"another test session has held {SLURM_DIR}.lock (the CI Slurm) for 15 minutes")
            time.sleep(1)
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(CI_SLURM), "start"], capture_output=True, text=True, timeout=120, env=job_env())
    if p.returncode == 3:
        lock.close()
        pytest.skip(f"the CI Slurm cannot run here: {p.stderr.strip().splitlines()[-1]}")
    if p.returncode != 0:
        subprocess.run(["bash", str(CI_SLURM), "stop"], capture_output=True, timeout=120, env=job_env())
        lock.close()
        pytest.fail(f"sbatch/ci-slurm.sh start failed (rc {p.returncode}):\n{p.stdout}\n{p.stderr}")
    report("ci-slurm.sh start (node idle)", time.monotonic() - t0)
    try:
        yield {"cluctl": cluctl, "env": job_env(SLURM_CONF=SLURM_CONF, CLUCTL=cluctl, CLUCTL_DEVICES="cpu")}
    finally:
        subprocess.run(["bash", str(CI_SLURM), "stop"], capture_output=True, timeout=120, env=job_env())
        lock.close()


@pytest.fixture(scope="module")
def node_run(slurm, tmp_path_factory):
    """launch-node.sbatch on CPU, 2 seeds, through Slurm."""
    d = tmp_path_factory.mktemp("slurm-node")
    env = dict(slurm["env"], CLUCTL_STORE=str(d / "store"))
    t0 = time.monotonic()
    # The node has 2 CPUs and 3 fake GPUs: the script's --gres=gpu:3 line is kept.
    job = submit(["sbatch", "--parsable", f"--chdir={d}", "--cpus-per-task=2", SB / "launch-node.sbatch",
                  *TINY, "--seeds", "2", "--out", d / "res"], env).strip().split(";")[0]
    recs = wait_job(job, logs=d)
    seconds = time.monotonic() - t0
    report("launch-node.sbatch, 2 seeds (submit -> results)", seconds)
    return {"dir": d, "res": d / "res", "job": job, "recs": recs, "seconds": seconds}


@pytest.fixture(scope="module")
def array_run(slurm, tmp_path_factory):
    """submit-array.sh: array 0-1 (one seed each) into a shared store, then aggregate.sbatch."""
    d = tmp_path_factory.mktemp("slurm-array")
    env = dict(slurm["env"], CLUCTL_STORE=str(d / "store"), CLUCTL_OUT=str(d / "res"))
    t0 = time.monotonic()
    out = submit(["bash", SB / "submit-array.sh", "--array=0-1", f"--chdir={d}", "--cpus-per-task=1", "--", *TINY],
                 env)
    array_job, agg_job = out.split()
    recs = wait_job(agg_job, logs=d)
    seconds = time.monotonic() - t0
    report("submit-array.sh, array 0-1 + aggregate (submit -> results)", seconds)
    return {"dir": d, "res": d / "res", "array": array_job, "aggregate": agg_job,
            "array_recs": wait_job(array_job, timeout=10, logs=d), "agg_recs": recs, "seconds": seconds}


@pytest.fixture(scope="module")
def direct_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("direct")
    p = subprocess.run([sys.executable, "-m", "cluctl.cli.main", "launch", *TINY, "--seeds", "2", "--devices", "cpu",
                        "--no-plots", "--store", str(d / "store"), "--out", str(d / "res")],
                       capture_output=True, text=True, env=job_env(), timeout=600)
    assert p.returncode == 0, p.stderr
    return d / "res"


def check_results(res: Path, seeds=(0, 1)) -> dict:
    summary = json.loads((res / "summary.json").read_text())
    assert summary["seed_list"] == list(seeds) and summary["sequence"] == "A4"
    for part in [f"seed-{s}" for s in seeds] + ["mean", "std"]:
        for m in MATRICES:
            assert len((res / part / f"{m}.csv").read_text().splitlines()) == 10, (part, m)
    assert (res / "metrics.csv").is_file()
    return summary


# ------------------------------------------------------------------ through Slurm


@pytest.mark.slurm
def test_node_job(node_run):
    d, recs = node_run["dir"], node_run["recs"]
    assert_completed(recs, d)
    log = read_logs(d)
    assert f"job {node_run['job']} on" in log and "--devices cpu" in log
    assert "cluctl launch exited with 0" in log, log
    summary = check_results(node_run["res"])
    assert summary["provenance"]["device"] == "cpu"
    assert any((node_run["res"] / "plots").iterdir()), "no plots"
    rec = recs[node_run["job"]]
    assert rec["Requeue"] == "1" and "gpu:3" in rec.get("TresPerNode", ""), rec


@pytest.mark.slurm
def test_array_then_aggregate(array_run):
    d = array_run["dir"]
    assert_completed(array_run["array_recs"], d)
    assert_completed(array_run["agg_recs"], d)
    tasks = sorted(r.get("ArrayTaskId") for r in array_run["array_recs"].values())
    assert tasks == ["0", "1"]
    log = read_logs(d)
    assert "--seed-list 0" in log and "--seed-list 1" in log and "--aggregate-only" in log
    agg = array_run["agg_recs"][array_run["aggregate"]]
    assert agg["Dependency"] in ("(null)", "") or "afterok" in agg["Dependency"]
    check_results(array_run["res"])
    assert any((array_run["res"] / "plots").iterdir()), "the aggregate job makes the plots"
    assert not list(Path("/tmp").glob(f"cluctl-task-{array_run['array']}*")), "task out dirs left behind"


@pytest.mark.slurm
def test_slurm_results_equal_a_direct_launch(node_run, array_run, direct_run):
    ref = json.loads((direct_run / "summary.json").read_text())
    for res in (node_run["res"], array_run["res"]):
        for part in ("seed-0", "seed-1", "mean", "std"):
            for m in MATRICES:
                a, b = (res / part / f"{m}.csv").read_bytes(), (direct_run / part / f"{m}.csv").read_bytes()
                assert a == b, f"{res}/{part}/{m}.csv differs from the direct launch"
        assert (res / "metrics.csv").read_bytes() == (direct_run / "metrics.csv").read_bytes()
        s = json.loads((res / "summary.json").read_text())
        assert s["run"] == ref["run"] and s["config"] == ref["config"]
        for e, r in zip(s["seeds"], ref["seeds"], strict=True):
            assert e["seed"] == r["seed"] and e["ops"] == r["ops"]
            assert {k: e[k] for k in SUMMARY_NUMBERS} == {k: r[k] for k in SUMMARY_NUMBERS}


@pytest.mark.slurm
def test_sigterm_stops_an_array_task_which_requeues_and_resumes(slurm, tmp_path):
    """`scancel --signal=TERM --batch` to one array task (what --signal=B:TERM@120 does
    before the time limit): the script forwards TERM, launch stops at a safe point and
    exits 143, the task requeues itself, its second start resumes from the store, and the
    aggregate job still runs after the array (afterok holds)."""
    d = tmp_path
    env = dict(slurm["env"], CLUCTL_STORE=str(d / "store"), CLUCTL_OUT=str(d / "res"))
    t0 = time.monotonic()
    out = submit(["bash", SB / "submit-array.sh", "--array=0-1", f"--chdir={d}", "--cpus-per-task=1", "--",
                  *tiny(epochs=10)], env)  # ~1 s per operation: the TERM lands mid-run
    array_job, agg_job = out.split()
    task, log1 = f"{array_job}_1", d / f"slurm-cluctl-array-{array_job}_1.out"
    end = time.monotonic() + 120
    while not (log1.exists() and "op 1/9" in log1.read_text()):  # its first operation is in the store
        assert time.monotonic() < end, read_logs(d)
        states = {r["JobState"] for r in job_states(task).values()}
        assert states <= {"PENDING", "RUNNING", "CONFIGURING"}, f"{states}\n{read_logs(d)}"
        time.sleep(0.1)
    slurm_cmd("scancel", "--signal=TERM", "--batch", task)
    recs = wait_job(agg_job, logs=d)
    report("submit-array.sh with a SIGTERM to task 1: requeue, resume, aggregate (submit -> results)",
           time.monotonic() - t0)
    assert_completed(recs, d)
    tasks = wait_job(array_job, timeout=10, logs=d)
    assert_completed(tasks, d)
    restarts = {r["ArrayTaskId"]: r["Restarts"] for r in tasks.values()}
    assert restarts == {"0": "0", "1": "1"}, restarts
    text = log1.read_text()
    assert "stopped (SIGTERM)" in text and "cluctl launch exited with 143" in text, text
    assert f"requeued job {task}" in text and "restart 1:" in text, text
    assert re.search(r"resuming after operation [1-8]/9", text), text
    check_results(d / "res")


# ------------------------------------------------------------------ outside Slurm (bash only)


def test_wrapper_forwards_sigterm_outside_slurm(tmp_path):
    """Run launch-node.sbatch with bash (no Slurm): TERM to the script reaches launch,
    which stops at its next safe point; the script exits 143 and does not requeue."""
    cluctl = _cluctl_exe()
    if cluctl is None:
        pytest.skip("no cluctl executable next to the test's Python or on PATH")
    slow = tiny(epochs=10)  # ~1 s per operation: the TERM lands mid-run
    env = job_env(CLUCTL=cluctl, CLUCTL_DEVICES="cpu", CLUCTL_STORE=tmp_path / "store")
    log = tmp_path / "log"
    with open(log, "w") as f:
        p = subprocess.Popen(["bash", str(SB / "launch-node.sbatch"), *slow, "--seeds", "1", "--no-plots",
                              "--out", str(tmp_path / "res")], stdout=f, stderr=subprocess.STDOUT, env=env)
    try:
        end = time.monotonic() + 120
        while "op 1/9" not in log.read_text():
            assert p.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    text = log.read_text()
    assert rc == 143, text
    assert "SIGTERM: asking cluctl launch to stop" in text and "stopped (SIGTERM)" in text, text
    assert "job (no Slurm)" in text and "requeue" not in text, text
    assert not (tmp_path / "res").exists()


@pytest.fixture
def fake_cluctl(tmp_path):
    """A cluctl that records its arguments, one per line."""
    exe = tmp_path / "fake-cluctl"
    exe.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\nexit "${FAKE_RC:-0}"\n')
    exe.chmod(0o755)
    return exe


def run_wrapper(script, args, fake, tmp_path, **env):
    e = job_env(CLUCTL=fake, ARGS_FILE=tmp_path / "args", **env)
    p = subprocess.run(["bash", str(SB / script), *args], capture_output=True, text=True, env=e, timeout=30)
    argv = (tmp_path / "args").read_text().splitlines() if (tmp_path / "args").exists() else None
    return p, argv


def test_node_wrapper_arguments(fake_cluctl, tmp_path):
    p, argv = run_wrapper("launch-node.sbatch", ["--seeds", "3"], fake_cluctl, tmp_path)
    assert p.returncode == 0 and argv == ["launch", "--gpus", "3", "--seeds", "3"], (p.stderr, argv)
    p, argv = run_wrapper("launch-node.sbatch", ["--seeds", "3"], fake_cluctl, tmp_path,
                          SLURM_GPUS_ON_NODE=2, CLUCTL_OUT="o")
    assert argv == ["launch", "--gpus", "2", "--out", "o", "--seeds", "3"], argv
    p, argv = run_wrapper("launch-node.sbatch", ["--seeds", "3"], fake_cluctl, tmp_path, CLUCTL_DEVICES="cpu")
    assert argv == ["launch", "--devices", "cpu", "--seeds", "3"], argv
    p, argv = run_wrapper("launch-node.sbatch", ["--devices=cuda:1", "--out", "x"], fake_cluctl, tmp_path,
                          CLUCTL_DEVICES="cpu", CLUCTL_OUT="o")
    assert argv == ["launch", "--devices=cuda:1", "--out", "x"], argv  # arguments win over the environment
    p, _ = run_wrapper("launch-node.sbatch", [], fake_cluctl, tmp_path, FAKE_RC=1)
    assert p.returncode == 1  # the job's exit status is launch's


def test_array_wrapper_arguments(fake_cluctl, tmp_path):
    p, argv = run_wrapper("launch-array.sbatch", ["--sequence", "A4"], fake_cluctl, tmp_path)
    assert p.returncode == 2 and argv is None
    assert p.stderr.strip().splitlines() == [
        "cluctl-sbatch: error: set CLUCTL_STORE (or pass --store) to a store every array task can reach"]
    p, argv = run_wrapper("launch-array.sbatch", ["--sequence", "A4", "--seeds", "5", "--out", "x"], fake_cluctl,
                          tmp_path, CLUCTL_STORE="st", SLURM_ARRAY_TASK_ID=4, SLURM_JOB_ID=77)
    assert p.returncode == 0, p.stderr
    assert argv[:6] == ["launch", "--gpus", "1", "--sequence", "A4", "--seeds"]
    task_out = argv[argv.index("--out", 8) + 1]
    assert argv[-5:] == ["--no-plots", "--out", task_out, "--seed-list", "4"], argv
    assert "cluctl-task-77" in task_out and not Path(task_out).exists(), "the task's out dir is removed"
    p, argv = run_wrapper("aggregate.sbatch", ["--sequence", "A4", "--seed-list", "0,1"], fake_cluctl, tmp_path,
                          CLUCTL_STORE="st", CLUCTL_OUT="o", CLUCTL_DEVICES="cpu")
    assert argv == ["launch", "--aggregate-only", "--out", "o", "--sequence", "A4", "--seed-list", "0,1"], argv


def test_submit_array_commands(tmp_path):
    """submit-array.sh against a fake sbatch: the array, then the dependent aggregate job."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text('#!/bin/bash\nprintf "%s " "$@" >> "$CALLS"; echo >> "$CALLS"\n'
                                   'n=$(wc -l < "$CALLS"); echo "$((100 + n));cluster"\n')
    (bindir / "sbatch").chmod(0o755)
    calls = tmp_path / "calls"
    env = job_env(CALLS=calls, PATH=f"{bindir}:{SBIN_PATH}", CLUCTL_STORE="st", SBATCH_ARRAY_INX="0-9")
    p = subprocess.run(["bash", str(SB / "submit-array.sh"), "-p", "gpu", "--array", "0-4:2,7%2", "--",
                        "--sequence", "A4"], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["101", "102"]
    first, second = calls.read_text().splitlines()
    assert first == f"--parsable -p gpu --array=0-4:2,7%2 {SB}/launch-array.sbatch --sequence A4 "
    assert second == (f"--parsable -p gpu --dependency=afterok:101 --kill-on-invalid-dep=yes "
                      f"{SB}/aggregate.sbatch --sequence A4 --seed-list 0,2,4,7 ")
    calls.unlink()
    p = subprocess.run(["bash", str(SB / "submit-array.sh"), "--sequence", "A4"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert p.returncode == 0 and "--array=0-9 " in calls.read_text() and "--seed-list 0,1,2,3,4,5,6,7,8,9 " in calls.read_text()
    calls.unlink()
    env.pop("SBATCH_ARRAY_INX")
    p = subprocess.run(["bash", str(SB / "submit-array.sh"), "--sequence", "A4"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert p.returncode == 0 and "--array=0-2 " in calls.read_text() and "--seed-list 0,1,2 " in calls.read_text()
    env.pop("CLUCTL_STORE")
    p = subprocess.run(["bash", str(SB / "submit-array.sh"), "--sequence", "A4"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert p.returncode == 2 and "set CLUCTL_STORE" in p.stderr
