"""Hostile store contents and inputs (issue 16): refs and objects that are symlinks to
/dev/zero, FIFOs or directories; deeply nested or lying metadata; a tmp/ symlinked to a
user's folder; tag names too long or clashing; npz values that cannot be normalised. Each
is one line on stderr and exit 2 (or a verify problem, exit 1), never a hang, a
MemoryError or a traceback, and the store is left as it was."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cluctl.store import Store, load_checkpoint, read_checkpoint_meta, save_checkpoint
from conftest import tree_hash

OLD = time.time() - 10 * 24 * 3600


@pytest.fixture(autouse=True)
def _alarm():
    """Nothing here may hang: fail after 60 s instead."""
    def boom(*_):
        raise TimeoutError("hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def cli(args, store, capfd, monkeypatch):
    """Run the CLI in this process; (exit code, stdout, stderr)."""
    from cluctl.cli.main import main

    monkeypatch.setenv("CLUCTL_STORE", str(store))
    monkeypatch.delenv("CLUCTL_FAULT", raising=False)
    monkeypatch.setenv("CLUCTL_DEBUG", "0")
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return e.value.code, out, err


def one_line_error(code, err, *words):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert code == 2, (code, err)
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


@pytest.fixture
def st(tmp_path) -> Store:
    s = Store.open(tmp_path / "store")
    meta = {"type": "checkpoint", "format": 1, "op": "L0", "parent": None, "root": None, "manifest": None,
            "learned": [0], "forgotten": [], "n_tasks": 5, "width": 4, "seed": 0, "class_order": list(range(10)),
            "history": ["L0"]}
    ck = save_checkpoint(s, {"w": torch.ones(3)}, meta)
    s.set_ref("tags/good", ck)
    s.good = ck  # type: ignore[attr-defined]
    return s


def _hostile_paths(st: Store, tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    return {"zero": Path("/dev/zero"), "fifo": fifo, "dir": tmp_path}


# ---------------------------------------------------------------------- refs and objects
@pytest.mark.parametrize("kind", ["zero", "fifo", "dir"])
def test_ref_that_is_not_a_regular_file(st, tmp_path, capfd, monkeypatch, kind):
    target = _hostile_paths(st, tmp_path)[kind]
    (st.root / "refs" / "tags" / "evil").symlink_to(target)
    before = tree_hash(st.root) if kind != "zero" else None
    for args in (["store", "show", "tags/evil"], ["store", "log", "tags/evil"], ["store", "ls"],
                 ["store", "gc", "--grace", "0"], ["store", "tag", "copy", "tags/evil"]):
        code, out, err = cli(args, st.root, capfd, monkeypatch)
        if kind == "dir" and args[1] in ("show", "log", "tag"):  # a directory is no ref at all
            one_line_error(code, err, "tags/evil")
        elif kind == "dir":
            assert code == 0 and "Traceback" not in err, (args, err)
        else:
            one_line_error(code, err, "tags/evil")
    code, out, err = cli(["store", "verify"], st.root, capfd, monkeypatch)
    assert "Traceback" not in err
    if kind != "dir":
        assert code == 1 and "corrupt-ref: " in out and "tags/evil" in out
    assert st.has_object(st.good)  # gc deleted nothing
    if before is not None:
        assert tree_hash(st.root) == before


@pytest.mark.parametrize("kind", ["zero", "fifo", "dir"])
def test_object_that_is_not_a_regular_file(st, tmp_path, capfd, monkeypatch, kind):
    target = _hostile_paths(st, tmp_path)[kind]
    path = st.object_path(st.good)
    os.chmod(path, 0o644)
    os.unlink(path)
    path.symlink_to(target)
    for args in (["store", "show", "tags/good"], ["store", "log", "tags/good"], ["store", "gc", "--grace", "0"],
                 ["learn", "--task", "1", "--from", "tags/good"], ["evaluate", "tags/good"]):
        code, out, err = cli(args, st.root, capfd, monkeypatch)
        one_line_error(code, err, st.good[:12] if args[0] != "store" or args[1] != "gc" else "")
    code, out, err = cli(["store", "verify"], st.root, capfd, monkeypatch)
    assert code == 1 and "Traceback" not in err and f"unreadable-object: object {st.good}" in out
    assert path.is_symlink()  # gc left it alone


def test_deeply_nested_json_does_not_stop_verify(st, capfd, monkeypatch):
    deep = b'{"type":"results","x":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    oid = st.put_bytes(deep)
    st.set_ref("tags/deep", oid)
    import safetensors.torch

    nested_meta = "[" * 100_000 + "]" * 100_000
    ck = st.put_bytes(safetensors.torch.save({"w": torch.ones(1)}, metadata={"cluctl": nested_meta}))
    code, out, err = cli(["store", "verify"], st.root, capfd, monkeypatch)
    assert code == 0 and "Traceback" not in err, (out, err)
    code, out, err = cli(["store", "show", oid], st.root, capfd, monkeypatch)
    one_line_error(code, err, oid[:12])
    code, out, err = cli(["store", "show", ck], st.root, capfd, monkeypatch)
    one_line_error(code, err, ck[:12])
    assert st.gc(grace_s=0).removed == [ck]


def _raw_checkpoint(st: Store, meta: dict) -> str:
    """A checkpoint written around save_checkpoint's checks (as a hostile file would be)."""
    import safetensors.torch

    return st.put_bytes(safetensors.torch.save({"w": torch.ones(3)},
                                               metadata={"cluctl": json.dumps(meta, sort_keys=True)}))


