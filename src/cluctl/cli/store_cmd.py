"""``cluctl store``: ls, show, log, tag, verify, gc (and purge)."""

from __future__ import annotations

import datetime as _dt
import os
from typing import Optional

import typer

from ..errors import UsageError
from .common import StoreOpt, err, open_store, print_json
from .options import complete_ref

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


def _ckpt_meta(st, oid):
    from ..store import read_checkpoint_meta

    try:
        return read_checkpoint_meta(st, oid)
    except UsageError:
        return None


def _when(path) -> str:
    try:
        ts = os.path.getmtime(path)
    except OSError:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@app.command("ls")
def ls(
    prefix: str = typer.Argument("", help="Only refs starting with this (e.g. runs/a4-neggem)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    store: Optional[str] = StoreOpt,
):
    """List refs and what they point at (op, learned tasks, dataset, seed).

    Example: cluctl store ls tags/
    """
    st = open_store(store, must_exist=True)
    rows = []
    for name, oid in st.list_refs(prefix).items():
        row = {"ref": name, "id": oid, "type": None, "op": None, "learned": None, "dataset": None, "seed": None,
               "written": _when(st.object_path(oid))}
        if st.is_tombstoned(oid):
            row["type"] = "purged"
        else:
            meta = _ckpt_meta(st, oid)
            if meta is not None:
                row.update(type="checkpoint", op=meta.get("op"), learned=meta.get("learned"),
                           dataset=meta.get("dataset"), seed=meta.get("seed"))
            else:
                try:
                    row["type"] = st.get_json(oid).get("type", "json")
                except Exception:
                    row["type"] = "blob"
        rows.append(row)
    if as_json:
        print_json(rows)
        return
    if not rows:
        err.print(f"no refs{' under ' + prefix if prefix else ''} in {st.root}")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None)
    for c in ("ref", "id", "type", "op", "learned", "dataset", "seed", "written"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["ref"], r["id"][:12], r["type"] or "", r["op"] or "",
                  " ".join(map(str, r["learned"])) if r["learned"] is not None else "",
                  r["dataset"] or "", "" if r["seed"] is None else str(r["seed"]), r["written"])
    Console(width=200).print(t)


@app.command()
def show(
    ref: str = typer.Argument(..., help="Ref, object id or 8+ hex prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print the full metadata as JSON."),
    store: Optional[str] = StoreOpt,
):
    """Show one object: a checkpoint's metadata and buffers, or a JSON object.

    Example: cluctl store show tags/learned-all
    """
    st = open_store(store, must_exist=True)
    oid = st.resolve(ref)
    meta = _ckpt_meta(st, oid)
    if meta is None:
        try:
            obj = st.get_json(oid)
        except Exception:
            raise UsageError(f"object {oid[:12]} is neither a checkpoint nor JSON") from None
        if as_json:
            print_json(obj)
        else:
            summary = {k: (f"[{len(v)} items]" if isinstance(v, list) and len(v) > 20 else v) for k, v in obj.items()}
            print_json(summary)
        return
    man = st.get_json(meta["manifest"]) if meta.get("manifest") and not st.is_tombstoned(meta["manifest"]) else None
    if as_json:
        print_json({"id": oid, "meta": meta, "manifest": man})
        return
    lines = [
        f"checkpoint  {oid}",
        f"op          {meta.get('op')}   (history: {' '.join(meta.get('history') or []) or '-'})",
        f"dataset     {meta.get('dataset')}  fingerprint {str(meta.get('dataset_fingerprint'))[:16]}",
        f"model       {meta.get('model')} width {meta.get('width')}  seed {meta.get('seed')}  tasks {meta.get('n_tasks')}",
        f"learned     {' '.join(map(str, meta.get('learned') or [])) or '-'}",
        f"forgotten   {' '.join(map(str, meta.get('forgotten') or [])) or '-'}",
        f"parent      {meta.get('parent') or '-'}",
        f"root        {meta.get('root') or '(this is the root: initial weights)'}",
        f"manifest    {meta.get('manifest') or '-'}",
    ]
    if man:
        for t, b in man["buffers"].items():
            lines.append(f"  task {t}: learn {b['learn']['type']} x{len(b['learn']['indices'])}, "
                         f"unlearn {b['unlearn']['type']} x{len(b['unlearn']['indices'])}")
    if meta.get("summary"):
        lines.append("summary     " + ", ".join(f"{k}={v}" for k, v in meta["summary"].items()))
    cfg = meta.get("config") or {}
    given = meta.get("given")
    if isinstance(given, dict):
        lines.append("given       " + (", ".join(f"{k}={given[k]}" for k in sorted(given)) or "-")
                     + "   (explicit options, inherited along --from)")
    else:
        lines.append("given       (not recorded: written by an older cluctl)")
    lines.append("config      " + ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg))
                 + "   (the values this operation used; rule defaults resolved for it)")
    typer.echo("\n".join(lines))


