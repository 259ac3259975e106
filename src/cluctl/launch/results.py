"""The results folder of a run, rebuilt from the store (also by ``--aggregate-only``).

Layout (every file written atomically: a temp file in the same folder, then os.replace)::

    <out>/summary.json     run, config, provenance, per-seed and mean/std final metrics
    <out>/run.toml         the run's launch options: `cluctl launch --config run.toml` runs it again
    <out>/results.csv      tidy: run,algo,dataset,seed,row,op,task,status,metric,value (one row per value)
    <out>/seed-<s>/{test_acc,test_conf,train_acc,train_conf}.csv
    <out>/mean/<same four>.csv, <out>/std/<same four>.csv
    <out>/metrics.csv      seed,row,op,retain_acc,forget_acc,tow,clu_mix,steps,stopped
    <out>/mia.csv          seed,row,op,task,status,attack,members,acc,auc,cv_acc,efficacy (with --mia)

Matrices: columns ``row`` (0..n-1: row i is the state after operation i; an operation such
as ``L1`` may occur twice in a sequence, the row tells them apart), ``op`` (labels L0/U3),
then one column per task ``0``..``N-1``. Folders written before the ``row`` column have
``op`` first; :func:`cluctl.plots.results.load_results` reads both. Every CSV is written by
Python's :mod:`csv` module (cells with commas or quotes are quoted, quotes doubled);
numbers use Python's shortest round-trip ``repr``; an empty cell is a missing value
(null). ``mean``/``std`` are over seeds, row by row (labels from the first seed); std is
the sample standard deviation (ddof = 1), empty where fewer than two seeds have a value;
``summary.json`` says so in ``std_ddof`` and its ``std`` is null for one seed.

``results.csv`` holds every number of the seed tables and of ``metrics.csv`` (and of
``mia.csv``, and each seed's ACC and BWT) in one long table::

    pd.read_csv("results/<run>/results.csv")

``task``/``status``: for the per-task values (``test_acc``, ``test_conf``, ``train_acc``,
``train_conf``, ``mia_<attack>_<members>_<measure>``) the task and its status after the
operation (learned, forgotten, unseen); for the per-operation metrics (``retain_acc``,
``forget_acc``, ``tow``, ``clu_mix``, ``steps``) ``task`` is empty and
``status`` says how the operation ended (the ``stopped`` column of ``metrics.csv``); for
``acc``/``bwt`` ``row``, ``op`` and ``task`` are empty and ``status`` is the seed's
(complete or failed).

Outcomes are never hidden: ``metrics.csv`` has each operation's ``steps`` and ``stopped``
(``done`` for learning; ``stop-acc``, ``max-epochs`` or ``reset`` for unlearning;
``diverged`` for the operation at which a seed failed, ``not-run`` after it). A seed that
diverged keeps its tables up to the failure (empty rows after), is listed under
``failed`` in ``summary.json`` and is left out of ``mean/``, ``std/`` and the summary's
mean and std.

Provenance (``summary.json`` ``provenance``): the command line (``command``, sys.argv),
library versions (``cluctl``, ``torch``, ``numpy``, ``python``), the dataset fingerprint
and the memorization scores used (``mem_scores``, per seed; read from the checkpoints when
the store is given), device, threads, impl, precision, host, creation time, and
``run_toml``.
"""

from __future__ import annotations

import csv
import io
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
TIDY_COLUMNS = ("run", "algo", "dataset", "seed", "row", "op", "task", "status", "metric", "value")
OP_METRICS = ("retain_acc", "forget_acc", "tow", "clu_mix")
MIA_MEASURES = ("acc", "auc", "cv_acc", "efficacy")
STD_DDOF = 1


