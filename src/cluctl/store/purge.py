"""Erasure: delete what a store holds of one task's training data (``cluctl store purge``).

What ``purge_task`` removes (leaving tombstones, so lineages and ``verify`` still make
sense), within one *family* of checkpoints — those sharing a lineage root, i.e. the same
dataset, seed, class order and initial weights (task ids only mean something inside one):

- every checkpoint that has task T in its learned set: the checkpoints between learning T
  and unlearning it (and after a relearn of T), which were trained on T's samples without
  a later unlearning;
- every buffer manifest that lists T's indices (the manifests of those checkpoints);
- memorization scores those checkpoints or manifests used: the Feldman & Zhang estimate
  and the confidence proxy are computed from the whole training set, T's samples included.

What it does not do, said plainly: the checkpoints after unlearning T are kept. Unlearning
is approximate — their weights were trained on T and then pushed to forget it; they are not
the weights of a model that never saw T. The dataset files themselves live outside the
store and are untouched. Result tables derived from purged checkpoints (accuracies, MIA
numbers) hold no samples and are kept, but listed, so that a user can decide.

How a purge survives being killed (a journal): before deleting anything, the purge writes
its *intent* — task, lineage roots and the list of object ids to erase — to
``journal/purge-<key>.json`` (atomically; the key is a hash of task and roots). Then it
erases each listed object (tombstone first, then the object), scans the whole store again
for anything of the lineage that still carries the task (objects written meanwhile, a
purged id written again), erases that too, and only then marks the intent done. Every
step is idempotent, so a purge killed at any point is completed by running any purge
again (pending intents are replayed first), and ``store verify`` reports an intent that is
not done. ``store verify --erased T`` does not trust the journal: it scans every object.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import faults
from ..errors import NotFound, UsageError
from .base import Problem, canonical_json, is_oid
from .core import Store
from .maintenance import JOURNAL, inspect_object, read_intents

KINDS = ("checkpoint", "manifest", "scores", "purged-again")


@dataclass
class PurgeReport:
    task: int
    roots: list[str]
    checkpoints: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    scores: list[str] = field(default_factory=list)
    derived_objects: list[str] = field(default_factory=list)
    derived_files: list[str] = field(default_factory=list)
    dry_run: bool = False
    purged_again: list[str] = field(default_factory=list)  # tombstoned ids found in objects/ again
    completed: list[str] = field(default_factory=list)  # interrupted purges this run finished

    @property
    def removed(self) -> list[str]:
        return self.checkpoints + self.manifests + self.scores + self.purged_again


def _objects(store: Store):
    """(oid, kind, doc) for every readable object; unreadable ones are verify's business."""
    for oid in store.iter_objects():
        try:
            info = inspect_object(store, oid, verify_hash=False)
        except OSError:
            continue
        doc = info.doc
        if info.kind == "json" and not (isinstance(doc, dict) and doc.get("type") == "manifest"):
            doc = {"type": doc.get("type")} if isinstance(doc, dict) else None  # only manifests matter here
        yield oid, info.kind, doc


def family_roots(store: Store, run: str | None = None, ref: str | None = None) -> list[str]:
    """Lineage roots of a launch run's seeds (``run``) or of one checkpoint (``ref``)."""
    from .checkpoint import read_checkpoint_meta

    if (run is None) == (ref is None):
        raise UsageError("say which lineage: --run RUN or --ref REF (one of them)")
    targets: list[str] = []
    if run is not None:
        Store.check_ref_name(f"runs/{run}")
        refs = store.list_refs(f"runs/{run}/")
        if not refs:
            raise NotFound(f"no run named '{run}' in {store.root}", "list runs with `cluctl store ls runs/`")
        targets = list(refs.values())
    else:
        targets = [_resolve_allow_purged(store, ref)]
    roots: set[str] = set()
    for oid in targets:
        if store.is_tombstoned(oid):
            stone = store.get_tombstone(oid) or {}
            if stone.get("root"):
                roots.add(stone["root"])
            continue
        try:
            meta = read_checkpoint_meta(store, oid)
        except UsageError:
            try:
                doc = store.get_json(oid)
            except Exception:
                continue
            ck = doc.get("checkpoint") if isinstance(doc, dict) else None
            if not ck or store.is_tombstoned(ck):
                continue
            meta = read_checkpoint_meta(store, ck)
            oid = ck
        roots.add(meta.get("root") or oid)
    if not roots:
        raise NotFound("found no checkpoint to purge from", "check --run/--ref")
    return sorted(roots)


