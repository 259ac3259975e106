"""The results folder of a run, rebuilt from the store (also by ``--aggregate-only``).

Layout (every file written atomically: a temp file in the same folder, then os.replace)::

    <out>/summary.json
    <out>/seed-<s>/{test_acc,test_conf,train_acc,train_conf}.csv
    <out>/mean/<same four>.csv, <out>/std/<same four>.csv
    <out>/metrics.csv      seed,row,op,retain_acc,forget_acc,tow,clu_mix,steps,stopped
    <out>/mia.csv          seed,row,op,task,status,attack,members,acc,auc,cv_acc,efficacy (with --mia)

Matrices: first column ``op`` (labels L0/U3), then one column per task ``0``..``N-1``; row
i is the state after operation i. Numbers are written with Python's shortest round-trip
``repr``; an empty cell is a missing value (null). ``mean``/``std`` are over seeds, row by
row (labels from the first seed); std is the population std (numpy's default, ddof=0: 0
for a single seed).

Outcomes are never hidden: ``metrics.csv`` has each operation's ``steps`` and ``stopped``
(``done`` for learning; ``stop-acc``, ``max-epochs`` or ``reset`` for unlearning;
``diverged`` for the operation at which a seed failed, ``not-run`` after it). A seed that
diverged keeps its tables up to the failure (empty rows after), is listed under
``failed`` in ``summary.json`` and is left out of ``mean/``, ``std/`` and the summary's
mean and std.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import write_text
from ..errors import NotFound, UsageError
from .worker import MATRICES, completed_prefix, seed_failure

SUMMARY_KEYS = ("acc", "bwt", "final_forget_acc", "final_retain_acc", "final_tow", "final_clu_mix")
MIA_COLUMNS = ("seed", "row", "op", "task", "status", "attack", "members", "acc", "auc", "cv_acc", "efficacy")
METRIC_COLUMNS = ("seed", "row", "op", "retain_acc", "forget_acc", "tow", "clu_mix", "steps", "stopped")


# ----------------------------------------------------------------- atomic files


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`cluctl.atomic.write_text`)."""
    write_text(path, text)


def fmt(value: Any) -> str:
    """A CSV cell: shortest round-trip repr for floats, empty for None/NaN."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "" if not math.isfinite(v) else repr(v)
    text = str(value)
    return f'"{text}"' if ("," in text or '"' in text) else text


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    lines = [",".join(header)]
    lines += [",".join(fmt(c) for c in row) for row in rows]
    return "\n".join(lines) + "\n"


def _json_value(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


# ----------------------------------------------------------------- reading the store


def seed_results(store, run: str, seed: int, n_ops: int) -> list[dict] | None:
    """The seed's op-results if all ``n_ops`` operations are finished, else None."""
    ids = completed_prefix(store, run, seed)
    if len(ids) < n_ops:
        return None
    return [store.get_json(oid) for oid in ids[:n_ops]]


def collect_failed(store, run_obj: dict, seeds: list[int]) -> dict[int, tuple[list[dict], dict]]:
    """{seed: (op-results before the failure, failure record)} for seeds that diverged."""
    out = {}
    for s in seeds:
        ids = completed_prefix(store, run_obj["run"], s)
        rec = seed_failure(store, run_obj["run"], s, len(ids))
        if rec is not None:
            out[s] = ([store.get_json(oid) for oid in ids], rec)
    return out


def op_stopped(result: dict) -> str:
    """How an operation ended: done (learning), stop-acc / max-epochs / reset (unlearning)."""
    summ = result.get("summary") or {}
    return str(summ.get("stopped") or "done")


def collect(store, run_obj: dict, seeds: list[int]) -> tuple[dict[int, list[dict]], list[int]]:
    """({seed: op-results} for complete seeds, [incomplete seeds])."""
    from ..sequences import resolve_sequence

    complete: dict[int, list[dict]] = {}
    incomplete: list[int] = []
    for s in seeds:
        n = len(resolve_sequence(run_obj["sequence"], int(run_obj["n_tasks"]), s))
        res = seed_results(store, run_obj["run"], s, n)
        if res is None:
            incomplete.append(s)
        else:
            complete[s] = res
    return complete, incomplete


# ----------------------------------------------------------------- writing


def _matrix(results: list[dict], key: str) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r["eval"][key]] for r in results], dtype=float)


def _stats(values: list[Any]) -> tuple[Any, Any]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    arr = np.array(vals)
    return float(arr.mean()), float(arr.std())


def clean_dead_temp_files(folder: Path) -> None:
    """Remove ``.<name>.<host>.<pid>.<hex>.tmp`` files left by killed writers on this host."""
    host = socket.gethostname()
    for f in list(folder.glob(".*.tmp")) + list(folder.glob("*/.*.tmp")):
        parts = f.name.split(".")
        try:
            pid = int(parts[-3])
        except (IndexError, ValueError):
            continue
        if f".{host}.{pid}." not in f.name:
            continue
        try:
            os.kill(pid, 0)
            if pid != os.getpid():
                continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            f.unlink()
        except OSError:
            pass


