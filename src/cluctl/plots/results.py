"""Reading a launch's results folder (the layout ``cluctl launch`` writes).

```
results/<run>/
  summary.json                      run, sequence, ops, algo, dataset, n_tasks, k, seeds, mean, std
  seed-<s>/{test,train}_{acc,conf}.csv   columns "row" (0..n-1; absent in folders written before
                                    it), "op", then one column per task; row i = after op i
  mean/..., std/...                 the same four tables aggregated (used only when no seed-* exists);
                                    std: ddof 1, empty for one seed (ddof 0 in older folders)
  metrics.csv                       seed,row,op,retain_acc,forget_acc,tow,clu_mix,steps,stopped
  results.csv                       the same numbers in one long table (not read here)
  mia.csv                           optional: seed,row,op,task,status,attack,members,acc,auc,cv_acc,efficacy
```

Nothing here depends on how many seeds or tasks there are; keys missing from
``summary.json`` are recovered from the tables where they can be (ops from the
CSVs' ``op`` column, n_tasks from their columns, k from the dataset's class count).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cluctl.errors import UsageError

__all__ = ["Results", "load_results", "summary_value", "TABLES", "classes_per_task"]

#: the four per-seed tables, by attribute name -> file name
TABLES = {
    "test_acc": "test_acc.csv",
    "test_conf": "test_conf.csv",
    "train_acc": "train_acc.csv",
    "train_conf": "train_conf.csv",
}

def classes_per_task(summary: dict, n_tasks: int | None = None) -> int | None:
    """k of a results folder: summary.json's "k", else the registered dataset's classes
    divided by the number of tasks (the one rule every reader of a results folder uses)."""
    k = summary.get("k")
    if isinstance(k, (int, float)) and not isinstance(k, bool) and k >= 1:
        return int(k)
    n_tasks = n_tasks or summary.get("n_tasks")
    dataset = summary.get("dataset") or (summary.get("config") or {}).get("dataset") or "?"
    classes = _dataset_classes(str(dataset))
    if classes and isinstance(n_tasks, int) and n_tasks >= 1 and classes % n_tasks == 0:
        return classes // n_tasks
    return None


def _dataset_classes(name: str) -> int | None:
    """Classes of a registered dataset (to recover k = C / N when summary.json lacks "k")."""
    from cluctl.data.registry import kind_of

    kind = kind_of(name)
    return kind.classes if kind is not None else None

_SEED_DIR = re.compile(r"^seed-(\d+)$")
_OP = re.compile(r"^[LU]\d+$")


@dataclass
class Results:
    """One launch's results, ready to plot.

    ``tables[name]`` is a float array (n_seeds, n_ops, n_tasks) for each of
    :data:`TABLES` (NaN where a seed has no row). ``seed_ops[j]`` are seed j's op
    labels (they differ between seeds only for seed-dependent sequences such as
    E4); ``ops`` is one label per row: the common one, or ``"U*"``/``"L*"``/``"#i"``
    where seeds disagree. ``metrics`` and ``mia`` are the long-format CSVs
    (``None`` when absent; metrics are recomputed from the tables when
    ``metrics.csv`` is missing).
    """

    path: str
    run: str
    algo: str
    dataset: str
    n_tasks: int
    k: int | None
    sequence: str | None
    ops: list[str]
    seeds: list[int]
    seed_ops: list[list[str]]
    tables: dict[str, np.ndarray]
    summary: dict
    metrics: pd.DataFrame | None = None
    mia: pd.DataFrame | None = None
    learn_algo: str | None = None
    from_aggregate: bool = False  # True when only mean/ (and std/) existed
    std_tables: dict[str, np.ndarray] = field(default_factory=dict)  # only with from_aggregate

    @property
    def n_ops(self) -> int:
        return len(self.ops)

    @property
    def n_seeds(self) -> int:
        """Seeds behind the numbers (from summary.json when only mean/ tables exist)."""
        if self.from_aggregate:
            return len(_summary_seeds(self.summary)) or 1
        return len(self.seeds)

    @property
    def chance(self) -> float | None:
        return 1.0 / self.k if self.k else None

    def mean_std(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sample standard deviation over seeds (ddof 1) of one table: two
        (n_ops, n_tasks) arrays; mean NaN where no seed has a value, std NaN where
        fewer than two have (from std/ as written when only mean/ exists)."""
        if self.from_aggregate:
            mean = self.tables[name][0]
            std = self.std_tables.get(name)
            return mean, (np.full_like(mean, np.nan) if std is None else std)
        return _nanmean_std(self.tables[name])

    def metric(self, column: str) -> np.ndarray:
        """(len(seeds), n_ops) array of a metrics.csv column (tow, clu_mix, retain_acc,
        forget_acc); NaN for null cells."""
        out = np.full((len(self.seeds), self.n_ops), np.nan)
        if self.metrics is None or column not in self.metrics.columns:
            return out
        df = self.metrics
        index = {s: j for j, s in enumerate(self.seeds)}
        for s, row, v in zip(df["seed"], df["row"], pd.to_numeric(df[column], errors="coerce")):
            j = index.get(s)
            if j is not None and 0 <= row < self.n_ops:
                out[j, row] = v
        return out