@app.command()
def log(
    ref: str = typer.Argument(..., help="Checkpoint ref, id or prefix (a launch's runs/<run>/seed-<s>/op-NNN too).",
                              autocompletion=complete_ref),
    store: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
):
    """The lineage of a checkpoint back to the initial weights, newest first.

    Example: cluctl store log tags/unlearned-4
    """
    from ..api import checkpoint_id

    st = open_store(store, must_exist=True)
    oid = checkpoint_id(st, ref)
    seen = set()
    rows = []
    while oid:
        if oid in seen:  # pragma: no cover - content addressing makes cycles impossible
            break
        seen.add(oid)
        if st.is_tombstoned(oid):
            tomb = st.get_tombstone(oid) or {}
            rows.append({"id": oid, "purged": tomb.get("reason", "no reason recorded")})
            if not as_json:
                typer.echo(f"{oid[:12]}  (purged: {rows[-1]['purged']})")
            break
        meta = _ckpt_meta(st, oid)
        if meta is None:
            raise UsageError(f"object {oid[:12]} is not a checkpoint")
        s = meta.get("summary") or {}
        rows.append({"id": oid, "op": meta.get("op"), "learned": meta.get("learned") or [],
                     "forgotten": meta.get("forgotten") or [], "parent": meta.get("parent"), "summary": s})
        if not as_json:
            extra = ""
            if s:
                extra = f"  {s.get('algo', '')} {s.get('steps', '')} steps"
                if s.get("final_forget_acc") is not None:
                    extra += f", forget acc {s['final_forget_acc']:.3f}"
            typer.echo(f"{oid[:12]}  {meta.get('op'):>5}  learned [{' '.join(map(str, meta.get('learned') or []))}]{extra}")
        oid = meta.get("parent")
    if as_json:
        print_json(rows)


@app.command()
def tag(
    name: str = typer.Argument(..., help="Tag name (letters, digits, . _ -; / for hierarchy)."),
    ref: str = typer.Argument(..., help="What it points at: ref, id or prefix."),
    store: Optional[str] = StoreOpt,
):
    """Point refs/tags/NAME at an object.

    Example: cluctl store tag learned-all 3f9c2e1b
    """
    st = open_store(store, must_exist=True)
    st.check_tag_name(name)  # a bad or clashing name fails before anything is written
    oid = st.resolve(ref)
    st.set_ref(f"tags/{name}", oid)
    typer.echo(oid)


@app.command("rm-ref")
def rm_ref(
    name: str = typer.Argument(..., help="The ref to delete (e.g. tags/old, or a dangling runs/<run>/seed-0/op-003)."),
    store: Optional[str] = StoreOpt,
):
    """Delete one ref (not the object it points at; `store gc` collects unreachable objects).

    Example: cluctl store rm-ref tags/old
    """
    st = open_store(store, must_exist=True)
    name = name[len("refs/"):] if name.startswith("refs/") else name
    st.delete_ref(name)
    err.print(f"deleted ref {name}", markup=False)


