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
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NotFound, UsageError
from .core import Problem, Store, is_oid
from .maintenance import inspect_object


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

    @property
    def removed(self) -> list[str]:
        return self.checkpoints + self.manifests + self.scores


def _objects(store: Store):
    """(oid, kind, doc) for every readable object; unreadable ones are verify's business."""
    for oid in store.iter_objects():
        try:
            info = inspect_object(store, oid, verify_hash=False)
        except OSError:
            continue
        yield oid, info.kind, info.doc


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


def purge_task(store: Store, task: int, run: str | None = None, ref: str | None = None,
               dry_run: bool = False, results_dirs: list[str] | None = None) -> PurgeReport:
    task = _task_int(task)
    roots = family_roots(store, run=run, ref=ref)
    rep = PurgeReport(task=task, roots=roots, dry_run=dry_run)
    objs = list(_objects(store))
    family = {oid: doc for oid, kind, doc in objs
              if kind == "checkpoint" and (oid in roots or (doc or {}).get("root") in roots)}
    if not family:
        raise NotFound("the lineage has no checkpoints left in this store")
    n_tasks = {int(d.get("n_tasks") or 0) for d in family.values()}
    if n_tasks and task >= max(n_tasks):
        raise UsageError(f"task {task} is out of range: this run has {max(n_tasks)} tasks (0..{max(n_tasks) - 1})")
    purge_ck = sorted(oid for oid, d in family.items() if task in (d.get("learned") or []))
    manifests, scores = set(), set()
    for oid, d in family.items():
        man = d.get("manifest")
        if man and not store.is_tombstoned(man) and store.has_object(man):
            doc = store.get_json(man)
            if str(task) in (doc.get("buffers") or {}):
                manifests.add(man)
                if doc.get("scores"):
                    scores.add(doc["scores"])
                for b in doc["buffers"][str(task)].values():
                    if isinstance(b, dict) and b.get("scores"):
                        scores.add(b["scores"])
        if oid in purge_ck and d.get("scores"):
            scores.add(d["scores"])
    scores = {s for s in scores if is_oid(s) and store.has_object(s)}
    rep.checkpoints = purge_ck
    rep.manifests = sorted(manifests)
    rep.scores = sorted(scores)
    gone = set(rep.removed)
    for oid, kind, doc in objs:
        if kind == "json" and isinstance(doc, dict) and doc.get("type") in ("op-result", "results") \
                and doc.get("checkpoint") in gone:
            rep.derived_objects.append(oid)
    for d in results_dirs or []:
        p = Path(d)
        if p.is_dir():
            rep.derived_files.extend(sorted(str(f) for f in p.rglob("*") if f.is_file()))
    if dry_run:
        return rep
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    label = f"run {run}" if run else f"lineage of {str(ref)[:12]}"
    for kind, ids in (("checkpoint", rep.checkpoints), ("manifest", rep.manifests), ("scores", rep.scores)):
        for oid in ids:
            info = {"task": task, "kind": kind, "run": run, "purged_at": when}
            if kind == "checkpoint":
                d = family[oid]
                info.update(root=d.get("root") or oid, parent=d.get("parent"), op=d.get("op"),
                            learned=d.get("learned"), forgotten=d.get("forgotten"))
            if store.has_object(oid):
                store.tombstone(oid, f"erased task {task} ({label})", info)
    return rep


def erased_problems(store: Store, task: int, run: str | None = None, ref: str | None = None) -> list[Problem]:
    """What `store verify --erased T` reports: any remaining checkpoint of the family that
    has T learned (it was trained on T with no unlearning since), any manifest listing one
    of T's training indices, any scores those still use."""
    task = _task_int(task)
    roots = family_roots(store, run=run, ref=ref)
    problems: list[Problem] = []
    objs = list(_objects(store))
    family = {oid: doc for oid, kind, doc in objs
              if kind == "checkpoint" and (oid in roots or (doc or {}).get("root") in roots)}
    for oid, d in family.items():
        if task in (d.get("learned") or []):
            problems.append(Problem("erased-data-present", oid,
                                    f"checkpoint {oid} has task {task} learned (trained on it, never unlearned)"))
    for oid, d in family.items():
        man = d.get("manifest")
        if man and store.has_object(man) and not store.is_tombstoned(man):
            doc = store.get_json(man)
            if str(task) in (doc.get("buffers") or {}):
                problems.append(Problem("erased-data-present", man,
                                        f"manifest {man} (of checkpoint {oid[:12]}) lists task {task}'s samples"))
    # dedupe (a manifest can be shared by several checkpoints)
    seen, out = set(), []
    for p in problems:
        if (p.kind, p.object) not in seen:
            seen.add((p.kind, p.object))
            out.append(p)
    return out


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