STD_DDOF = 1  # every std a results folder or a figure reports is the sample std


def _nanmean_std(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std (ddof 1) over axis 0 ignoring NaN, without numpy's
    empty-slice warnings; std NaN where fewer than two values."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=0)
    total = np.where(ok, a, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.where(ok, a - mean, 0.0)
        std = np.where(n > STD_DDOF, np.sqrt((dev**2).sum(axis=0) / np.maximum(n - STD_DDOF, 1)), np.nan)
    return mean, std


def _fail(path: str, what: str, hint: str):
    raise UsageError(f"{path}: {what}", hint)


def _read_table(path: str, n_tasks_hint: int | None) -> tuple[list[str], np.ndarray]:
    """One accuracy/confidence CSV -> (op labels, (n_rows, n_tasks) floats)."""
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        _fail(path, f"cannot read the table ({' '.join(str(exc).split())[:120]})", "re-run or re-aggregate the launch")
    if "op" not in df.columns:
        _fail(path, "has no 'op' column", "the first column must be the op label (L0, U3, ...)")
    if "row" in df.columns:  # written since the row column exists: rows 0..n-1 in order
        rows = pd.to_numeric(df["row"], errors="coerce")
        if rows.isna().any() or rows.tolist() != list(range(len(df))):
            _fail(path, "its 'row' column is not 0, 1, ..., n-1", "re-run or re-aggregate the launch")
    task_cols = [c for c in df.columns if c not in ("op", "row")]
    try:
        ids = sorted(int(c) for c in task_cols)
    except ValueError:
        _fail(path, f"task columns must be 0..N-1, got {task_cols}", "one column per task, named by its id")
    if ids != list(range(len(ids))) or not ids:
        _fail(path, f"task columns must be 0..N-1, got {task_cols}", "one column per task, named by its id")
    if n_tasks_hint is not None and len(ids) != n_tasks_hint:
        _fail(path, f"has {len(ids)} task columns but summary.json says n_tasks = {n_tasks_hint}",
              "the folder mixes runs; re-run the launch")
    values = df[[str(t) for t in ids]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    ops = [str(o).strip() for o in df["op"].tolist()]
    for o in ops:
        if not _OP.match(o):
            _fail(path, f"bad op label {o!r}", "labels are L<task> or U<task>")
    return ops, values


def _merge_labels(label_lists: list[list[str]], n_ops: int) -> list[str]:
    """One tick label per row: the common label, else 'U*'/'L*' when only the task
    differs, else '#i'."""
    out = []
    for i in range(n_ops):
        here = {labels[i] for labels in label_lists if i < len(labels)}
        if len(here) == 1:
            out.append(here.pop())
        elif here and len({h[0] for h in here}) == 1:
            out.append(next(iter(here))[0] + "*")
        else:
            out.append(f"#{i}")
    return out


def _results_hint(path: str) -> str:
    try:
        subs = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "summary.json")))
    except OSError:
        subs = []
    if subs:
        more = f" (and {len(subs) - 2} more)" if len(subs) > 2 else ""
        shown = " ".join(os.path.join(path, d) for d in subs[:2])
        return f"it holds {len(subs)} run folders; pass those instead, e.g. {shown}{more}"
    return "pass a folder that cluctl launch wrote (results/<run>/, with summary.json)"


