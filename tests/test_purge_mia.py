"""Erasure (store purge / verify --erased) and membership inference on real checkpoints."""

import json

import pytest

from cluctl import api
from cluctl.store import Store

from conftest import TINY, run_cli, tree_hash


@pytest.fixture
def lineage(tmp_path):
    """init, L0, L1, L2, U1, L3 through the API; returns (store path, ids by op)."""
    store = tmp_path / "store"
    ids = {}
    r = api.learn(0, store=store, **TINY)
    ids["L0"] = r.id
    for t in (1, 2):
        r = api.learn(t, from_ref=r.id, store=store)
        ids[f"L{t}"] = r.id
    r = api.unlearn(1, from_ref=r.id, store=store, algo="neggem")
    ids["U1"] = r.id
    r = api.learn(3, from_ref=r.id, store=store)
    ids["L3"] = r.id
    return store, ids


def test_purge_dry_run_changes_nothing_then_purge_erases(lineage):
    store, ids = lineage
    before = tree_hash(store)
    p = run_cli(["store", "purge", "--task", 1, "--ref", ids["L3"], "--dry-run"], store=store, check=0)
    assert tree_hash(store) == before
    listed = {ln.split()[-1] for ln in p.stdout.splitlines() if ln.startswith("would remove checkpoint")}
    assert listed == {ids["L1"], ids["L2"]}  # trained on task 1, not yet unlearned
    p = run_cli(["store", "verify", "--erased", 1, "--ref", ids["L3"]], store=store)
    assert p.returncode == 1 and ids["L1"] in p.stdout
    run_cli(["store", "purge", "--task", 1, "--ref", ids["L3"]], store=store, check=0)
    st = Store.open(store)
    assert st.is_tombstoned(ids["L1"]) and st.is_tombstoned(ids["L2"])
    assert not st.is_tombstoned(ids["U1"]) and not st.is_tombstoned(ids["L0"])
    # nothing left that references task 1's samples; and the store is consistent
    run_cli(["store", "verify", "--erased", 1, "--ref", ids["L3"]], store=store, check=0)
    run_cli(["store", "verify"], store=store, check=0)
    # no remaining manifest lists any of task 1's indices
    for oid in st.iter_objects():
        try:
            doc = st.get_json(oid)
        except Exception:
            continue
        if isinstance(doc, dict) and doc.get("type") == "manifest":
            assert "1" not in doc["buffers"]
    # lineage shows the tombstone; reading a purged checkpoint is a clear error
    p = run_cli(["store", "log", ids["L3"]], store=store, check=0)
    assert "purged" in p.stdout
    p = run_cli(["learn", "--task", 4, "--from", ids["L2"]], store=store)
    assert p.returncode == 2 and "purged" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # the buffer of the forgotten task is gone with it
    p = run_cli(["mia", ids["U1"], "--task", 1, "--members", "buffer"], store=store)
    assert p.returncode == 2 and "purged" in p.stderr
    # work continues from the kept checkpoints
    run_cli(["learn", "--task", 4, "--from", ids["L3"], "-q"], store=store, check=0)


def test_purge_errors(lineage):
    store, ids = lineage
    before = tree_hash(store)
    for args, word in ((["--task", 1], "--run RUN or --ref REF"),
                       (["--task", 1, "--run", "nope"], "no run named"),
                       (["--task", 9, "--ref", ids["L3"]], "out of range"),
                       (["--task", 1, "--run", "../x"], "..")):
        p = run_cli(["store", "purge", *args], store=store)
        assert p.returncode == 2 and word in p.stderr, (args, p.stderr)
    p = run_cli(["store", "verify", "--erased", 1], store=store)
    assert p.returncode == 2
    assert tree_hash(store) == before


def test_mia_cli_and_buffer_from_ancestor(lineage):
    store, ids = lineage
    p = run_cli(["mia", ids["U1"], "--task", 1, "--members", "buffer", "--json"], store=store, check=0)
    res = json.loads(p.stdout)
    assert res["status"] == "forgotten" and res["buffer_from"] == ids["L2"]
    assert "using its buffer from ancestor checkpoint" in p.stderr
    assert 0.0 <= res["auc"] <= 1.0 and res["n"] > 10
    p = run_cli(["mia", ids["L2"], "--task", 1, "--attack", "efficacy", "--json"], store=store, check=0)
    assert 0.0 <= json.loads(p.stdout)["efficacy"] <= 1.0
    p = run_cli(["mia", ids["L2"], "--task", 4, "--members", "buffer"], store=store)
    assert p.returncode == 2 and "never learned" in p.stderr
    p = run_cli(["mia", ids["L2"], "--task", 1, "--members", "everything"], store=store)
    assert p.returncode == 2 and "--members" in p.stderr