LIES = {
    "learned-out-of-range": {"learned": [7]},
    "learned-not-a-list": {"learned": "0,1"},
    "learned-bool": {"learned": [True]},
    "width-1e9": {"width": 10**9},
    "config-width-1e9": {"config": {"width": 10**9}},
    "n-tasks-string": {"n_tasks": "5"},
    "parent-not-an-id": {"parent": "../../etc/passwd"},
    "seed-huge": {"seed": 2**70},
    "class-order-floats": {"class_order": [0.5, 1]},
}


@pytest.mark.parametrize("lie", list(LIES))
def test_lying_checkpoint_metadata_is_refused_on_read(st, capfd, monkeypatch, lie):
    meta = copy.deepcopy(read_checkpoint_meta(st, st.good))
    meta.update(LIES[lie])
    ck = _raw_checkpoint(st, meta)
    before = tree_hash(st.root)
    for args in (["learn", "--task", "1", "--from", ck], ["evaluate", ck], ["unlearn", "--task", "0", "--from", ck]):
        code, out, err = cli(args, st.root, capfd, monkeypatch)
        one_line_error(code, err, ck, "invalid metadata")
    assert tree_hash(st.root) == before
    assert ("bad-metadata", ck) in {(p.kind, p.object) for p in st.verify()}


@pytest.mark.parametrize("bad", [-1, 10**12, "a", 1.5])
def test_manifest_with_bad_indices_is_refused_on_read(st, capfd, monkeypatch, bad):
    man = st.put_json({"type": "manifest", "buffers": {"0": {"learn": {"type": "random", "indices": [1, bad]},
                                                             "unlearn": {"type": "random", "indices": [1]}}},
                       "scores": None})
    meta = dict(read_checkpoint_meta(st, st.good), manifest=man)
    ck = save_checkpoint(st, {"w": torch.ones(3)}, meta)
    with pytest.raises(Exception) as ei:
        load_checkpoint(st, ck)
    assert getattr(ei.value, "exit_code", None) == 2 and man in str(ei.value)
    code, out, err = cli(["learn", "--task", "1", "--from", ck], st.root, capfd, monkeypatch)
    one_line_error(code, err, man, "buffer learn of task 0")
    assert ("bad-manifest", man) in {(p.kind, p.object) for p in st.verify()}


# ---------------------------------------------------------------------- tmp/ symlinked elsewhere
def test_tmp_symlinked_to_a_user_folder_is_never_followed(st, tmp_path, capfd, monkeypatch):
    user = tmp_path / "my-files"
    user.mkdir()
    names = ["thesis.tex", "notes.1.ab.tmp", f"{st._host}.1.abcdef.tmp", "x.y", "build.99999.ff.tmp"]
    for n in names:
        (user / n).write_text("mine")
        os.utime(user / n, (OLD, OLD))
    import shutil

    shutil.rmtree(st.root / "tmp")
    (st.root / "tmp").symlink_to(user)
    before = tree_hash(st.root)
    code, out, err = cli(["store", "verify"], st.root, capfd, monkeypatch)
    assert code == 1 and "bad-layout" in out and "symbolic link" in out
    for args in (["store", "tag", "other", "tags/good"], ["store", "gc", "--grace", "0"]):
        code, out, err = cli(args, st.root, capfd, monkeypatch)
        one_line_error(code, err, "symbolic link")
    assert st.clean_temp(max_age_s=0) == []
    assert sorted(os.listdir(user)) == sorted(names)  # nothing of the user's was deleted
    assert tree_hash(st.root) == before