def load_results(path: str) -> Results:
    """Read one launch results folder; UsageError (naming the folder) when it is not one."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise UsageError(f"'{path}' is not a results folder (no such directory)", "pass a folder that cluctl launch wrote (results/<run>/)")
    summary_path = os.path.join(path, "summary.json")
    if not os.path.isfile(summary_path):
        raise UsageError(f"'{path}' is not a results folder (no summary.json)", _results_hint(path))
    try:
        with open(summary_path, encoding="utf-8") as fh:
            summary = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"'{summary_path}' is not valid JSON ({' '.join(str(exc).split())[:120]})",
                         "re-run the launch or restore the file") from None
    if not isinstance(summary, dict):
        raise UsageError(f"'{summary_path}' is not a JSON object", "re-run the launch or restore the file")

    n_tasks = summary.get("n_tasks")
    n_tasks = int(n_tasks) if isinstance(n_tasks, (int, float)) and not isinstance(n_tasks, bool) and n_tasks > 0 else None

    # per-seed tables (preferred), else the aggregated mean/ + std/ tables
    seed_dirs = []
    for name in os.listdir(path):
        m = _SEED_DIR.match(name)
        if m and os.path.isfile(os.path.join(path, name, TABLES["test_acc"])):
            seed_dirs.append((int(m.group(1)), os.path.join(path, name)))
    seed_dirs.sort()
    from_aggregate = False
    std_raw: dict[str, tuple[list[str], np.ndarray]] = {}
    if seed_dirs:
        sources = seed_dirs
    elif os.path.isfile(os.path.join(path, "mean", TABLES["test_acc"])):
        from_aggregate = True
        sources = [(-1, os.path.join(path, "mean"))]
    else:
        raise UsageError(f"'{path}' has a summary.json but no seed-*/test_acc.csv or mean/test_acc.csv",
                         "the launch did not finish a seed; resume it with cluctl launch")

    raw: dict[str, list[tuple[list[str], np.ndarray]]] = {name: [] for name in TABLES}
    for _, d in sources:
        for name, fname in TABLES.items():
            f = os.path.join(d, fname)
            if not os.path.isfile(f):
                _fail(f, "is missing", "every seed folder holds test_acc, test_conf, train_acc and train_conf CSVs")
            ops_i, vals = _read_table(f, n_tasks)
            n_tasks = vals.shape[1]
            raw[name].append((ops_i, vals))
    if from_aggregate:
        for name, fname in TABLES.items():
            f = os.path.join(path, "std", fname)
            if os.path.isfile(f):
                std_raw[name] = _read_table(f, n_tasks)

    seed_ops = [raw["test_acc"][j][0] for j in range(len(sources))]
    summary_ops = summary.get("ops")
    if isinstance(summary_ops, list) and all(isinstance(o, str) and _OP.match(o) for o in summary_ops) and summary_ops:
        n_ops = max([len(summary_ops)] + [len(o) for o in seed_ops])
    else:
        summary_ops = None
        n_ops = max(len(o) for o in seed_ops)
    if n_ops == 0:
        raise UsageError(f"'{path}' has empty result tables", "the launch did not finish an op; resume it")

    tables: dict[str, np.ndarray] = {}
    for name in TABLES:
        arr = np.full((len(sources), n_ops, n_tasks), np.nan)
        for j, (_, vals) in enumerate(raw[name]):
            arr[j, : vals.shape[0]] = vals
        tables[name] = arr
    std_tables = {}
    n_summary = len(_summary_seeds(summary))
    for name, (_, vals) in std_raw.items():
        arr = np.full((n_ops, n_tasks), np.nan)
        arr[: vals.shape[0]] = vals[:n_ops]
        if summary.get("std_ddof") != STD_DDOF:  # written with ddof 0 (before std_ddof): rescale to ddof 1
            arr = arr * math.sqrt(n_summary / (n_summary - 1)) if n_summary > 1 else np.full_like(arr, np.nan)
        std_tables[name] = arr

    if len({tuple(o) for o in seed_ops}) == 1:  # the usual case: every seed ran the same ops
        ops = list(seed_ops[0]) + list((summary_ops or [])[len(seed_ops[0]):])
        ops += [f"#{i}" for i in range(len(ops), n_ops)]
    else:  # seed-dependent sequences (E4): mark the rows where seeds differ
        ops = _merge_labels(seed_ops, n_ops)

    dataset = summary.get("dataset") or (summary.get("config") or {}).get("dataset") or "?"
    k = classes_per_task(summary, n_tasks)

    run = str(summary.get("run") or os.path.basename(os.path.normpath(path)))
    algo = summary.get("algo") or (summary.get("config") or {}).get("algo")
    learn_algo = summary.get("learn_algo") or (summary.get("config") or {}).get("learn_algo")
    algo = str(algo or learn_algo or "run")
    seeds = [s for s, _ in sources]  # -1 = the aggregated mean/ tables

    res = Results(
        path=path, run=run, algo=algo, dataset=str(dataset), n_tasks=int(n_tasks), k=k,
        sequence=(str(summary["sequence"]) if summary.get("sequence") else None), ops=ops,
        seeds=seeds, seed_ops=seed_ops, tables=tables,
        summary=summary, learn_algo=(str(learn_algo) if learn_algo else None),
        from_aggregate=from_aggregate, std_tables=std_tables,
    )
    res.metrics = _load_metrics(path, res)
    res.mia = _load_mia(path)
    return res


def _summary_seeds(summary: dict) -> list[int]:
    out = []
    for entry in summary.get("seeds") or []:
        if isinstance(entry, dict) and isinstance(entry.get("seed"), int):
            out.append(entry["seed"])
    return out


def _load_metrics(path: str, res: Results) -> pd.DataFrame | None:
    """metrics.csv, or the same recomputed from the tables (needs k) when it is absent."""
    f = os.path.join(path, "metrics.csv")
    if os.path.isfile(f):
        try:
            df = pd.read_csv(f)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            _fail(f, f"cannot read it ({' '.join(str(exc).split())[:120]})", "re-run the launch")
        missing = {"seed", "row"} - set(df.columns)
        if missing:
            _fail(f, f"lacks column(s) {sorted(missing)}", "expected seed,row,op,retain_acc,forget_acc,tow,clu_mix")
        df = df.dropna(subset=["seed", "row"])
        df["seed"] = df["seed"].astype(int)
        df["row"] = df["row"].astype(int)
        if res.from_aggregate:  # no per-seed tables: average metrics.csv's seeds into the one slot
            num = [c for c in ("retain_acc", "forget_acc", "tow", "clu_mix") if c in df.columns]
            df = df.groupby("row", as_index=False)[num].mean()
            df["seed"] = res.seeds[0]
        return df
    if res.k is None or res.from_aggregate:
        return None
    from cluctl.metrics.core import per_op_table

    frames = []
    for j, seed in enumerate(res.seeds):
        rows = ~np.isnan(res.tables["test_acc"][j]).any(axis=1) & ~np.isnan(res.tables["train_acc"][j]).any(axis=1)
        n = int(np.argmin(rows)) if not rows.all() else len(rows)  # the complete leading rows
        if n == 0:
            continue
        try:
            t = per_op_table(res.seed_ops[j][:n], res.tables["test_acc"][j, :n], res.tables["train_acc"][j, :n], res.k)
        except UsageError:
            continue  # tables the metric functions reject: plot no metrics for this seed
        t.insert(0, "row", np.arange(n))
        t.insert(0, "seed", seed)
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else None


def _load_mia(path: str) -> pd.DataFrame | None:
    f = os.path.join(path, "mia.csv")
    if not os.path.isfile(f):
        return None
    try:
        df = pd.read_csv(f)
    except pd.errors.EmptyDataError:
        return None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        _fail(f, f"cannot read it ({' '.join(str(exc).split())[:120]})", "re-run cluctl mia")
    missing = {"seed", "row", "task", "attack"} - set(df.columns)
    if missing:
        _fail(f, f"lacks column(s) {sorted(missing)}", "expected seed,row,op,task,status,attack,members,acc,auc,...")
    df = df.dropna(subset=["seed", "row", "task"])
    for c in ("seed", "row", "task"):
        df[c] = df[c].astype(int)
    return df


def summary_value(res: Results, key: str) -> tuple[float | None, float | None]:
    """(mean, std) of a summary.json metric; recomputed from ``seeds`` entries when
    ``mean``/``std`` lack it. None where unknown."""
    s = res.summary
    vals = [e.get(key) for e in (s.get("seeds") or []) if isinstance(e, dict)]
    vals = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    mean = _num((s.get("mean") or {}).get(key)) if key in (s.get("mean") or {}) else (float(np.mean(vals)) if vals else None)
    if key in (s.get("std") or {}) and (s.get("std_ddof") == STD_DDOF or not vals):
        std = _num((s.get("std") or {}).get(key))
    else:  # not stored, or stored with ddof 0 (folders written before std_ddof 1): from the seeds
        std = float(np.std(vals, ddof=STD_DDOF)) if len(vals) > STD_DDOF else None
    return mean, std


def _num(v) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None