@app.command()
def verify(
    erased: Optional[int] = typer.Option(None, "--erased", "--task", help="Also check that nothing left references task T's samples (with --run or --ref; --task T as in purge)."),
    run: Optional[str] = typer.Option(None, "--run", help="With --erased: the launch run whose task T was erased."),
    ref: Optional[str] = typer.Option(None, "--ref", help="With --erased: a checkpoint of the lineage whose task T was erased."),
    store: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
):
    """Check every object's hash, every ref, every checkpoint's parent and manifest; remove
    temp files of dead writers. Exit 1 if anything is wrong.

    Example: cluctl store verify
    """
    st = open_store(store, must_exist=True)
    if erased is not None and run is None and ref is None:
        raise UsageError("--erased T needs the lineage it refers to: --run RUN or --ref REF",
                         "task numbers only mean something within one run")
    res = st.verify()
    if erased is not None:
        from ..store.purge import erased_problems

        res.extend(erased_problems(st, erased, run=run, ref=ref))
    if as_json:
        print_json({"store": str(st.root), "consistent": not res, "info": list(res.info),
                    "problems": [{"kind": p.kind, "message": str(p)} for p in res]})
        if res:
            raise typer.Exit(1)
        return
    for line in res.info:
        err.print(line, markup=False)
    for p in res:
        typer.echo(f"{p.kind}: {p}")
    if res:
        err.print(f"{len(res)} problem(s) found in {st.root}", markup=False)
        raise typer.Exit(1)
    err.print(f"store {st.root} is consistent", markup=False)


@app.command()
def gc(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    grace: float = typer.Option(3600, "--grace", help="Spare unreachable objects younger than this many seconds."),
    store: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
):
    """Remove objects no ref reaches (sparing recent ones) and dead writers' temp files.

    Example: cluctl store gc --dry-run
    """
    if not grace >= 0:  # also refuses nan, which would otherwise spare nothing
        raise UsageError(f"--grace must be a number of seconds >= 0, got {grace}")
    st = open_store(store, must_exist=True)
    rep = st.gc(dry_run=dry_run, grace_s=grace)
    if as_json:
        print_json({"dry_run": dry_run, "removed": list(rep.removed), "bytes_freed": rep.bytes_freed,
                    "spared_recent": rep.spared_recent})
        return
    for oid in rep.removed:
        typer.echo(oid)
    verb = "would free" if dry_run else "freed"
    err.print(f"{len(rep.removed)} unreachable object(s), {verb} {rep.bytes_freed / 1e6:.2f} MB; "
              f"{rep.spared_recent} recent unreachable object(s) spared", markup=False)


@app.command()
def purge(
    task: int = typer.Option(..., "--task", "-t", help="The task whose training data must go."),
    run: Optional[str] = typer.Option(None, "--run", help="The launch run (all its seeds)."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Or: a checkpoint whose lineage (same initial weights) to purge."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    store: Optional[str] = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
):
    """Delete every stored object that carries task T's training samples or was trained on
    them without a later unlearning: the checkpoints that have T learned, the manifests
    listing its indices, the memorization scores computed with its data. Leaves tombstones
    and lists result files derived from those checkpoints. Run with --dry-run first.

    What it does not guarantee: checkpoints after unlearning T are kept, and unlearning is
    approximate (they are not a model that never saw T); dataset files outside the store are
    untouched.

    Example: cluctl store purge --task 3 --run a4-neggem-3f9c2e1b --dry-run
    """
    from ..store.purge import purge_task, results_dirs_for_run

    st = open_store(store, must_exist=True)
    dirs = results_dirs_for_run(st, run) if run else []
    rep = purge_task(st, task, run=run, ref=ref, dry_run=dry_run, results_dirs=dirs)
    verb = "would remove" if dry_run else "removed"
    if as_json:
        print_json({"task": task, "dry_run": dry_run, "completed_interrupted": list(rep.completed),
                    "checkpoints": list(rep.checkpoints), "manifests": list(rep.manifests),
                    "scores": list(rep.scores), "purged_again": list(rep.purged_again),
                    "derived_objects": list(rep.derived_objects), "derived_files": [str(f) for f in rep.derived_files]})
        return
    for what in rep.completed:
        err.print(f"completed the interrupted purge of {what}", markup=False)
    for kind, ids in (("checkpoint", rep.checkpoints), ("manifest", rep.manifests), ("scores", rep.scores),
                      ("purged object written again", rep.purged_again)):
        for oid in ids:
            typer.echo(f"{verb} {kind} {oid}")
    for oid in rep.derived_objects:
        typer.echo(f"derived object (kept, holds no samples) {oid}")
    for f in rep.derived_files:
        typer.echo(f"derived file outside the store {f}")
    err.print(f"{verb} {len(rep.checkpoints)} checkpoint(s), {len(rep.manifests)} manifest(s), "
              f"{len(rep.scores)} score set(s) of task {task}"
              + ("" if dry_run else f"; check with `cluctl store verify --erased {task} "
                 + (f"--run {run}`" if run else f"--ref {ref}`")), markup=False)