# ----------------------------------------------------------------- atomic files


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`cluctl.atomic.write_text`)."""
    write_text(path, text)


def fmt(value: Any) -> str:
    """A CSV cell's text: shortest round-trip repr for floats, empty for None/NaN
    (quoting is the :mod:`csv` writer's job)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "" if not math.isfinite(v) else repr(v)
    return str(value)


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    """CSV text through :mod:`csv` (minimal quoting, ``\\n`` line ends)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([fmt(c) for c in row] for row in rows)
    return buf.getvalue()


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
    """(mean, sample std with ddof 1) of the finite values; std None below two values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    arr = np.array(vals)
    return float(arr.mean()), (float(arr.std(ddof=STD_DDOF)) if len(vals) > STD_DDOF else None)


def mean_std(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof 1) over axis 0, ignoring NaN; std NaN where fewer than
    two values (mean NaN where none). No numpy warnings for empty slices."""
    ok = np.isfinite(stack)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.where(ok, stack, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
        dev = np.where(ok, stack - mean, 0.0)
        std = np.where(n > STD_DDOF, np.sqrt((dev ** 2).sum(axis=0) / np.maximum(n - STD_DDOF, 1)), np.nan)
    return mean, std


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


def _status_after(labels: list[str], n_tasks: int) -> list[list[str]]:
    """Each task's status after each operation: learned, forgotten or unseen."""
    cur = ["unseen"] * n_tasks
    out = []
    for op in labels:
        t = int(op[1:])
        if 0 <= t < n_tasks:
            cur[t] = "learned" if op[0] == "L" else "forgotten"
        out.append(list(cur))
    return out


def _matrix_rows(labels: list[str], mat: np.ndarray) -> list[list[Any]]:
    return [[i, labels[i], *mat[i].tolist()] for i in range(len(labels))]


def _checkpoint_facts(store, per_seed: dict[int, list[dict]], failed: dict) -> dict[int, dict]:
    """{seed: {"dataset_fingerprint", "mem_scores"}} from each seed's last checkpoint's
    metadata (empty when there is no store or a checkpoint cannot be read)."""
    if store is None:
        return {}
    from ..store.checkpoint import read_checkpoint_meta

    out = {}
    for s, res in list(per_seed.items()) + [(s, r) for s, (r, _) in failed.items()]:
        for r in reversed(res):
            try:
                meta = read_checkpoint_meta(store, r["checkpoint"])
            except Exception:  # noqa: BLE001 - provenance is best effort; the numbers come from op-results
                continue
            out[s] = {"dataset_fingerprint": meta.get("dataset_fingerprint"), "mem_scores": meta.get("scores")}
            break
    return out


def write_results(out: str | os.PathLike, run_obj: dict, per_seed: dict[int, list[dict]], mia: bool = False,
                  provenance_extra: dict | None = None,
                  failed: dict[int, tuple[list[dict], dict]] | None = None,
                  references: dict[int, list] | None = None, reference: str = "prefix",
                  retrain_ops: int | None = None, store=None, command: list[str] | None = None) -> Path:
    """Write the results folder for the complete seeds in ``per_seed`` (seed order kept)
    and the seeds in ``failed`` (see :func:`collect_failed`): tables up to the failure,
    the failure in ``metrics.csv`` and ``summary.json``, left out of means and stds.
    ``store``: read the dataset fingerprint and scores id from the checkpoints;
    ``command``: the command line to record (default ``sys.argv``)."""
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
    cfg = run_obj["config"]
    cols = ["row", "op"] + [str(t) for t in range(n_tasks)]
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
    # tidy rows by seed: (seed, row, order, ...) so that results.csv is sorted like the tables
    tidy: list[tuple] = []
    ident = (run_obj["run"], cfg.get("algo"), cfg.get("dataset"))

    def tidy_tables(s: int, labels: list[str], tables: dict[str, np.ndarray], done: int) -> None:
        status = _status_after(labels, n_tasks)
        for i in range(done):
            for j, m in enumerate(MATRICES):
                for t in range(n_tasks):
                    tidy.append(((s, i, 0, j, t), [*ident, s, i, labels[i], t, status[i][t], m, tables[m][i, t]]))

    def tidy_mia(s: int, i: int, label: str, row: dict) -> None:
        members = row.get("members")
        name = "mia_" + "_".join(str(x) for x in (row.get("attack"), members) if x not in (None, ""))
        for j, measure in enumerate(MIA_MEASURES):
            if row.get(measure) is not None:
                tidy.append(((s, i, 2, row.get("task") or 0, len(tidy)),
                             [*ident, s, i, label, row.get("task"), row.get("status"), f"{name}_{measure}",
                              row.get(measure)]))

    for s in seeds:
        res = per_seed[s]
        labels = [r["op"] for r in res]
        tables = {}
        for m in MATRICES:
            mat = _matrix(res, m)
            mats[m].append(mat)
            tables[m] = mat
            atomic_write_text(out / f"seed-{s}" / f"{m}.csv", _csv(cols, _matrix_rows(labels, mat)))
        tidy_tables(s, labels, tables, n_ops)
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
                tidy_mia(s, i, labels[i], row)

    failures = []
    for s, (res, rec) in sorted(failed.items()):
        labels = [str(o) for o in resolve_sequence(run_obj["sequence"], n_tasks, s)]
        done = len(res)
        tables = {}
        for m in MATRICES:
            mat = np.full((len(labels), n_tasks), np.nan)
            if done:
                mat[:done] = _matrix(res, m)
            tables[m] = mat
            atomic_write_text(out / f"seed-{s}" / f"{m}.csv", _csv(cols, _matrix_rows(labels, mat)))
        tidy_tables(s, labels, tables, done)
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
        for i, r in enumerate(res):
            for row in r.get("mia") or []:
                tidy_mia(s, i, labels[i], row)
    metric_rows.sort(key=lambda r: (r[0], r[1]))

    # per-operation metrics and the seeds' ACC/BWT in the tidy table (no wall times: the same
    # results give the same bytes; they are in summary.json)
    for r in metric_rows:
        s, i, label = r[0], r[1], r[2]
        values = dict(zip(OP_METRICS, r[3:7]), steps=r[7])
        for j, (name, v) in enumerate(values.items()):
            tidy.append(((s, i, 1, j, 0), [*ident, s, i, label, None, r[8], name, v]))
    for e in seed_entries:
        for j, key in enumerate(("acc", "bwt")):
            tidy.append(((e["seed"], -1, 0, j, 0), [*ident, e["seed"], None, None, None, e["status"], key, e.get(key)]))
    tidy.sort(key=lambda x: x[0])

    if not seeds:
        for d in ("mean", "std"):
            for m in MATRICES:
                _remove(out / d / f"{m}.csv")
    for m in MATRICES if seeds else ():
        mean, std = mean_std(np.stack(mats[m]))  # seeds x ops x tasks
        atomic_write_text(out / "mean" / f"{m}.csv", _csv(cols, _matrix_rows(labels0, mean)))
        atomic_write_text(out / "std" / f"{m}.csv", _csv(cols, _matrix_rows(labels0, std)))

    atomic_write_text(out / "metrics.csv", _csv(list(METRIC_COLUMNS), metric_rows))
    atomic_write_text(out / "results.csv", _csv(list(TIDY_COLUMNS), [row for _, row in tidy]))
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
    facts = _checkpoint_facts(store, per_seed, failed)
    for e in seed_entries:
        if e["seed"] in facts:
            e["mem_scores"] = facts[e["seed"]]["mem_scores"]
    execs = [r.get("execution") or {} for s in seeds for r in per_seed[s]]
    execs += [r.get("execution") or {} for res, _ in failed.values() for r in res]
    prov = {
        "cluctl": __version__, "torch": _torch_version(), "numpy": np.__version__, "python": platform.python_version(),
        "device": _joined(e.get("device") for e in execs),
        "threads": _single(e.get("threads") for e in execs), "impl": _joined(e.get("impl") for e in execs),
        "precision": _joined(e.get("precision") for e in execs),
        "host": _joined(e.get("host") for e in execs) or socket.gethostname(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [str(a) for a in (sys.argv if command is None else command)],
        "dataset_fingerprint": _single(f.get("dataset_fingerprint") for f in facts.values()),
        "mem_scores": _single(f.get("mem_scores") for f in facts.values()) or cfg.get("mem_scores"),
        "run_toml": "run.toml",
    }
    prov.update(provenance_extra or {})
    all_seeds = sorted(list(seeds) + list(failed))
    atomic_write_text(out / "run.toml", run_toml(run_obj, all_seeds, mia=mia, reference=reference, execs=execs))
    summary = {
        "format": 1,
        "run": run_obj["run"], "sequence": run_obj["sequence"], "ops": labels0,
        "algo": cfg["algo"], "learn_algo": cfg["learn_algo"], "dataset": cfg["dataset"],
        "n_tasks": n_tasks, "k": k, "config": cfg, "provenance": prov,
        # std: sample standard deviation over the complete seeds (ddof 1), null for one seed
        "seed_list": seeds, "std_ddof": STD_DDOF,
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


# ----------------------------------------------------------------- run.toml


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    text = json.dumps(str(v), ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's
    return text.replace("\x7f", "\\u007f")


def run_toml(run_obj: dict, seeds: list[int], mia: bool = False, reference: str = "prefix",
             execs: list[dict] | None = None) -> str:
    """The run's launch options as TOML that ``cluctl launch --config run.toml`` accepts:
    the sequence, the seeds, the scientific options given to the first launch (with
    their resolved values; the others follow the same defaults and rules, listed as
    comments), the run name when it is not the automatic one, impl, precision, --mia and
    the CL-ToW reference. Devices and threads are commented out (they depend on the
    machine and never change a run's identity)."""
    from .options import run_name, stored_given

    cfg = dict(run_obj.get("config") or {})
    given = stored_given(run_obj)
    execs = execs or []
    lines = [f"# cluctl launch --config run.toml  (run {run_obj['run']}, written by cluctl {__version__})",
             "# the options of this run; flags given with --config override them", ""]
    lines.append(f"sequence = {_toml_value(run_obj['sequence'])}")
    lines.append(f"seed_list = {_toml_value([int(s) for s in seeds])}")
    try:
        auto = run_name(cfg, run_obj["sequence"])
    except Exception:  # noqa: BLE001 - a config this version cannot hash: keep the name
        auto = None
    if auto != run_obj["run"]:
        lines.append(f"name = {_toml_value(run_obj['run'])}")
    for key in sorted(given):
        if given[key] is not None:
            lines.append(f"{key} = {_toml_value(given[key])}")
    impl = _single(e.get("impl") for e in execs)
    precision = _single(e.get("precision") for e in execs)
    if isinstance(impl, str):
        lines.append(f"impl = {_toml_value(impl)}")
    if isinstance(precision, str):
        lines.append(f"precision = {_toml_value(precision)}")
    lines.append(f"mia = {_toml_value(bool(mia))}")
    lines.append(f"reference = {_toml_value(reference)}")
    rest = [key for key in sorted(cfg) if key not in given and cfg[key] is not None]
    if rest:
        lines += ["", "# defaults and rules this run resolved to (not given; uncomment to pin one):"]
        lines += [f"# {key} = {_toml_value(cfg[key])}" for key in rest]
    devices = _joined(e.get("device") for e in execs)
    threads = _single(e.get("threads") for e in execs)
    if devices or threads:
        lines += ["", "# where it ran (not part of the run's identity):"]
        if devices:
            lines.append(f"# devices = {_toml_value(devices)}")
        if isinstance(threads, int):
            lines.append(f"# threads = {threads}")
    return "\n".join(lines) + "\n"


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