def _resolve_allow_purged(store: Store, ref: str) -> str:
    """Like ``resolve``, but a purged checkpoint still names its lineage (its tombstone
    records the root)."""
    try:
        return store.resolve(ref)
    except NotFound:
        target = store.get_ref(ref) if not is_oid(ref) else ref
        if target and store.is_tombstoned(target):
            return target
        raise


def _task_int(task) -> int:
    try:
        t = int(task)
    except (TypeError, ValueError):
        raise UsageError(f"task '{task}' is not an integer") from None
    if t < 0:
        raise UsageError(f"task {task} is out of range (tasks are numbered from 0)")
    return t


def _as_list(v) -> list:
    return v if isinstance(v, list) else []


def _buffer_has_indices(doc: dict, task: int) -> bool:
    """The manifest has a buffer for ``task`` (anything under its key but empty index lists)."""
    bufs = doc.get("buffers")
    if not isinstance(bufs, dict) or str(task) not in bufs:
        return False
    buf = bufs[str(task)]
    if not isinstance(buf, dict):
        return True  # malformed: cannot tell, so it counts
    return any(not (isinstance(b, dict) and b.get("indices") == []) for b in buf.values())


class _Scan:
    """One pass over every object of the store (and its tombstones), seen from a lineage."""

    def __init__(self, store: Store, roots: list[str]):
        self.store = store
        self.roots = set(roots)
        self.objs = list(_objects(store))
        self.present = {oid for oid, _k, _d in self.objs}
        self.stones = set(store.iter_tombstones())
        self.checkpoints = {oid: d for oid, k, d in self.objs if k == "checkpoint" and isinstance(d, dict)}
        self.manifests = {oid: d for oid, k, d in self.objs if k == "json" and isinstance(d, dict) and d.get("type") == "manifest"}
        self.family = {oid: d for oid, d in self.checkpoints.items() if oid in self.roots or d.get("root") in self.roots}
        # what the lineage's tombstones remember (a purged checkpoint's manifest, fingerprint)
        self.stone_family: dict[str, dict] = {}
        other_stones: list[dict] = []
        for oid in self.stones:
            rec = store.get_tombstone(oid) or {}
            if rec.get("root") in self.roots or oid in self.roots:
                self.stone_family[oid] = rec
            elif rec.get("kind") == "checkpoint":
                other_stones.append(rec)
        self.fingerprints = {d.get("dataset_fingerprint") for d in self.family.values()}
        self.fingerprints |= {r.get("dataset_fingerprint") for r in self.stone_family.values()}
        self.fingerprints.discard(None)
        self.family_manifests = {d.get("manifest") for d in self.family.values()} | \
            {r.get("manifest") for r in self.stone_family.values()}
        self.other_manifests = {d.get("manifest") for oid, d in self.checkpoints.items() if oid not in self.family}
        self.other_manifests |= {r.get("manifest") for r in other_stones}
        self.other_manifests -= self.family_manifests

    def carries(self, task: int) -> dict[str, list[str]]:
        """Objects present that carry ``task`` for this lineage, by kind."""
        out: dict[str, set[str]] = {k: set() for k in KINDS}
        for oid, d in self.family.items():
            learned = d.get("learned")
            if not isinstance(learned, list) or task in learned:
                out["checkpoint"].add(oid)  # trained on it and not unlearned since (or cannot tell)
        purged_ck = out["checkpoint"] | {o for o, r in self.stone_family.items() if r.get("task") == task}
        for oid, d in self.manifests.items():
            if not _buffer_has_indices(d, task):
                continue
            ours = oid in self.family_manifests
            orphan = oid not in self.other_manifests and (
                not self.fingerprints or d.get("dataset_fingerprint") in self.fingerprints or d.get("dataset_fingerprint") is None)
            if ours or orphan:
                out["manifest"].add(oid)
        scores: set[str] = set()
        for oid in out["manifest"]:
            d = self.manifests[oid]
            scores.add(d.get("scores"))
            for b in (d.get("buffers") or {}).get(str(task), {}).values():
                if isinstance(b, dict):
                    scores.add(b.get("scores"))
        for oid in purged_ck:
            d = self.family.get(oid) or self.stone_family.get(oid) or {}
            scores.add(d.get("scores"))
        out["scores"] = {s for s in scores if is_oid(s) and s in self.present}
        out["purged-again"] = (self.present & self.stones) - out["checkpoint"] - out["manifest"] - out["scores"]
        return {k: sorted(v) for k, v in out.items()}


