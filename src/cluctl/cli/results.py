"""``cluctl evaluate RESULTS_DIR --metrics``: a launch's metrics per operation."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ..errors import UsageError
from .common import print_json

COLS = ("retain_acc", "forget_acc", "tow", "clu_mix")


def _per_op(folder: Path, summary: dict, reference: str = "prefix", **kw):
    """Mean and std over seeds of each operation's metrics, from the one results reader
    (:func:`cluctl.plots.results.load_results`: metrics.csv, or recomputed from the
    per-seed tables) or, for the retrain reference, :func:`cluctl.launch.reference.run_metrics`."""
    import numpy as np
    import pandas as pd

    if reference == "retrain" or (reference == "prefix" and summary.get("reference") == "retrain"):
        # retrain: oracles from the store; prefix on a folder written with retrain: recomputed
        from ..launch.reference import run_metrics

        res = run_metrics(folder, reference=reference, **kw)
        df = pd.DataFrame(res["rows"])
        for c in COLS:
            df[c] = pd.to_numeric(df[c], errors="coerce")
        _per_op.trained = res["retrain_ops_trained"]
    else:
        from ..plots.results import load_results

        df = load_results(str(folder)).metrics
        if df is None:
            raise UsageError(f"{folder} has no metrics.csv and its tables cannot give the metrics "
                             "(no complete operation, or no number of classes per task)",
                             "rebuild it with `cluctl launch --aggregate-only --resume RUN`")
    rows = []
    for row, g in df.groupby("row", sort=True):
        entry = {"row": int(row), "op": str(g["op"].iloc[0])}
        for c in COLS:
            vals = pd.to_numeric(g[c], errors="coerce").dropna().to_numpy(dtype=float)
            entry[c] = None if len(vals) == 0 else float(np.mean(vals))
            entry[c + "_std"] = None if len(vals) == 0 else float(np.std(vals))
        rows.append(entry)
    return rows


def evaluate_results(folder: str, as_json: bool = False, as_csv: bool = False, reference: str = "prefix",
                     **kw) -> None:
    from ..plots.results import load_results

    path = Path(folder)
    summary = load_results(str(path)).summary
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
