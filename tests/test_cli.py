"""The CLI end to end in subprocesses, against a temp store: chaining and bad input."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import CLUCTL, TINY_FLAGS, run_cli, tree_hash


def _one_line_error(p, code=2, *words):
    assert p.returncode == code, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """learn 0, 1 one command at a time; returns (store, [ids])."""
    store = tmp_path_factory.mktemp("cli") / "store"
    p = run_cli(["learn", "--task", 0, "--quiet", *TINY_FLAGS], store=store, check=0)
    ids = [p.stdout.strip()]
    assert len(p.stdout.strip().splitlines()) == 1 and len(ids[0]) == 64
    p = run_cli(["learn", "--task", 1, "--from", ids[0][:10]], store=store, check=0)
    ids.append(p.stdout.strip())
    assert "learned task 1 (gem)" in p.stderr
    return store, ids


def test_chain_and_evaluate_json(chain):
    store, ids = chain
    p = run_cli(["evaluate", ids[1], "--json"], store=store, check=0)
    res = json.loads(p.stdout)
    assert [t["status"] for t in res["tasks"]] == ["learned", "learned", "unseen", "unseen", "unseen"]
    for t in res["tasks"]:
        assert {"task", "status", "test_acc", "test_conf", "train_acc", "train_conf"} <= set(t)
    assert res["tasks"][0]["test_acc"] > 0.9
    p = run_cli(["evaluate", ids[1], "--csv"], store=store, check=0)
    assert p.stdout.splitlines()[0].startswith("task,status,test_acc")
    assert len(p.stdout.splitlines()) == 6


def test_pipe_into_xargs(chain, tmp_path):
    store, ids = chain
    cmd = " ".join(CLUCTL)
    sh = (f"{cmd} learn --task 2 --from {ids[1]} -q | xargs {cmd} unlearn --task 2 --algo neggem -q --from "
          f"| xargs {cmd} evaluate --json")
    p = subprocess.run(sh, shell=True, capture_output=True, text=True,
                       env={**os.environ, "CLUCTL_STORE": str(store), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["tasks"][2]["status"] == "forgotten" and res["forgotten"] == [2]


def test_store_commands(chain):
    store, ids = chain
    p = run_cli(["store", "tag", "two", ids[1]], store=store, check=0)
    assert p.stdout.strip() == ids[1]
    p = run_cli(["store", "log", "tags/two"], store=store, check=0)
    lines = p.stdout.strip().splitlines()
    assert [ln.split()[1] for ln in lines] == ["L1", "L0", "init"]
    p = run_cli(["store", "show", "tags/two"], store=store, check=0)
    assert "learned     0 1" in p.stdout and "task 1: learn random x32, unlearn random x32" in p.stdout
    p = run_cli(["store", "ls", "--json"], store=store, check=0)
    refs = {r["ref"]: r for r in json.loads(p.stdout)}
    assert refs["tags/two"]["op"] == "L1"
    p = run_cli(["store", "verify"], store=store, check=0)


def test_help_has_examples():
    for cmd in (["learn"], ["unlearn"], ["evaluate"], ["store", "ls"], ["store", "show"], ["store", "log"],
                ["store", "tag"], ["store", "verify"], ["store", "gc"]):
        p = run_cli([*cmd, "--help"], check=0)
        assert "Example: cluctl" in p.stdout, cmd


BAD = [
    (["learn", "--task", 0, "--dataset", "mnist"], ["unknown dataset"]),
    (["learn", "--task", 7, *TINY_FLAGS], ["task 7", "out of range"]),
    # another seed: another initial checkpoint, which must not be written before the check
    (["learn", "--task", 7, "--seed", 5, *TINY_FLAGS], ["task 7", "out of range"]),
    (["learn", "--task", -1, *TINY_FLAGS], ["out of range"]),
    (["learn", "--task", "x"], ["--task"]),
    (["learn", "--task", 0, "--from", "deadbeefdeadbeef"], ["deadbeefdeadbeef"]),
    (["learn", "--task", 0, "--from", "tags/../x"], [".."]),
    (["learn", "--task", 0, "--algo", "ewc", *TINY_FLAGS], ["ewc", "naive, gem, agem"]),
    (["learn", "--task", 0, "--batch-size", 0, *TINY_FLAGS], ["--batch-size"]),
    (["learn", "--task", 0, "--lr", -1, *TINY_FLAGS], ["--lr"]),
    (["learn", "--task", 0, "--model", "vgg", *TINY_FLAGS[:2]], ["vgg"]),
    (["learn", "--task", 0, "--learn-buffer-type", "best", *TINY_FLAGS[:4]], ["best"]),
    (["learn", "--task", 0, "--dataset", "cifar100", "--data-root", "/nonexistent/dir"], ["cifar-100", "/nonexistent/dir"]),
    (["learn", "--task", 0, "--tasks", 3, *TINY_FLAGS], ["--tasks 3"]),
    (["learn", "--task", 0, "--device", "cuda:0", *TINY_FLAGS], ["cuda"]),
    (["learn", "--task", 0, "--tag", "a b", *TINY_FLAGS], ["a b"]),
    (["evaluate", "nosuchref"], ["nosuchref"]),
    (["evaluate", "x", "--json", "--csv"], ["mutually exclusive"]),
    (["store", "show", "12345678"], ["12345678"]),
    (["store", "gc", "--grace", -1], ["--grace"]),
]


@pytest.mark.parametrize("args,words", BAD, ids=[" ".join(map(str, a[:4])) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_store_unchanged(chain, args, words):
    store, ids = chain
    before = tree_hash(store)
    p = run_cli(args, store=store)
    _one_line_error(p, 2, *words)
    assert tree_hash(store) == before


NEW_STORE_BAD = [
    (["learn", "--task", 7, *TINY_FLAGS], {}, ["out of range"]),
    (["learn", "--task", 0, "--lr", -1, *TINY_FLAGS], {}, ["--lr"]),
    (["learn", "--task", 0, "--precision", "bf16", *TINY_FLAGS], {"CLUCTL_CPU_BF16": "0"}, ["bf16"]),
    (["launch", "--sequence", "L9", "--quiet", *TINY_FLAGS], {}, ["L9"]),
    (["launch", "--seeds", 0, "--lr", -1, "--quiet", *TINY_FLAGS], {}, ["--seeds"]),  # every value is checked before any work
    (["launch", "--precision", "bf16", "--quiet", *TINY_FLAGS], {"CLUCTL_CPU_BF16": "0"}, ["bf16"]),
]


@pytest.mark.parametrize("args,env,words", NEW_STORE_BAD, ids=[" ".join(map(str, a[:4])) for a, _, _ in NEW_STORE_BAD])
def test_failed_command_leaves_no_new_store(tmp_path, args, env, words):
    """A command that fails on bad input leaves no empty store (nor the parent directories
    its creation made) behind; a directory that was already there stays, empty."""
    store = tmp_path / "new" / "sub" / "store"
    p = run_cli([*args, "--store", store], env=env, timeout=120)
    _one_line_error(p, 2, *words)
    assert not (tmp_path / "new").exists(), sorted(map(str, (tmp_path / "new").rglob("*")))
    store.mkdir(parents=True)
    p = run_cli([*args, "--store", store], env=env, timeout=120)
    _one_line_error(p, 2, *words)
    assert store.is_dir() and list(store.iterdir()) == []


def test_failed_command_in_debug_mode_leaves_no_new_store(tmp_path):
    store = tmp_path / "new" / "store"
    p = run_cli(["learn", "--task", 7, *TINY_FLAGS, "--store", store], env={"CLUCTL_DEBUG": "1"}, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr and "out of range" in p.stderr
    assert not (tmp_path / "new").exists()


def test_successful_command_keeps_its_new_store(tmp_path):
    store = tmp_path / "a" / "store"
    p = run_cli(["learn", "--task", 0, "--quiet", *TINY_FLAGS, "--store", store], check=0)
    assert (store / "VERSION").is_file()
    assert run_cli(["store", "ls"], store=store, check=0).stdout.count("checkpoints/") == 2
    assert len(p.stdout.strip()) == 64


UNLEARN_BAD = [
    (["--algo", "forgetit"], ["forgetit", "neggem, negagem, rl-gem, rl-agem, alt-neggem, neggrad"]),
    (["--salun-strength", "0"], ["--salun-strength", "(0, 1]"]),
    (["--salun-strength", "1.5"], ["--salun-strength"]),
    (["--alpha", "1.2"], ["--alpha", "[0, 1]"]),
    (["--alpha", "-0.1"], ["--alpha"]),
    (["--unlearn-batch-size", "0"], ["--unlearn-batch-size"]),
    (["--unlearn-batch-size", "-3"], ["--unlearn-batch-size"]),
    (["--salun-on", "weights"], ["--salun-on"]),
    (["--max-epochs", "0"], ["--max-epochs"]),
    (["--stop-acc", "2"], ["--stop-acc"]),
]


@pytest.mark.parametrize("extra,words", UNLEARN_BAD, ids=[" ".join(e) for e, _ in UNLEARN_BAD])
def test_unlearn_bad_options(chain, extra, words):
    store, ids = chain
    before = tree_hash(store)
    p = run_cli(["unlearn", "--task", 1, "--from", ids[1], *extra], store=store)
    _one_line_error(p, 2, *words)
    assert tree_hash(store) == before


def test_unlearn_task_not_learned(chain):
    store, ids = chain
    before = tree_hash(store)
    p = run_cli(["unlearn", "--task", 3, "--from", ids[1]], store=store)
    _one_line_error(p, 2, "task 3 is not learned")
    assert tree_hash(store) == before


def test_algo_names_case_insensitive(chain):
    store, ids = chain
    p = run_cli(["unlearn", "--task", 1, "--from", ids[1], "--algo", "RL-GEM", "-q"], store=store, check=0)
    p = run_cli(["store", "show", p.stdout.strip(), "--json"], store=store, check=0)
    assert json.loads(p.stdout)["meta"]["config"]["algo"] == "rl-gem"


def test_change_model_on_from_is_refused(chain):
    store, ids = chain
    before = tree_hash(store)
    p = run_cli(["learn", "--task", 2, "--from", ids[1], "--model", "resnet18"], store=store)
    _one_line_error(p, 2, "cannot change --model")
    assert tree_hash(store) == before


def test_wrong_architecture_checkpoint(chain, tmp_path):
    """A checkpoint whose tensors do not fit the architecture its config names."""
    from cluctl.store import Store, load_checkpoint, save_checkpoint

    store, ids = chain
    st = Store.open(store)
    tensors, meta = load_checkpoint(st, ids[1])
    meta["config"]["width"] = 64
    meta["width"] = 64
    bad = save_checkpoint(st, tensors, meta)
    before = tree_hash(store)
    p = run_cli(["learn", "--task", 2, "--from", bad], store=store)
    _one_line_error(p, 2, "does not fit model mlp width 64")
    p = run_cli(["evaluate", bad], store=store)
    _one_line_error(p, 2, "does not fit")
    assert tree_hash(store) == before


def test_pickle_or_garbage_as_checkpoint(chain, tmp_path):
    from cluctl.store import Store

    store, ids = chain
    st = Store.open(store)

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    oid = st.put_bytes(pickle.dumps(Boom()))
    junk = st.put_json({"type": "manifest", "buffers": {}})
    before = tree_hash(store)
    for ref in (oid, junk):
        p = run_cli(["learn", "--task", 2, "--from", ref], store=store)
        _one_line_error(p, 2, "not a cluctl checkpoint")
    assert not (tmp_path / "pwned").exists()
    assert tree_hash(store) == before


def test_flipped_byte_is_detected_on_read(tmp_path):
    store = tmp_path / "s"
    p = run_cli(["learn", "--task", 0, "-q", *TINY_FLAGS], store=store, check=0)
    oid = p.stdout.strip()
    path = store / "objects" / oid[:2] / oid[2:]
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    p = run_cli(["evaluate", oid], store=store)
    line = _one_line_error(p, 2, oid[:12])
    assert "corrupt" in line


def test_malformed_npz(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((10, 4)), y_train=np.zeros(10))  # no test arrays
    store = tmp_path / "s"
    p = run_cli(["learn", "--task", 0, "--dataset", f"npz:{bad}", "--model", "mlp"], store=store)
    _one_line_error(p, 2, "x_test")
    trunc = tmp_path / "trunc.npz"
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(good, x_train=rng.random((40, 6)), y_train=np.arange(40) % 4, x_test=rng.random((8, 6)),
             y_test=np.arange(8) % 4)
    trunc.write_bytes(good.read_bytes()[:200])
    p = run_cli(["learn", "--task", 0, "--dataset", f"npz:{trunc}", "--model", "mlp"], store=store)
    _one_line_error(p, 2, "trunc.npz")
    # and a good user npz works: 4 classes -> 2 tasks of 2
    p = run_cli(["learn", "--task", 1, "--dataset", f"npz:{good}", "--model", "mlp", "--memories", "8",
                 "--learn-buffer-type", "random", "--unlearn-buffer-type", "same", "-q"], store=store, check=0)


def test_internal_error_is_one_line_exit_1(tmp_path, monkeypatch):
    # Make the store path a file: Store.open fails with a StoreError (exit 2, not a traceback)
    f = tmp_path / "file"
    f.write_text("x")
    p = run_cli(["learn", "--task", 0, *TINY_FLAGS], store=f)
    _one_line_error(p, 2)