def _intent_path(store: Store, task: int, roots: list[str]) -> Path:
    key = hashlib.sha256(canonical_json({"task": task, "roots": sorted(roots)})).hexdigest()[:16]
    return store.root / JOURNAL / f"purge-{key}.json"


def _write_intent(store: Store, path: Path, intent: dict) -> None:
    with store._writing(f"write purge journal {path.name}"):
        store._atomic_write(path, canonical_json(intent) + b"\n")


def _erase(store: Store, oid: str, reason: str, info: dict) -> bool:
    """Tombstone ``oid`` and remove it; True when an object was removed now. Idempotent."""
    if not store.has_object(oid):
        return False
    if store.is_tombstoned(oid):  # tombstone written before a kill, or the id written again
        path = store.object_path(oid)
        with store._writing(f"purge object {oid}"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
        faults.point("purge-erase")
        return True
    store.tombstone(oid, reason, info)
    faults.point("purge-erase")
    return True


def _run_intent(store: Store, path: Path, intent: dict, rep: PurgeReport | None) -> None:
    """Erase what the intent lists, then rescan until nothing of the lineage carries the
    task; mark the intent done."""
    task, roots = int(intent["task"]), list(intent["roots"])
    reason = f"erased task {task} ({intent.get('label', '?')})"
    for _round in range(5):
        plan = intent["plan"]
        infos = intent.get("infos") or {}
        for kind in KINDS:
            for oid in plan.get(kind, []):
                info = dict(infos.get(oid) or {}, task=task, kind=kind, run=intent.get("run"), purged_at=intent["started_at"])
                if _erase(store, oid, reason, info) and rep is not None:
                    getattr(rep, kind.replace("-", "_") + ("s" if kind in ("checkpoint", "manifest") else "")).append(oid)
        left = _Scan(store, roots).carries(task)
        if not any(left.values()):
            break
        for kind in KINDS:  # written meanwhile, or missed: into the journal, then again
            plan[kind] = sorted(set(plan.get(kind, [])) | set(left[kind]))
        _write_intent(store, path, intent)
    else:
        raise UsageError(f"purge of task {task} did not converge: objects of the lineage keep carrying it",
                         "stop the processes writing to this lineage, then purge again")
    faults.point("purge-before-done")
    intent["done_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _write_intent(store, path, intent)


def replay_pending(store: Store) -> list[str]:
    """Complete every purge whose intent is in the journal but not done; their labels."""
    done = []
    for path, rec in read_intents(store):
        if rec is None or rec.get("done_at") or not isinstance(rec.get("plan"), dict):
            continue
        _run_intent(store, path, rec, None)
        done.append(f"task {rec.get('task')} ({rec.get('label', '?')})")
    return done


def purge_task(store: Store, task: int, run: str | None = None, ref: str | None = None,
               dry_run: bool = False, results_dirs: list[str] | None = None) -> PurgeReport:
    task = _task_int(task)
    completed = [] if dry_run else replay_pending(store)
    roots = family_roots(store, run=run, ref=ref)
    rep = PurgeReport(task=task, roots=roots, dry_run=dry_run, completed=completed)
    scan = _Scan(store, roots)
    if not scan.family and not scan.stone_family:
        raise NotFound("the lineage has no checkpoints left in this store")
    n_tasks = {d.get("n_tasks") for d in list(scan.family.values()) + list(scan.stone_family.values())}
    n_tasks = {n for n in n_tasks if isinstance(n, int) and not isinstance(n, bool)}
    if n_tasks and task >= max(n_tasks):
        raise UsageError(f"task {task} is out of range: this run has {max(n_tasks)} tasks (0..{max(n_tasks) - 1})")
    plan = scan.carries(task)
    gone = {o for v in plan.values() for o in v}
    for oid, kind, doc in scan.objs:
        if kind == "json" and isinstance(doc, dict) and doc.get("type") in ("op-result", "results"):
            try:
                full = store.get_json(oid)
            except Exception:
                continue
            if isinstance(full, dict) and full.get("checkpoint") in gone:
                rep.derived_objects.append(oid)
    for d in results_dirs or []:
        p = Path(d)
        if p.is_dir():
            rep.derived_files.extend(sorted(str(f) for f in p.rglob("*") if f.is_file()))
    if dry_run:
        rep.checkpoints, rep.manifests, rep.scores, rep.purged_again = (
            plan["checkpoint"], plan["manifest"], plan["scores"], plan["purged-again"])
        return rep
    label = f"run {run}" if run else f"lineage of {str(ref)[:12]}"
    infos = {}
    for oid in plan["checkpoint"]:
        d = scan.family[oid]
        infos[oid] = {k: d.get(k) for k in ("root", "parent", "op", "learned", "forgotten", "manifest", "scores",
                                             "dataset_fingerprint", "n_tasks")}
        infos[oid]["root"] = d.get("root") or oid
    path = _intent_path(store, task, roots)
    old = dict(_read_intent(path) or {})
    intent = {"type": "purge-intent", "task": task, "roots": roots, "run": run, "ref": ref, "label": label,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "done_at": None,
              "plan": {k: sorted(set(plan[k]) | set((old.get("plan") or {}).get(k, []))) for k in KINDS},
              "infos": {**(old.get("infos") or {}), **infos}}
    _write_intent(store, path, intent)
    faults.point("purge-intent")
    _run_intent(store, path, intent, rep)
    return rep


def _read_intent(path: Path) -> dict | None:
    for p, rec in read_intents(path.parent.parent):
        if p == path:
            return rec
    return None


def erased_problems(store: Store, task: int, run: str | None = None, ref: str | None = None) -> list[Problem]:
    """What `store verify --erased T` reports, from a scan of every object in the store
    (reachable or not, tombstoned or not): a checkpoint of the lineage with T learned (it
    was trained on T with no unlearning since), a manifest of the lineage — or one no other
    lineage claims, of the same dataset — listing T's samples, scores those used, any
    purged id that is in objects/ again, and a purge of T that did not finish."""
    task = _task_int(task)
    roots = family_roots(store, run=run, ref=ref)
    left = _Scan(store, roots).carries(task)
    problems: list[Problem] = []
    what = {"checkpoint": "checkpoint {oid} has task {task} learned (trained on it, never unlearned)",
            "manifest": "manifest {oid} lists task {task}'s samples",
            "scores": "memorization scores {oid} used by an object holding task {task} are still here",
            "purged-again": "object {oid} was purged but is in objects/ again"}
    for kind in KINDS:
        for oid in left[kind]:
            problems.append(Problem("erased-data-present", oid, what[kind].format(oid=oid, task=task)))
    path = _intent_path(store, task, roots)
    rec = _read_intent(path)
    if rec is not None and not rec.get("done_at"):
        problems.append(Problem("interrupted-purge", path.name,
                                f"the purge of task {task} did not finish; run `cluctl store purge` again"))
    return problems


def results_dirs_for_run(store: Store, run: str) -> list[str]:
    """Result folders a launch recorded for this run (and the default results/<run>/)."""
    dirs = []
    oid = store.get_ref(f"runs/{run}/config")
    if oid and store.has_object(oid):
        try:
            doc = store.get_json(oid)
            for key in ("out", "outputs", "results_dirs"):
                v = doc.get(key)
                if isinstance(v, str):
                    dirs.append(v)
                elif isinstance(v, list):
                    dirs.extend(x for x in v if isinstance(x, str))
        except Exception:
            pass
    default = os.path.join("results", run)
    if default not in dirs:
        dirs.append(default)
    return dirs