def write_results(out: str | os.PathLike, run_obj: dict, per_seed: dict[int, list[dict]], mia: bool = False,
                  provenance_extra: dict | None = None,
                  failed: dict[int, tuple[list[dict], dict]] | None = None,
                  references: dict[int, list] | None = None, reference: str = "prefix",
                  retrain_ops: int | None = None) -> Path:
    """Write the results folder for the complete seeds in ``per_seed`` (seed order kept)
    and the seeds in ``failed`` (see :func:`collect_failed`): tables up to the failure,
    the failure in ``metrics.csv`` and ``summary.json``, left out of means and stds."""
    from ..metrics import final_metrics, per_op_table
    from ..sequences import resolve_sequence

    failed = dict(failed or {})
    if not per_seed and not failed:
        raise NotFound(f"no finished seed to write results for run {run_obj['run']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clean_dead_temp_files(out)
    seeds = list(per_seed)
    n_tasks = int(run_obj["n_tasks"])
    k = int(run_obj["k"])
    cols = ["op"] + [str(t) for t in range(n_tasks)]
    if seeds:
        labels0 = [r["op"] for r in per_seed[seeds[0]]]
    else:
        s0 = next(iter(failed))
        labels0 = [str(o) for o in resolve_sequence(run_obj["sequence"], n_tasks, s0)]
    n_ops = len(labels0)
    if any(len(per_seed[s]) != n_ops for s in seeds):
        raise UsageError("seeds of one run have different numbers of operations")

    mats: dict[str, list[np.ndarray]] = {m: [] for m in MATRICES}
    seed_entries = []
    metric_rows: list[list[Any]] = []
    mia_rows: list[list[Any]] = []
    for s in seeds:
        res = per_seed[s]
        labels = [r["op"] for r in res]
        for m in MATRICES:
            mat = _matrix(res, m)
            mats[m].append(mat)
            atomic_write_text(out / f"seed-{s}" / f"{m}.csv",
                              _csv(cols, [[labels[i], *mat[i].tolist()] for i in range(n_ops)]))
        test, train = mats["test_acc"][-1], mats["train_acc"][-1]
        try:
            ref = (references or {}).get(s)
            fm = final_metrics(labels, test, train, k, reference=ref)
            table = per_op_table(labels, test, train, k, reference=ref)
            for i, row in table.iterrows():
                metric_rows.append([s, int(i), row["op"], row["retain_acc"], row["forget_acc"], row["tow"],
                                    row["clu_mix"], int(res[i].get("summary", {}).get("steps") or 0),
                                    op_stopped(res[i])])
        except UsageError:  # e.g. a task without test samples (NaN accuracy): no metrics
            fm = {key: None for key in SUMMARY_KEYS}
        op_wall = [float(r.get("summary", {}).get("op_wall_s") or 0.0) for r in res]
        op_steps = [int(r.get("summary", {}).get("steps") or 0) for r in res]
        seed_entries.append({"seed": s, "status": "complete", "ops": labels, **fm, "wall_s": round(sum(op_wall), 4),
                             "op_wall_s": op_wall, "op_steps": op_steps, "op_stopped": [op_stopped(r) for r in res]})
        for i, r in enumerate(res):
            for row in r.get("mia") or []:
                mia_rows.append([s, i, labels[i], row.get("task"), row.get("status"), row.get("attack"),
                                 row.get("members"), row.get("acc"), row.get("auc"), row.get("cv_acc"),
                                 row.get("efficacy")])

    failures = []
    for s, (res, rec) in sorted(failed.items()):
        labels = [str(o) for o in resolve_sequence(run_obj["sequence"], n_tasks, s)]
        done = len(res)
        for m in MATRICES:
            mat = np.full((len(labels), n_tasks), np.nan)
            if done:
                mat[:done] = _matrix(res, m)
            atomic_write_text(out / f"seed-{s}" / f"{m}.csv",
                              _csv(cols, [[labels[i], *mat[i].tolist()] for i in range(len(labels))]))
        rows_metrics = None
        if done:
            try:
                rows_metrics = per_op_table(labels[:done], _matrix(res, "test_acc"), _matrix(res, "train_acc"), k)
            except UsageError:
                rows_metrics = None
        for i in range(len(labels)):
            if i < done:
                r = rows_metrics.iloc[i] if rows_metrics is not None else None
                vals = [None] * 4 if r is None else [r["retain_acc"], r["forget_acc"], r["tow"], r["clu_mix"]]
                metric_rows.append([s, i, labels[i], *vals, int(res[i].get("summary", {}).get("steps") or 0),
                                    op_stopped(res[i])])
            elif i == done:
                metric_rows.append([s, i, labels[i], None, None, None, None,
                                    int((rec.get("summary") or {}).get("steps") or 0), "diverged"])
            else:
                metric_rows.append([s, i, labels[i], None, None, None, None, None, "not-run"])
        fs = rec.get("summary") or {}
        failures.append({"seed": s, "row": done, "op": labels[done] if done < len(labels) else rec.get("op"),
                         "stopped": "diverged", "steps": fs.get("steps"), "reason": fs.get("reason"),
                         "error": rec.get("error")})
        seed_entries.append({"seed": s, "status": "failed", "ops": labels, **{key: None for key in SUMMARY_KEYS},
                             "completed_ops": done, "failed_op": failures[-1],
                             "op_steps": [int(r.get("summary", {}).get("steps") or 0) for r in res],
                             "op_stopped": [op_stopped(r) for r in res] + ["diverged"]})
    metric_rows.sort(key=lambda r: (r[0], r[1]))

    if not seeds:
        for d in ("mean", "std"):
            for m in MATRICES:
                _remove(out / d / f"{m}.csv")
    for m in MATRICES if seeds else ():
        stack = np.stack(mats[m])  # seeds x ops x tasks
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(stack, axis=0) if np.isnan(stack).any() else stack.mean(axis=0)
            std = np.nanstd(stack, axis=0) if np.isnan(stack).any() else stack.std(axis=0)
        atomic_write_text(out / "mean" / f"{m}.csv", _csv(cols, [[labels0[i], *mean[i].tolist()] for i in range(n_ops)]))
        atomic_write_text(out / "std" / f"{m}.csv", _csv(cols, [[labels0[i], *std[i].tolist()] for i in range(n_ops)]))

    atomic_write_text(out / "metrics.csv", _csv(list(METRIC_COLUMNS), metric_rows))
    if mia:
        atomic_write_text(out / "mia.csv", _csv(list(MIA_COLUMNS), mia_rows))
    else:
        _remove(out / "mia.csv")
    # seed folders of an earlier aggregation that this one does not cover
    keep = {f"seed-{s}" for s in list(seeds) + list(failed)}
    for d in out.glob("seed-*"):
        if d.is_dir() and d.name not in keep and d.name[5:].isdigit():
            for m in MATRICES:
                _remove(d / f"{m}.csv")
            try:
                d.rmdir()
            except OSError:
                pass

    mean, std = {}, {}
    complete_entries = [e for e in seed_entries if e["status"] == "complete"]
    for key in SUMMARY_KEYS + ("wall_s",):
        mean[key], std[key] = _stats([e[key] for e in complete_entries])
    cfg = run_obj["config"]
    execs = [r.get("execution") or {} for s in seeds for r in per_seed[s]]
    execs += [r.get("execution") or {} for res, _ in failed.values() for r in res]
    prov = {
        "cluctl": __version__, "torch": _torch_version(), "device": _joined(e.get("device") for e in execs),
        "threads": _single(e.get("threads") for e in execs), "impl": _joined(e.get("impl") for e in execs),
        "precision": _joined(e.get("precision") for e in execs), "python": platform.python_version(),
        "host": _joined(e.get("host") for e in execs) or socket.gethostname(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    prov.update(provenance_extra or {})
    summary = {
        "format": 1,
        "run": run_obj["run"], "sequence": run_obj["sequence"], "ops": labels0,
        "algo": cfg["algo"], "learn_algo": cfg["learn_algo"], "dataset": cfg["dataset"],
        "n_tasks": n_tasks, "k": k, "config": cfg, "provenance": prov,
        "seed_list": seeds, "std_ddof": 0,
        "seeds": seed_entries, "mean": mean, "std": std,
        # operations that did not end at their goal: diverged (the seed stopped there) and
        # unlearning requests that hit --max-epochs without reaching the stop accuracy
        "failed": failures,
        # CL-ToW reference: "prefix" (SPEC §7) or "retrain" (with the operations trained for it)
        "reference": reference, "retrain_ops_trained": retrain_ops,
        "max_epochs_ops": [{"seed": e["seed"], "row": i, "op": e["ops"][i]}
                           for e in seed_entries for i, st in enumerate(e["op_stopped"]) if st == "max-epochs"],
    }
    atomic_write_text(out / "summary.json", json.dumps(_json_value(summary), indent=2, allow_nan=False) + "\n")
    return out


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _torch_version() -> str | None:
    mod = sys.modules.get("torch")
    if mod is None:
        try:
            import torch as mod  # noqa: F811
        except ImportError:  # pragma: no cover
            return None
    return str(mod.__version__)


def _joined(values) -> str | None:
    seen: list[str] = []
    for v in values:
        if v is not None and str(v) not in seen:
            seen.append(str(v))
    return ",".join(seen) if seen else None


def _single(values) -> Any:
    seen = []
    for v in values:
        if v is not None and v not in seen:
            seen.append(v)
    if not seen:
        return None
    return seen[0] if len(seen) == 1 else seen


def make_plots(out: Path, warn=None) -> Path | None:
    """The standard figures in ``<out>/plots/`` when ``cluctl.plots.standard_figures`` exists."""
    try:
        from ..plots import standard_figures  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return None
    target = out / "plots"
    standard_figures([str(out)], str(target), fmt="png")
    return target
