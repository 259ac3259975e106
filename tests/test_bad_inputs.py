"""A bad-input matrix over every command: each malformed invocation gives exactly one line on
stderr, ``error: ...`` naming the problem, exit code 2, no traceback, and leaves the store
byte-identical (conftest.tree_hash before/after).

Every case runs in this process through ``cluctl.cli.main.main`` (the dataset cache is
cleared first, so each invocation reads its files afresh, as a new process would); a subset
also runs as real ``python -m cluctl.cli.main`` subprocesses, which also catches anything an
import prints on stderr. Related cases elsewhere (they count too, this file does not repeat
them): tests/test_cli.py (BAD, UNLEARN_BAD, pickle/garbage checkpoint, wrong architecture
width, flipped byte, malformed npz), tests/test_launch.py (bad launch values, --gpus,
--config), tests/test_memorization.py (bad score files), tests/test_data.py (npz/CIFAR files),
tests/test_purge_mia.py (purge errors).
"""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, TINY_FLAGS, run_cli, tree_hash

LAUNCH = ["launch", *TINY_FLAGS, "--threads", "1", "--devices", "cpu", "--no-plots", "-q"]


class Payload:
    """A pickle that runs a shell command when unpickled (it must never be)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------- fixtures
def _chattr_works(probe: Path) -> bool:
    """chattr +i makes even root unable to write (needs CAP_LINUX_IMMUTABLE and ext2/3/4, xfs...)."""
    if shutil.which("chattr") is None:
        return False
    probe.mkdir()
    try:
        if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
            return False
        try:
            (probe / "x").write_bytes(b"")
        except OSError:
            return True
        return False
    finally:
        subprocess.run(["chattr", "-R", "-i", str(probe)], capture_output=True)
        shutil.rmtree(probe, ignore_errors=True)


def _npz_dataset(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.random((120, 64)).astype(np.float32), y_train=np.arange(120) % 4,
             x_test=rng.random((40, 64)).astype(np.float32), y_test=np.arange(40) % 4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with a short digits lineage plus the bad things the matrix passes around."""
    from cluctl import api
    from cluctl.data import clear_cache
    from cluctl.store import Store, load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("bad")
    store = root / "store"
    marker = root / "PWNED"
    threads = torch.get_num_threads()
    try:
        ck0 = api.learn(0, store=store, threads=1, **TINY).id
        ck1 = api.learn(1, from_ref=ck0, store=store, threads=1).id
        # a checkpoint of another dataset (a user npz), whose file is then replaced
        other_npz = root / "other.npz"
        _npz_dataset(other_npz, 0)
        ck_other = api.learn(0, store=store, threads=1, dataset=f"npz:{other_npz}", model="mlp", width=16,
                             epochs=1, memories=8, learn_buffer_type="first", unlearn_buffer_type="same").id
        _npz_dataset(other_npz, 1)
    finally:
        torch.set_num_threads(threads)
        clear_cache()
    st = Store.open(store)
    pickle_oid = st.put_bytes(pickle.dumps(Payload(str(marker))))
    json_oid = st.put_json({"type": "results", "note": "JSON, not a checkpoint"})
    # a checkpoint whose config names another architecture than its tensors
    tensors, meta = load_checkpoint(st, ck1)
    meta = copy.deepcopy(meta)
    meta["config"].update(model="resnet18", width=4)
    meta.update(model="resnet18", width=4)
    other_arch = save_checkpoint(st, tensors, meta)
    # checkpoints whose manifests lie: an index beyond the dataset, a sample of another task
    tensors, good_meta = load_checkpoint(st, ck1)
    lying = {}
    for name in ("beyond", "other_task"):
        man = copy.deepcopy(st.get_json(good_meta["manifest"]))
        idx = man["buffers"]["0"]["learn"]["indices"]
        if name == "beyond":
            idx[0] = 5000  # digits has 1,350 training samples
        else:
            from cluctl.data import load_dataset

            y = load_dataset("digits").y_train
            y = y.cpu().numpy() if hasattr(y, "cpu") else np.asarray(y)
            task1 = set(good_meta["class_order"][2:4])
            idx[0] = int(next(i for i in range(len(y)) if int(y[i]) in task1 and i not in idx))
        m2 = copy.deepcopy(good_meta)
        m2["manifest"] = st.put_json(man)
        lying[name] = save_checkpoint(st, tensors, m2)
    st.set_ref("tags/one", ck1)
    # a checkpoint cut in half on disk (a crashed copy, a full disk)
    meta2 = copy.deepcopy(meta)
    meta2.update(model="mlp", width=32, note="to be truncated")
    meta2["config"].update(model="mlp", width=32)
    truncated = save_checkpoint(st, tensors, meta2)
    path = st.object_path(truncated)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:200])

    good = root / "good_ds.npz"
    _npz_dataset(good, 2)
    trunc_ds = root / "trunc_ds.npz"
    trunc_ds.write_bytes(good.read_bytes()[:300])
    scores = root / "scores.npz"
    np.savez(scores, tr_mem=np.zeros(1350))  # right length for digits
    trunc_scores = root / "trunc_scores.npz"
    trunc_scores.write_bytes(scores.read_bytes()[: len(scores.read_bytes()) // 2])
    short_scores = root / "short_scores.npz"
    np.savez(short_scores, tr_mem=np.zeros(10))
    objarr = root / "objarr.npz"
    np.savez(objarr, tr_mem=np.array([Payload(str(marker))], dtype=object))  # loading it needs pickle
    (root / "emptyres").mkdir()
    (root / "badres").mkdir()
    (root / "badres" / "summary.json").write_text("{not json")
    (root / "partres" / "seed-0").mkdir(parents=True)
    (root / "partres" / "summary.json").write_text('{"run": "x", "seeds": []}')
    (root / "partres" / "seed-0" / "test_acc.csv").write_text("garbage\n")
    # hostile launch config files
    (root / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (root / "nested.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "inf.toml").write_text("max-epochs = inf\n")
    (root / "true.toml").write_text("per_device = true\n")
    (root / "fifo.toml").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo.toml")
    return {
        "root": root, "store": store, "marker": marker, "chattr": _chattr_works(root / "probe"),
        "vals": {
            "lying_beyond": lying["beyond"], "lying_other_task": lying["other_task"],
            "ck0": ck0, "ck1": ck1, "ck1_6": ck1[:6], "ck_other": ck_other, "other_arch": other_arch, "truncated": truncated,
            "pickle": pickle_oid, "json": json_oid, "trunc_ds": str(trunc_ds), "scores": str(scores),
            "trunc_scores": str(trunc_scores), "short_scores": str(short_scores), "objarr": str(objarr),
            "emptyres": str(root / "emptyres"), "badres": str(root / "badres"),
            "partres": str(root / "partres"), "nores": str(root / "no-such-results"),
            "toml_binary": str(root / "binary.toml"), "toml_nested": str(root / "nested.toml"),
            "toml_inf": str(root / "inf.toml"), "toml_true": str(root / "true.toml"), "toml_fifo": str(root / "fifo.toml"),
        },
    }


# ---------------------------------------------------------------------------- the matrix
# (id, args, words the error line must contain (case-insensitive), store kind)
# store kinds: main = the shared store; empty = a fresh empty directory; ro-file = a copy whose
# tmp/ is a regular file (every write fails); ro-immutable = a copy made immutable (chattr +i).
CASES = [
    # learn
    ("learn-task-out-of-range", ["learn", "--task", "5", *TINY_FLAGS], ["task 5", "out of range"], "main"),
    ("learn-task-not-an-int", ["learn", "--task", "one", *TINY_FLAGS], ["--task", "integer"], "main"),
    ("learn-unknown-option", ["learn", "--task", "0", "--bogus"], ["--bogus"], "main"),
    ("learn-from-pickle", ["learn", "--task", "2", "--from", "{pickle}"], ["{pickle}", "not a cluctl checkpoint"], "main"),
    ("learn-from-other-dataset", ["learn", "--task", "1", "--from", "{ck_other}"], ["different copy", "npz"], "main"),
    ("learn-from-ck-change-dataset", ["learn", "--task", "2", "--from", "{ck1}", "--dataset", "cifar10"],
     ["cannot change --dataset"], "main"),
    ("learn-from-other-arch", ["learn", "--task", "2", "--from", "{other_arch}"], ["does not fit model resnet18"], "main"),
    ("learn-from-a-file-path", ["learn", "--task", "1", "--from", "{scores}"], ["no ref or object named", "scores.npz"], "main"),
    ("learn-from-manifest-beyond-dataset", ["learn", "--task", "2", "--from", "{lying_beyond}"],
     ["manifest", "sample 5000", "1350"], "main"),
    ("learn-from-manifest-other-task", ["learn", "--task", "2", "--from", "{lying_other_task}"],
     ["manifest", "other tasks"], "main"),
    ("learn-from-truncated-checkpoint", ["learn", "--task", "2", "--from", "{truncated}"], ["{truncated}", "corrupt"], "main"),
    ("learn-split-1.5", ["learn", "--task", "0", *TINY_FLAGS, "--learn-buffer-split", "1.5"],
     ["--learn-buffer-split", "1.5"], "main"),
    ("learn-threads-negative", ["learn", "--task", "0", *TINY_FLAGS, "--threads", "-1"], ["--threads", "-1"], "main"),
    ("learn-precision-bf16-cpu", ["learn", "--task", "0", *TINY_FLAGS, "--precision", "bf16", "--device", "cpu"],
     ["--precision bf16", "CUDA"], "main"),
    ("learn-from-precision-bf16-cpu", ["learn", "--task", "2", "--from", "{ck1}", "--precision", "bf16",
                                       "--device", "cpu"], ["--precision bf16", "CUDA"], "main"),
    ("learn-precision-fp16", ["learn", "--task", "0", *TINY_FLAGS, "--precision", "fp16"], ["--precision", "fp16"], "main"),
    ("learn-threads-zero", ["learn", "--task", "0", *TINY_FLAGS, "--threads", "0"], ["--threads"], "main"),
    ("learn-threads-100000", ["learn", "--task", "0", *TINY_FLAGS, "--threads", "100000"], ["--threads 100000", "per core"],
     "main"),
    ("learn-seed-beyond-64-bits", ["learn", "--task", "0", *TINY_FLAGS, "--seed", str(2**64)], ["--seed", "at most"], "main"),
    ("learn-tasks-0", ["learn", "--task", "0", *TINY_FLAGS, "--tasks", "0"], ["--tasks", "positive integer"], "main"),
    ("learn-seed-negative", ["learn", "--task", "0", *TINY_FLAGS, "--seed", "-1"], ["--seed", ">= 0"], "main"),
    ("learn-mem-scores-unknown", ["learn", "--task", "0", *TINY_FLAGS, "--seed", "3", "--learn-buffer-type", "most",
                                  "--mem-scores", "nosuchscores"], ["nosuchscores"], "main"),
    ("learn-tag-dotdot", ["learn", "--task", "0", *TINY_FLAGS, "--tag", "../escape"], ["../escape"], "main"),
    ("learn-tag-too-long", ["learn", "--task", "0", *TINY_FLAGS, "--tag", "t" * 300], ["tags/ttt"], "main"),
    ("learn-tag-conflicts", ["learn", "--task", "0", *TINY_FLAGS, "--tag", "one/sub"], ["conflicts", "tags/one"], "main"),
    ("unlearn-tag-conflicts", ["unlearn", "--task", "0", "--from", "{ck1}", "--tag", "one/sub"], ["conflicts"], "main"),
    ("learn-npz-truncated", ["learn", "--task", "0", "--dataset", "npz:{trunc_ds}", "--model", "mlp"],
     ["trunc_ds.npz", "truncated"], "main"),
    ("learn-ro-tmpfile", ["learn", "--task", "2", "--from", "{ck1}"], ["cannot write", "store"], "ro-file"),
    ("learn-ro-immutable", ["learn", "--task", "2", "--from", "{ck1}"], ["read-only"], "ro-immutable"),
    # unlearn
    ("unlearn-alpha-2", ["unlearn", "--task", "1", "--from", "{ck1}", "--algo", "neggrad", "--alpha", "2"],
     ["--alpha", "[0, 1]"], "main"),
    ("unlearn-salun-0", ["unlearn", "--task", "1", "--from", "{ck1}", "--salun-strength", "0"], ["--salun-strength"], "main"),
    ("unlearn-precision-bf16-cpu", ["unlearn", "--task", "1", "--from", "{ck1}", "--precision", "bf16",
                                    "--device", "cpu"], ["--precision bf16", "CUDA"], "main"),
    ("unlearn-task-out-of-range", ["unlearn", "--task", "9", "--from", "{ck1}"], ["task 9", "out of range"], "main"),
    ("unlearn-task-not-learned", ["unlearn", "--task", "4", "--from", "tags/one"], ["task 4", "not learned"], "main"),
    ("unlearn-from-pickle", ["unlearn", "--task", "1", "--from", "{pickle}"], ["not a cluctl checkpoint"], "main"),
    ("unlearn-from-dotdot", ["unlearn", "--task", "1", "--from", "tags/../../VERSION"], ["tags/../../VERSION"], "main"),
    ("unlearn-missing-from", ["unlearn", "--task", "1"], ["--from"], "main"),
    ("unlearn-threads-negative", ["unlearn", "--task", "1", "--from", "{ck1}", "--threads", "-2"], ["--threads"], "main"),
    ("unlearn-ro-immutable", ["unlearn", "--task", "1", "--from", "{ck1}"], ["read-only"], "ro-immutable"),
    # evaluate
    ("evaluate-pickle", ["evaluate", "{pickle}"], ["{pickle}", "not a cluctl checkpoint"], "main"),
    ("evaluate-json-object", ["evaluate", "{json}"], ["not a cluctl checkpoint"], "main"),
    ("evaluate-short-prefix", ["evaluate", "{ck1_6}"], ["{ck1_6}", "8 hex digits"], "main"),
    ("evaluate-refs-dotdot", ["evaluate", "refs/../VERSION"], ["refs/../VERSION"], "main"),
    ("evaluate-truncated-checkpoint", ["evaluate", "{truncated}"], ["{truncated}", "corrupt"], "main"),
    ("evaluate-other-dataset", ["evaluate", "{ck_other}"], ["different copy"], "main"),
    ("evaluate-other-arch", ["evaluate", "{other_arch}", "--json"], ["does not fit"], "main"),
    ("evaluate-empty-store", ["evaluate", "x"], ["no cluctl store"], "empty"),
    ("evaluate-metrics-checkpoint", ["evaluate", "{ck1}", "--metrics"], ["--metrics"], "main"),
    ("evaluate-metrics-bad-summary", ["evaluate", "{badres}", "--metrics"], ["summary.json"], "main"),
    ("evaluate-metrics-partial-folder", ["evaluate", "{partres}", "--metrics"], ["partres", "test_acc.csv"], "main"),
    # mia
    ("mia-task-out-of-range", ["mia", "{ck1}", "--task", "9"], ["task 9"], "main"),
    ("mia-members-bad", ["mia", "{ck1}", "--task", "0", "--members", "everything"], ["--members", "everything"], "main"),
    ("mia-attack-bad", ["mia", "{ck1}", "--task", "0", "--attack", "foo"], ["--attack", "foo"], "main"),
    ("mia-pickle", ["mia", "{pickle}", "--task", "0"], ["not a cluctl checkpoint"], "main"),
    ("mia-efficacy-nothing-retained", ["mia", "{ck0}", "--task", "0", "--attack", "efficacy"],
     ["at least one other learned task"], "main"),
    ("mia-empty-store", ["mia", "x", "--task", "0"], ["no cluctl store"], "empty"),
    # plot
    ("plot-missing-folder", ["plot", "{nores}"], ["no-such-results", "not a results folder"], "main"),
    ("plot-empty-folder", ["plot", "{emptyres}"], ["summary.json"], "main"),
    ("plot-bad-summary", ["plot", "{badres}"], ["summary.json", "not valid json"], "main"),
    ("plot-partial-folder", ["plot", "{partres}"], ["test_acc.csv"], "main"),
    ("plot-format-bmp", ["plot", "{emptyres}", "--format", "bmp"], ["bmp"], "main"),
    ("plot-dpi-0", ["plot", "{emptyres}", "--dpi", "0"], ["--dpi"], "main"),
    # launch
    ("launch-seq-L0-U3", [*LAUNCH, "--sequence", "L0 U3"], ["U3", "not learned"], "main"),
    ("launch-seq-X1", [*LAUNCH, "--sequence", "X1"], ["X1", "malformed"], "main"),
    ("launch-seq-L0-dash", [*LAUNCH, "--sequence", "L0-"], ["L0-", "malformed"], "main"),
    ("launch-seq-U0", [*LAUNCH, "--sequence", "U0"], ["U0", "not learned"], "main"),
    ("launch-precision-bf16-cpu", [*LAUNCH, "--precision", "bf16"], ["--precision bf16", "--devices includes cpu"],
     "main"),
    ("launch-per-device-0", [*LAUNCH, "--per-device", "0"], ["--per-device"], "main"),
    ("launch-gpus-3-without-gpus", ["launch", *TINY_FLAGS, "--gpus", "3", "--no-plots"], ["--gpus 3", "visible"], "main"),
    ("launch-threads-negative", [*LAUNCH, "--threads", "-2"], ["--threads", "-2"], "main"),
    ("launch-alpha-2", [*LAUNCH, "--alpha", "2"], ["--alpha"], "main"),
    ("launch-salun-0", [*LAUNCH, "--salun-strength", "0"], ["--salun-strength"], "main"),
    ("launch-split-1.5", [*LAUNCH, "--unlearn-buffer-split", "1.5"], ["--unlearn-buffer-split"], "main"),
    ("launch-name-dotdot", [*LAUNCH, "--name", "../x"], ["../x"], "main"),
    ("launch-resume-unknown", [*LAUNCH, "--resume", "nosuchrun"], ["nosuchrun"], "main"),
    ("launch-seed-list-bad", [*LAUNCH, "--seed-list", "1,x"], ["--seed-list"], "main"),
    ("launch-config-missing", [*LAUNCH, "--config", "{nores}/x.toml"], ["x.toml"], "main"),
    ("launch-config-binary", [*LAUNCH, "--config", "{toml_binary}"], ["binary.toml", "not valid toml"], "main"),
    ("launch-config-nested", [*LAUNCH, "--config", "{toml_nested}"], ["nested.toml"], "main"),
    ("launch-config-inf-for-int", [*LAUNCH, "--config", "{toml_inf}"], ["--max-epochs", "inf"], "main"),
    ("launch-config-true-for-int", [*LAUNCH, "--config", "{toml_true}"], ["--per-device", "true"], "main"),
    ("launch-config-fifo", [*LAUNCH, "--config", "{toml_fifo}"], ["fifo.toml", "not a toml file"], "main"),
    ("launch-sequence-empty", [*LAUNCH, "--sequence", ""], ["--sequence", "empty"], "main"),
    ("launch-tasks-0", [*LAUNCH, "--tasks", "0"], ["--tasks"], "main"),
    ("launch-seed-list-beyond-64-bits", [*LAUNCH, "--seed-list", str(2**64)], ["--seed-list", "64 bits"], "main"),
    ("launch-threads-100000", [*LAUNCH, "--threads", "100000"], ["--threads 100000"], "main"),
    ("launch-npz-truncated", [*LAUNCH, "--dataset", "npz:{trunc_ds}"], ["trunc_ds.npz", "truncated"], "main"),
    ("launch-ro-tmpfile", [*LAUNCH, "--sequence", "L0-1"], ["cannot write", "store"], "ro-file"),
    # store
    ("store-ls-empty-dir", ["store", "ls"], ["no cluctl store"], "empty"),
    ("store-log-empty-dir", ["store", "log", "x"], ["no cluctl store"], "empty"),
    ("store-verify-empty-dir", ["store", "verify"], ["no cluctl store"], "empty"),
    ("store-show-unknown", ["store", "show", "nosuch"], ["nosuch"], "main"),
    ("store-show-pickle", ["store", "show", "{pickle}"], ["neither a checkpoint nor json"], "main"),
    ("store-log-json", ["store", "log", "{json}"], ["not a checkpoint"], "main"),
    ("store-log-refs-dotdot", ["store", "log", "tags/../one"], ["tags/../one"], "main"),
    ("store-tag-dotdot", ["store", "tag", "../x", "{ck1}"], ["tags/../x", ".."], "main"),
    ("store-tag-nested-dotdot", ["store", "tag", "a/../../b", "{ck1}"], [".."], "main"),
    ("store-tag-unknown-target", ["store", "tag", "fine", "nosuch"], ["nosuch"], "main"),
    ("store-tag-missing-arg", ["store", "tag", "onlyname"], ["missing argument"], "main"),
    ("store-tag-ro-tmpfile", ["store", "tag", "fine", "{ck1}"], ["cannot write ref tags/fine"], "ro-file"),
    ("store-tag-ro-immutable", ["store", "tag", "fine", "{ck1}"], ["read-only"], "ro-immutable"),
    ("store-verify-erased-no-lineage", ["store", "verify", "--erased", "1"], ["--run RUN or --ref REF"], "main"),
    ("store-verify-erased-negative", ["store", "verify", "--erased", "-1", "--ref", "{ck1}"], ["task -1"], "main"),
    ("store-gc-grace-nan", ["store", "gc", "--grace", "nan"], ["--grace"], "main"),
    ("store-purge-no-lineage", ["store", "purge", "--task", "1"], ["--run RUN or --ref REF"], "main"),
    ("store-purge-task-out-of-range", ["store", "purge", "--task", "99", "--ref", "{ck1}"], ["task 99"], "main"),
    ("store-purge-run-dotdot", ["store", "purge", "--task", "1", "--run", "../x"], [".."], "main"),
    ("store-purge-unknown-run", ["store", "purge", "--task", "1", "--run", "nosuchrun"], ["nosuchrun"], "main"),
    ("store-purge-pickle-ref", ["store", "purge", "--task", "1", "--ref", "{pickle}"], ["no checkpoint"], "main"),
    # memorize
    ("memorize-import-truncated", ["memorize", "import", "{trunc_scores}"], ["trunc_scores.npz"], "main"),
    ("memorize-import-missing", ["memorize", "import", "{nores}/x.npz"], ["x.npz"], "main"),
    ("memorize-import-object-array", ["memorize", "import", "{objarr}"], ["objarr.npz", "not numeric"], "main"),
    ("memorize-import-wrong-length", ["memorize", "import", "{short_scores}"], ["10 scores", "1,350"], "main"),
    ("memorize-import-ro-tmpfile", ["memorize", "import", "{scores}"], ["cannot write"], "ro-file"),
    ("memorize-estimate-subset-1.5", ["memorize", "estimate", "--subset", "1.5"], ["--subset"], "main"),
    ("memorize-estimate-models-1", ["memorize", "estimate", "--models", "1"], ["--models"], "main"),
    ("memorize-estimate-method", ["memorize", "estimate", "--method", "magic"], ["magic"], "main"),
    ("memorize-estimate-workers-0", ["memorize", "estimate", "--workers", "0"], ["--per-device"], "main"),
    ("memorize-estimate-threads-negative", ["memorize", "estimate", "--models", "2", "--threads", "-1"], ["--threads"], "main"),
    ("memorize-estimate-cifar-missing", ["memorize", "estimate", "--dataset", "cifar100", "--data-root", "/nonexistent"],
     ["cifar-100", "/nonexistent"], "main"),
    ("memorize-estimate-npz-truncated", ["memorize", "estimate", "--dataset", "npz:{trunc_ds}"],
     ["trunc_ds.npz", "truncated"], "main"),
]

# run again as real subprocesses (one per command group; each costs a Python + torch start)
SUBPROCESS = {"learn-from-pickle", "evaluate-other-dataset", "plot-format-bmp", "launch-seq-L0-U3",
              "store-tag-dotdot", "store-ls-empty-dir", "memorize-import-truncated"}


def _fill(args, vals):
    return [str(a).format(**vals) if "{" in str(a) else str(a) for a in args]


def _prepare_store(world, kind, tmp_path):
    if kind == "main":
        return world["store"]
    if kind == "empty":
        d = tmp_path / "empty-store"
        d.mkdir()
        return d
    d = tmp_path / "store-copy"
    shutil.copytree(world["store"], d)
    if kind == "copy":
        return d
    if kind == "ro-file":
        shutil.rmtree(d / "tmp")
        (d / "tmp").write_text("a regular file where the store's tmp/ folder should be\n")
    elif kind == "ro-immutable":
        if not world["chattr"]:
            pytest.skip("chattr +i does not work here (needs CAP_LINUX_IMMUTABLE on ext4/xfs/...)")
        subprocess.run(["chattr", "-R", "+i", str(d)], check=True)
    return d


def _release(kind, store):
    if kind == "ro-immutable":
        subprocess.run(["chattr", "-R", "-i", str(store)], check=False)


def _in_process(args, store, capfd, monkeypatch):
    from cluctl.cli.main import main
    from cluctl.data import clear_cache
    import cluctl.devices

    monkeypatch.setenv("CLUCTL_STORE", str(store))
    monkeypatch.delenv("CLUCTL_FAULT", raising=False)
    monkeypatch.setenv("CLUCTL_DEBUG", "0")
    monkeypatch.setenv("CLUCTL_CPU_BF16", "0")  # as on a CPU without native bf16 (the *-bf16-cpu cases)
    monkeypatch.setattr(cluctl.devices, "visible_gpus", lambda: 0)
    clear_cache()
    threads = torch.get_num_threads()
    capfd.readouterr()
    try:
        with pytest.raises(SystemExit) as e:
            main(args)
    finally:
        torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    return e.value.code, out, err


def check_one_line_error(code, out, err, words, code_expected=2):
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert code == code_expected, f"exit {code}: {line}"
    for w in words:
        assert w.lower() in line.lower(), (w, line)
    return line


def _run_case(case_id, args, words, kind, world, tmp_path, runner):
    store = _prepare_store(world, kind, tmp_path)
    try:
        before = tree_hash(store)
        listing = sorted(os.listdir(store))
        code, out, err = runner(_fill(args, world["vals"]), store)
        words = _fill(words, world["vals"])
        check_one_line_error(code, out, err, words)
        assert tree_hash(store) == before, f"{case_id}: the store changed"
        assert sorted(os.listdir(store)) == listing
        assert not world["marker"].exists(), "a pickle payload ran"
    finally:
        _release(kind, store)


@pytest.mark.parametrize("case_id,args,words,kind", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, args, words, kind, world, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to ./results or ./plots would land here
    _run_case(case_id, args, words, kind, world, tmp_path,
              lambda a, store: _in_process(a, store, capfd, monkeypatch))
    assert not (tmp_path / "results").exists() and not (tmp_path / "plots").exists()


SUB_CASES = [c for c in CASES if c[0] in SUBPROCESS]


@pytest.mark.parametrize("case_id,args,words,kind", SUB_CASES, ids=[c[0] for c in SUB_CASES])
def test_bad_input_subprocess(case_id, args, words, kind, world, tmp_path):
    def runner(a, store):
        p = run_cli(a, store=store, env={"CUDA_VISIBLE_DEVICES": "", "CLUCTL_DEBUG": "0", "CLUCTL_CPU_BF16": "0"},
                    timeout=120)
        return p.returncode, p.stdout, p.stderr

    _run_case(case_id, args, words, kind, world, tmp_path, runner)


def test_launch_missing_data_root_is_bad_input(world, tmp_path):
    store = _prepare_store(world, "copy", tmp_path)  # a copy: the launch registers its run before failing
    before = tree_hash(store)
    p = run_cli([*LAUNCH, "--dataset", "cifar100", "--data-root", "/nonexistent", "--out", tmp_path / "res"],
                store=store, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    check_one_line_error(p.returncode, p.stdout, p.stderr, ["CIFAR-100", "/nonexistent"])
    assert tree_hash(store) == before


def test_matrix_size():
    """The issue asks for at least 30 malformed invocations across all commands."""
    commands = {c[1][0] if c[1][0] != "store" else "store " + c[1][1] for c in CASES}
    commands |= {"memorize " + c[1][1] for c in CASES if c[1][0] == "memorize"}
    assert len(CASES) >= 30
    for cmd in ("learn", "unlearn", "evaluate", "mia", "plot", "launch", "store ls", "store show", "store log",
                "store tag", "store verify", "store gc", "store purge", "memorize import", "memorize estimate"):
        assert cmd in commands, cmd
