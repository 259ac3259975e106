"""``cluctl evaluate RESULTS_DIR --metrics``: a launch's metrics per operation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from ..errors import UsageError
from .common import print_json

COLS = ("retain_acc", "forget_acc", "tow", "clu_mix")


def _k(summary: dict) -> int:
    from ..plots.results import classes_per_task

    k = classes_per_task(summary)
    if k is None:
        raise UsageError("summary.json gives neither k nor a known dataset and number of tasks",
                         "rebuild it with `cluctl launch --aggregate-only --resume RUN`")
    return k


def _per_op(folder: Path, summary: dict, reference: str = "prefix", **kw):
    import numpy as np
    import pandas as pd

    mfile = folder / "metrics.csv"
    if reference == "retrain" or (reference == "prefix" and summary.get("reference") == "retrain"):
        # retrain: oracles from the store; prefix on a folder written with retrain: recomputed
        from ..launch.reference import run_metrics

        res = run_metrics(folder, reference=reference, **kw)
        df = pd.DataFrame(res["rows"])
        for c in COLS:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        _per_op.trained = res["retrain_ops_trained"]
    elif mfile.exists():
        df = pd.read_csv(mfile)
    else:  # recompute from the per-seed matrices
        from ..metrics import per_op_table

        frames = []
        for sd in sorted(folder.glob("seed-*")):
            test = pd.read_csv(sd / "test_acc.csv")
            train = pd.read_csv(sd / "train_acc.csv")
            ops = test["op"].tolist()
            t = per_op_table(ops, test.drop(columns="op").to_numpy(), train.drop(columns="op").to_numpy(),
                             _k(summary))
            t.insert(0, "row", range(len(ops)))
            t.insert(0, "seed", int(sd.name.split("-", 1)[1]))
            frames.append(t)
        if not frames:
            raise UsageError(f"{folder} has neither metrics.csv nor seed-*/ folders", "is it a launch results folder?")
        df = pd.concat(frames, ignore_index=True)
    rows = []
    for row, g in df.groupby("row", sort=True):
        entry = {"row": int(row), "op": str(g["op"].iloc[0])}
        for c in COLS:
            vals = g[c].dropna().to_numpy(dtype=float)
            entry[c] = None if len(vals) == 0 else float(np.mean(vals))
            entry[c + "_std"] = None if len(vals) == 0 else float(np.std(vals))
        rows.append(entry)
    return rows


def evaluate_results(folder: str, as_json: bool = False, as_csv: bool = False, reference: str = "prefix",
                     **kw) -> None:
    path = Path(folder)
    sfile = path / "summary.json"
    if not sfile.exists():
        raise UsageError(f"{folder} is not a launch results folder (no summary.json)",
                         "pass the folder `cluctl launch` wrote, e.g. results/<run>/")
    try:
        summary = json.loads(sfile.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{sfile} cannot be read: {e}") from None
    if not isinstance(summary, dict):
        raise UsageError(f"{sfile} is not a launch summary (a JSON object)", "re-run the launch or restore the file")
    if reference not in ("prefix", "retrain"):
        raise UsageError(f"--reference '{reference}' is not valid", "choose prefix or retrain")
    _per_op.trained = 0
    try:
        rows = _per_op(path, summary, reference, **kw)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:  # a missing or damaged table
        what = " ".join(str(e).split())[:200] or type(e).__name__
        raise UsageError(f"{folder} is an incomplete or damaged launch results folder ({type(e).__name__}: {what})",
                         "rebuild it with `cluctl launch --aggregate-only --resume RUN`") from None
    final = summary.get("mean", {})
    if as_json:
        print_json({"run": summary.get("run"), "reference": reference,
                    "retrain_ops_trained": _per_op.trained, "per_op": rows,
                    "final": {k: final.get(k) for k in ("acc", "bwt", "final_forget_acc", "final_retain_acc",
                                                         "final_tow", "final_clu_mix")},
                    "std": summary.get("std", {})})
        return
    if as_csv:
        typer.echo("row,op," + ",".join(f"{c},{c}_std" for c in COLS))
        for r in rows:
            typer.echo(f"{r['row']},{r['op']}," + ",".join(
                f"{'' if r[c] is None else r[c]},{'' if r[c + '_std'] is None else r[c + '_std']}" for c in COLS))
        return
    from rich.console import Console
    from rich.table import Table

    def fmt(v, s):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.3f} ± {s:.3f}" if s else f"{v:.3f}"

    n_seeds = len(summary.get("seeds", []))
    t = Table(title=f"{summary.get('run')}  {summary.get('dataset')}  {n_seeds} seed(s): mean ± std over seeds")
    for c in ("row", "op", "retain acc", "forget acc", "CL-ToW", "CLU_mix"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["row"]), r["op"], *(fmt(r[c], r[c + "_std"]) for c in COLS))
    con = Console()
    con.print(t)
    std = summary.get("std", {})
    if reference == "retrain":
        con.print(f"CL-ToW reference: retrained oracles ({_per_op.trained} operation(s) trained now; "
                  "cached in the store)")
    con.print("ACC " + fmt(final.get("acc"), std.get("acc")) + "   BWT " + fmt(final.get("bwt"), std.get("bwt"))
              + "   (learning prefix: the operations before the first unlearn)")
