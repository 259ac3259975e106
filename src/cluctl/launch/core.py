"""A launch from start to end: register the run, run its seeds, write the results."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..errors import CluctlError, NotFound, UsageError
from .options import Plan
from .progress import Display
from .results import collect, collect_failed, make_plots, write_results
from .runner import Runner

EXIT_OK, EXIT_FAILED, EXIT_SIGTERM, EXIT_SIGINT = 0, 1, 143, 130


@dataclass
class LaunchOutcome:
    run: str
    out: Path | None
    exit_code: int
    failed: dict[int, str] = field(default_factory=dict)  # seed -> one-line error
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> the operation that diverged
    complete: list[int] = field(default_factory=list)
    incomplete: list[int] = field(default_factory=list)
    stopped: bool = False


def register_run(store, plan: Plan) -> None:
    """Write ``runs/<run>/config`` (or check that the stored one is the same run)."""
    ref = f"runs/{plan.run}/config"
    obj = plan.run_object()
    existing = store.get_ref(ref)
    if existing is not None:
        old = store.get_json(existing)
        from .options import stored_given

        # the first launch of a run defines what was given (checkpoint ids depend on it)
        plan.given = stored_given(old)
        obj = plan.run_object()
        if old.get("config") != obj["config"] or old.get("sequence") != obj["sequence"]:
            diff = sorted(k for k in set(old.get("config", {})) | set(obj["config"])
                          if old.get("config", {}).get(k) != obj["config"].get(k))
            what = f"options {', '.join(diff)}" if diff else f"sequence {old.get('sequence')}"
            raise UsageError(f"run {plan.run} already exists in the store with different {what}",
                             f"pick another --name, or continue it with `cluctl launch --resume {plan.run}`")
    oid = store.put_json(obj)
    if existing != oid:
        store.set_ref(ref, oid)


def retrain_refs(plan: Plan, store, run_obj: dict, complete: dict, console) -> tuple[dict | None, int | None]:
    """With ``--reference retrain``: each complete seed's CL-ToW references (SPEC §7),
    training the oracles that the store does not hold yet (in this process, seed by seed)."""
    if plan.reference != "retrain" or not complete:
        return None, None
    import numpy as np

    from .reference import retrain_references

    execution = {"device": plan.devices[0] if plan.devices else None, "data_root": plan.data_root,
                 "download": plan.download, "threads": plan.threads * max(1, plan.concurrency()),
                 "impl": plan.impl, "precision": plan.precision}
    refs, trained = {}, 0

    def note(msg: str) -> None:
        if not plan.quiet:
            console.print(msg, markup=False, highlight=False, soft_wrap=True)

    for s, res in complete.items():
        labels = [r["op"] for r in res]
        tr = np.array([[np.nan if v is None else v for v in r["eval"]["train_acc"]] for r in res], dtype=float)
        te = np.array([[np.nan if v is None else v for v in r["eval"]["test_acc"]] for r in res], dtype=float)
        refs[s], n = retrain_references(store, plan.run, s, labels, plan.n_tasks, tr, te, execution, progress=note)
        trained += n
    note(f"retrain reference: {trained} operation(s) trained for run {plan.run} "
         f"(oracles already in the store are reused)")
    return refs, trained


def jobs_for(plan: Plan) -> list[dict]:
    return [{
        "run": plan.run, "seed": seed, "config": plan.config, "sequence": plan.sequence, "device": device,
        "threads": plan.threads, "impl": plan.impl, "precision": plan.precision, "store": plan.store,
        "data_root": plan.data_root, "download": plan.download, "mia": plan.mia, "given": plan.given,
        "log": list(plan.log), "log_dir": plan.log_dir,
    } for seed, device in plan.assignments()]


def _needs_work(store, plan: Plan, seed: int) -> bool:
    from ..sequences import resolve_sequence
    from .worker import completed_prefix

    n = len(resolve_sequence(plan.sequence, plan.n_tasks, seed))
    ids = completed_prefix(store, plan.run, seed)
    if len(ids) < n:
        return True
    return plan.mia and any(store.get_json(i).get("mia") is None for i in ids[:n])


def _write(plan: Plan, store, run_obj: dict, complete, failed_seeds, refs, trained, mia: bool, console: Console):
    """The results folder and its figures. A folder this call creates is removed again when
    writing fails (a full disk, a read-only place): no half-written results are left; an
    existing folder keeps what it had, and the error says so."""
    import shutil
    import time

    if not plan.quiet:
        console.print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} writing results of {len(complete)} seed(s) to "
                      f"{plan.out}" + (" (and the figures)" if plan.plots else ""), markup=False, soft_wrap=True)
    # the loggers' folder may sit inside the results folder (the default): it is not part
    # of what this call writes, and it stays when writing fails
    logs = os.path.realpath(plan.log_dir) if plan.log_dir else None
    existed = os.path.lexists(plan.out) and (not os.path.isdir(plan.out) or any(
        os.path.realpath(os.path.join(plan.out, e)) != logs for e in os.listdir(plan.out)))
    try:
        out = write_results(plan.out, run_obj, complete, mia=mia, failed=failed_seeds, references=refs,
                            reference=plan.reference, retrain_ops=trained, store=store)
        if plan.plots:
            make_plots(out)
    except (CluctlError, OSError) as e:
        if not existed:
            if logs is not None and os.path.isdir(logs) and os.path.dirname(logs) == os.path.realpath(plan.out):
                for name in os.listdir(plan.out):
                    p = os.path.join(plan.out, name)
                    if os.path.realpath(p) == logs:
                        continue
                    if os.path.isdir(p) and not os.path.islink(p):
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        os.unlink(p)
            else:
                shutil.rmtree(plan.out, ignore_errors=True)
        if isinstance(e, CluctlError):
            e.what = f"{e.what} (the results folder {plan.out} " + ("may be partly rewritten; " if existed else
                                                                    "was not left behind; ") + \
                "the store holds every operation: `cluctl launch --aggregate-only --resume " + plan.run + "` rebuilds it)"
        raise
    return out


def aggregate(plan: Plan, store, console: Console, complete_only_ok: bool = True) -> LaunchOutcome:
    """Rebuild the results folder from the store (``--aggregate-only``)."""
    from .options import _stored_run

    run_obj = _stored_run(store, plan.run)
    complete, incomplete = collect(store, run_obj, plan.seeds)
    failed_seeds = collect_failed(store, run_obj, incomplete)
    if not complete and not failed_seeds:
        raise NotFound(
            f"no seed of run {plan.run} has finished all its operations "
            f"(seeds {', '.join(map(str, plan.seeds))})",
            f"run `cluctl launch --resume {plan.run}` (with the seeds) to finish them",
        )
    if incomplete and not plan.quiet:
        console.print(f"warning: seeds {', '.join(map(str, incomplete))} of run {plan.run} are not finished; "
                      f"the results cover seeds {', '.join(map(str, complete))}", markup=False, soft_wrap=True)
    have_mia = all(r.get("mia") is not None for res in complete.values() for r in res)
    if plan.mia and not have_mia and not plan.quiet:
        console.print(f"warning: some operations of run {plan.run} have no MIA results; compute them with "
                      f"`cluctl launch --resume {plan.run} --mia`", markup=False, soft_wrap=True)
    mia = plan.mia or have_mia
    refs, trained = retrain_refs(plan, store, run_obj, complete, console)
    out = _write(plan, store, run_obj, complete, failed_seeds, refs, trained, mia, console)
    return LaunchOutcome(plan.run, out, EXIT_FAILED if failed_seeds else EXIT_OK, complete=list(complete),
                         incomplete=incomplete, diverged={s: r["op"] for s, (_, r) in failed_seeds.items()})


def execute(plan: Plan, store=None, console: Console | None = None, live: bool | None = None) -> LaunchOutcome:
    """Run a plan: every seed's remaining operations (spawned processes), then the results.
    Returns the outcome; its ``exit_code`` is 0, 1 (a seed failed), 143 (SIGTERM) or 130."""
    from ..api import open_store
    from .progress import stderr_console

    console = console or stderr_console()
    st = store if store is not None else open_store(plan.store)
    st.clean_temp()
    if plan.aggregate_only:
        return aggregate(plan, st, console)
    register_run(st, plan)
    if not plan.quiet:
        devs = ",".join(plan.devices)
        console.print(
            f"run {plan.run}: sequence {plan.sequence}, {plan.config['algo']}, {plan.config['dataset']} "
            f"({plan.n_tasks} tasks), {plan.config['model']} width {plan.config['width']}; "
            f"seeds {', '.join(map(str, plan.seeds))} on {devs} ({plan.per_device} per device, "
            f"{plan.threads} thread(s) each); store {plan.store}",
            markup=False, highlight=False, soft_wrap=True)
        if plan.log:
            offline = "wandb" in plan.log and (os.environ.get("WANDB_MODE") or "offline") == "offline"
            console.print(f"experiment logs ({', '.join(plan.log)}) in {plan.log_dir}" +
                          (f"; wandb runs offline: upload them with `wandb sync {os.path.join(plan.log_dir, 'wandb', 'wandb')}"
                           "/offline-run-*`" if offline else ""), markup=False, highlight=False, soft_wrap=True)
    jobs = [j for j in jobs_for(plan) if _needs_work(st, plan, j["seed"])]
    result = None
    if jobs:
        with Display(console, [(j["seed"], j["device"]) for j in jobs], live=live, quiet=plan.quiet) as display:
            runner = Runner(jobs, plan.per_device, display)
            result = runner.run()
    elif not plan.quiet:
        console.print(f"run {plan.run}: every operation of every seed is already done", markup=False)

    failed = {o.seed: o.error or "failed" for o in (result.failed if result else [])}
    diverged = {o.seed: o.diverged_op for o in (result.failed if result else []) if o.diverged_op}
    if result is not None and result.stop_signal is not None:
        code = EXIT_SIGINT if result.stop_signal == signal.SIGINT else EXIT_SIGTERM
        if not plan.quiet:
            console.print(f"stopped ({signal.Signals(result.stop_signal).name}); finished operations are in the "
                          f"store: resume with `cluctl launch --resume {plan.run}` or the same command",
                          markup=False, soft_wrap=True)
        return LaunchOutcome(plan.run, None, code, failed=failed, stopped=True)

    run_obj = plan.run_object()
    complete, incomplete = collect(st, run_obj, plan.seeds)
    failed_seeds = collect_failed(st, run_obj, incomplete)
    out = None
    if complete or failed_seeds:
        refs, trained = retrain_refs(plan, st, run_obj, complete, console)
        out = _write(plan, st, run_obj, complete, failed_seeds, refs, trained, plan.mia, console)
    code = EXIT_FAILED if failed or incomplete else EXIT_OK
    if incomplete and complete and not plan.quiet:
        console.print(f"warning: the results cover seeds {', '.join(map(str, complete))} only",
                      markup=False, soft_wrap=True)
    return LaunchOutcome(plan.run, out, code, failed=failed, complete=list(complete), incomplete=incomplete,
                         diverged=diverged)
