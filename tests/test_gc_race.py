"""gc against concurrent writers (issue 16): no interleaving of ``gc`` with writers that
reference existing objects (tag, learn --from, launch refs) loses a referenced object.
gc refuses on a ref with an invalid name; a dangling ref is recognisable (resume).

Store API only, threads, no training."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest

from cluctl import faults
from cluctl.errors import CorruptObject, NotFound
from cluctl.store import Store
from cluctl.store.core import DanglingRef
from cluctl.store.maintenance import links_of

OLD = time.time() - 10 * 24 * 3600


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store")


def _old_chain(st: Store, tag: str, n: int = 3) -> list[str]:
    """n unreferenced, old objects, each linking to the previous (a lineage nobody tags)."""
    ids: list[str] = []
    for i in range(n):
        oid = st.put_json({"type": "run", "note": tag, "i": i, "parent": ids[-1] if ids else None})
        ids.append(oid)
    for oid in ids:
        os.utime(st.object_path(oid), (OLD, OLD))
    return ids


def _closure_present(st: Store, oid: str) -> bool:
    stack, seen = [oid], set()
    while stack:
        o = stack.pop()
        if o in seen:
            continue
        seen.add(o)
        if not st.has_object(o):
            return False
        stack.extend(links_of(st, o))
    return True


def _assert_no_ref_lost(st: Store) -> None:
    for name, oid in st.list_refs().items():
        assert _closure_present(st, oid), f"ref {name} -> {oid} lost (part of) what it references"


def test_tag_between_gc_marking_and_deleting_keeps_the_object(store, monkeypatch):
    """Issue case 4, deterministic: the tag is written after gc decided the object was
    garbage (its quarantine) and before it deletes: the object survives, the tag holds."""
    chain = _old_chain(store, "tagged")
    real = faults.point

    def at(name: str) -> None:
        if name == "gc-quarantined":
            store.set_ref("tags/keep-me", chain[-1])
        real(name)

    monkeypatch.setattr(faults, "point", at)
    rep = store.gc(grace_s=0)
    assert rep.removed == [] and sorted(rep.restored) == sorted(chain)
    assert store.resolve("tags/keep-me") == chain[-1]
    _assert_no_ref_lost(store)
    assert list(store.verify()) == []


def test_child_of_old_parent_written_during_gc_keeps_its_parent(store, monkeypatch):
    """Issue case 5: learn --from an old unreferenced checkpoint while gc runs; the new
    checkpoint (written and tagged after gc's marking) keeps its whole lineage."""
    chain = _old_chain(store, "parent")
    real = faults.point

    def at(name: str) -> None:
        if name == "gc-quarantined":
            child = store.put_json({"type": "run", "parent": chain[-1], "note": "child"})
            store.set_ref("checkpoints/child", child)
        real(name)

    monkeypatch.setattr(faults, "point", at)
    store.gc(grace_s=0)
    _assert_no_ref_lost(store)


def test_writer_that_loses_the_race_takes_its_ref_back(store, monkeypatch):
    """gc deletes for good between a writer's two checks: the writer fails (NotFound, one
    line) and leaves no ref behind, rather than a dangling one."""
    chain = _old_chain(store, "lost", n=1)
    real_keep = Store.keep
    calls = {"n": 0}

    def keep(self, oids, missing_ok=False):
        calls["n"] += 1
        if calls["n"] == 2:  # after the ref is written: gc removes it now
            os.unlink(self.object_path(chain[0]))
        return real_keep(self, oids, missing_ok)

    monkeypatch.setattr(Store, "keep", keep)
    with pytest.raises(NotFound) as ei:
        store.set_ref("tags/late", chain[0])
    assert "gc" in str(ei.value) and "\n" not in str(ei.value)
    assert store.get_ref("tags/late") is None
    assert not (store.root / "refs" / "tags").exists()


def test_gc_stress_against_concurrent_writers(tmp_path, monkeypatch):
    """>= 200 interleavings of gc (grace 0, and a short grace) with writers that tag old
    objects or write children of them, at random delays: every ref that exists afterwards
    reaches all it references, every writer that succeeded has its ref, and every writer
    that failed left none."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this test is about
    rng = random.Random(1616)
    t0 = time.perf_counter()
    rounds = 0
    outcomes = {"ok": 0, "refused": 0}
    st = None
    while rounds < 220:
        if rounds % 10 == 0:  # a fresh store now and then keeps each gc quick
            st = Store.open(tmp_path / f"s{rounds}")
        chains = [_old_chain(st, f"r{rounds}-{k}") for k in range(2)]
        results: list[tuple[str, str, BaseException | None]] = []
        grace = rng.choice([0.0, 0.0, 0.002])

        def gc_thread():
            time.sleep(rng.uniform(0, 0.002))
            st.gc(grace_s=grace)

        def writer(k: int):
            time.sleep(rng.uniform(0, 0.002))
            target = rng.choice(chains[k])
            name = f"tags/r{rounds}-w{k}"
            try:
                if rng.random() < 0.5:
                    st.set_ref(name, target)
                else:
                    child = st.put_json({"type": "run", "parent": target, "round": rounds, "k": k})
                    time.sleep(rng.uniform(0, 0.001))
                    st.set_ref(name, child)
                results.append((name, target, None))
            except NotFound as e:
                results.append((name, target, e))

        threads = [threading.Thread(target=gc_thread)] + [threading.Thread(target=writer, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        for name, _target, exc in results:
            if exc is None:
                assert st.get_ref(name) is not None, name
                outcomes["ok"] += 1
            else:
                assert st.get_ref(name) is None, f"{name}: failed writer left its ref"
                outcomes["refused"] += 1
        for name, _target, _exc in results:
            oid = st.get_ref(name)
            assert oid is None or _closure_present(st, oid), f"ref {name} -> {oid} lost (part of) what it references"
        rounds += 1
    elapsed = time.perf_counter() - t0
    _assert_no_ref_lost(st)
    assert outcomes["ok"] >= 20 and outcomes["ok"] + outcomes["refused"] == 2 * rounds
    assert list(os.listdir(st.root / "tmp")) == []  # no quarantine left behind
    print(f"gc stress: {rounds} interleavings, {outcomes}, {elapsed:.2f} s")


def test_gc_refuses_a_ref_with_an_invalid_name(store):
    """Issue case 6: the only link to an old checkpoint is a ref whose name cluctl would
    not write; gc refuses (like on a corrupt ref) instead of deleting the checkpoint."""
    (oid,) = _old_chain(store, "only-link", n=1)
    (store.root / "refs" / "tags").mkdir()
    (store.root / "refs" / "tags" / "bad name").write_text(oid + "\n")
    with pytest.raises(CorruptObject) as ei:
        store.gc(grace_s=0)
    assert "bad name" in str(ei.value) and "\n" not in str(ei.value)
    assert store.has_object(oid)
    assert "bad-ref-name" in {p.kind for p in store.verify()}


def test_crashed_gc_loses_nothing(store):
    """A gc killed after quarantining: the next clean_temp (verify, gc, resume) puts the
    objects back, so a ref written meanwhile is not left dangling."""
    import subprocess
    import sys
    from pathlib import Path

    chain = _old_chain(store, "crash")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, CLUCTL_FAULT="gc-quarantined", PYTHONPATH=src)
    p = subprocess.run([sys.executable, "-c", "import sys; from cluctl.store import Store; Store.open(sys.argv[1]).gc(grace_s=0)",
                        str(store.root)], env=env, capture_output=True, timeout=60)
    assert p.returncode == -9, p.stderr.decode()
    assert not store.has_object(chain[-1])  # in the dead gc's quarantine
    store.set_ref("tags/after-crash", chain[-1])  # a writer finds it there
    assert list(store.verify()) == []
    assert all(store.has_object(o) for o in chain)


def test_dangling_ref_is_recognisable_for_resume(store):
    """Issue case 7 (the store's part): a ref whose object is gone is told apart from a
    missing ref and a purged target, so a resume can redo that operation; rm-ref deletes it."""
    a = store.put_json({"type": "op-result", "x": 1})
    b = store.put_json({"type": "op-result", "x": 2})
    store.set_ref("runs/r/seed-0/op-000", a)
    store.set_ref("runs/r/seed-0/op-001", b)
    os.unlink(store.object_path(b))
    assert store.ref_state("runs/r/seed-0/op-000") == "present"
    assert store.ref_state("runs/r/seed-0/op-001") == "dangling"
    assert store.ref_state("runs/r/seed-0/op-002") is None
    assert list(store.list_refs("runs/r/", skip_dangling=True)) == ["runs/r/seed-0/op-000"]
    with pytest.raises(DanglingRef) as ei:
        store.resolve("runs/r/seed-0/op-001")
    assert ei.value.ref == "runs/r/seed-0/op-001" and ei.value.oid == b and isinstance(ei.value, NotFound)
    from conftest import run_cli

    run_cli(["store", "rm-ref", "runs/r/seed-0/op-001"], store=store.root, check=0)
    assert store.get_ref("runs/r/seed-0/op-001") is None and store.get_ref("runs/r/seed-0/op-000") == a


def test_sibling_refs_written_and_deleted_concurrently(store, monkeypatch):
    """Two writers tag and untag sibling refs under tags/ in a loop. delete_ref prunes
    tags/ when its last ref goes, so the other writer's folder can vanish between any two
    of its checks: neither writer may see that as a conflict ("conflicts with the existing
    ref tags", "File exists"). This race failed CI once (stop 14)."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    oid = store.put_json({"type": "run", "note": "siblings"})
    errors: list[BaseException] = []

    def loop(prefix: str) -> None:
        for i in range(1200):
            name = f"tags/{prefix}{i % 3}"
            try:
                store.set_ref(name, oid)
                assert store.get_ref(name) == oid
                store.delete_ref(name)
            except BaseException as e:  # noqa: BLE001 - every failure is the finding
                errors.append(e)
                return

    threads = [threading.Thread(target=loop, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert store.list_refs() == {}