def test_clean_temp_deletes_only_cluctl_temp_names(st):
    tmp = st.root / "tmp"
    keep = ["README", "a.b", "host.12.notahex.tmp", "host.x.ab.tmp", "host.1.ab.tmp.bak"]
    gone = ["elsewhere.123.abcdef.tmp"]
    for n in keep + gone:
        (tmp / n).write_text("x")
        os.utime(tmp / n, (OLD, OLD))
    (tmp / "subdir.1.ab.tmp").mkdir()
    os.utime(tmp / "subdir.1.ab.tmp", (OLD, OLD))
    removed = st.clean_temp(max_age_s=0)
    assert sorted(p.name for p in removed) == gone
    assert sorted(os.listdir(tmp)) == sorted(keep + ["subdir.1.ab.tmp"])


# ---------------------------------------------------------------------- tag names
def test_tag_name_checks_before_any_work(st, capfd, monkeypatch):
    long = "x" * 300
    st.set_ref("tags/team/a", st.good)
    cases = [(long, "characters long"), ("good/sub", "conflicts with the existing ref tags/good"),
             ("team", "conflicts with existing refs under tags/team/")]
    for name, words in cases:
        with pytest.raises(Exception) as ei:
            st.check_tag_name(name)
        assert getattr(ei.value, "exit_code", None) == 2 and words in str(ei.value)
        before = tree_hash(st.root)
        code, out, err = cli(["store", "tag", name, "tags/good"], st.root, capfd, monkeypatch)
        one_line_error(code, err, words)
        assert tree_hash(st.root) == before
    assert st.check_tag_name("good") == "tags/good"  # moving an existing tag is fine


def test_failed_store_tag_leaves_no_empty_refs_tags(tmp_path, capfd, monkeypatch):
    s = Store.open(tmp_path / "store")
    oid = s.put_bytes(b"something")
    before = tree_hash(s.root)
    for name in ("y" * 250, "a/" + "b" * 230):  # each part within the OS's 255 bytes: refused by cluctl
        code, out, err = cli(["store", "tag", name, oid], s.root, capfd, monkeypatch)
        one_line_error(code, err)
        assert not (s.root / "refs" / "tags").exists()
        assert tree_hash(s.root) == before
    # a write that fails at the OS (here: ENAMETOOLONG from a monkeypatched replace)
    real = os.replace

    def too_long(src, dst, *a, **k):
        if "/refs/" in str(dst):
            raise OSError(36, "File name too long", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", too_long)
    code, out, err = cli(["store", "tag", "deep/er/name", oid], s.root, capfd, monkeypatch)
    one_line_error(code, err, "tags/deep/er/name")
    assert not (s.root / "refs" / "tags").exists()
    assert tree_hash(s.root) == before


# ---------------------------------------------------------------------- npz inputs
def _npz(path: Path, x_train=None, y_train=None) -> Path:
    rng = np.random.default_rng(0)
    x = rng.random((40, 16)).astype(np.float32) if x_train is None else x_train
    y = np.arange(40) % 4 if y_train is None else y_train
    np.savez(path, x_train=x, y_train=y, x_test=rng.random((8, 16)).astype(np.float32), y_test=np.arange(8) % 4)
    return path


def test_npz_values_near_1e30_are_refused(tmp_path):
    from cluctl.data.npz import read_npz
    from cluctl.errors import UsageError

    x = np.random.default_rng(1).random((40, 16)).astype(np.float32) * np.float32(1e30)
    with pytest.raises(UsageError) as ei:
        read_npz(_npz(tmp_path / "big.npz", x_train=x))
    assert "x_train" in str(ei.value) and "normalise" in str(ei.value)


def test_npz_label_2_pow_40_is_refused_without_allocating(tmp_path):
    from cluctl.data.npz import read_npz
    from cluctl.errors import UsageError

    y = np.arange(40) % 4
    y[3] = 2**40
    with pytest.raises(UsageError) as ei:
        read_npz(_npz(tmp_path / "label.npz", y_train=y))
    assert str(2**40) in str(ei.value) and "y_train" in str(ei.value)
