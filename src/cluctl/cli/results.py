"""``cluctl evaluate RESULTS_DIR --metrics``: a launch's metrics per operation (a terminal
table, ``--json``, ``--csv``, or a LaTeX / Markdown table for a paper with ``--format``).
Every std is the sample standard deviation over seeds (ddof 1; none for one seed)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ..errors import UsageError
from .common import print_json

COLS = ("retain_acc", "forget_acc", "tow", "clu_mix")
TABLE_FORMATS = ("latex", "markdown")
_HEAD = {"retain_acc": "retain acc", "forget_acc": "forget acc", "tow": "CL-ToW", "clu_mix": "CLU_mix"}


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
            entry[c + "_std"] = None if len(vals) < 2 else float(np.std(vals, ddof=1))
        rows.append(entry)
    return rows


def check_table_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    v = str(fmt).strip().lower()
    v = {"md": "markdown", "tex": "latex"}.get(v, v)
    if v not in TABLE_FORMATS:
        raise UsageError(f"--format '{fmt}' is not a table format", "use latex or markdown (with --metrics)")
    return v


def _cell(v, s, digits: int = 3, pm: str = " ± ") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}{pm}{s:.{digits}f}" if s is not None else f"{v:.{digits}f}"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        text = text.replace(a, b)
    return text


def format_table(summary: dict, rows: list[dict], fmt: str) -> str:
    """The per-operation metrics (mean ± s.d. over seeds) and ACC/BWT as a LaTeX
    (booktabs) or Markdown table."""
    n = len(summary.get("seed_list") or summary.get("seeds") or [])
    final, std = summary.get("mean") or {}, summary.get("std") or {}
    what = (f"{summary.get('run')}: {summary.get('algo')} on {summary.get('dataset')}, sequence "
            f"{summary.get('sequence')}; mean ± s.d. over {n} seed{'s' if n != 1 else ''}"
            + (" (no s.d. for one seed)" if n < 2 else ""))
    acc = f"ACC {_cell(final.get('acc'), std.get('acc'))}, BWT {_cell(final.get('bwt'), std.get('bwt'))}"
    head = ["row", "op"] + [_HEAD[c] for c in COLS]
    if fmt == "markdown":
        lines = [f"<!-- {what} -->", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for r in rows:
            lines.append("| " + " | ".join([str(r["row"]), r["op"]] + [_cell(r[c], r[c + "_std"]) for c in COLS]) + " |")
        lines += ["", f"{acc} (learning prefix: the operations before the first unlearn)."]
        return "\n".join(lines) + "\n"
    pm = r" $\pm$ "
    lines = [f"% {_tex(what)}", "% needs \\usepackage{booktabs}", "\\begin{tabular}{rl" + "r" * len(COLS) + "}",
             "\\toprule", " & ".join(_tex(h) for h in head) + r" \\", "\\midrule"]
    for r in rows:
        cells = [str(r["row"]), _tex(r["op"])] + [_cell(r[c], r[c + "_std"], pm=pm) for c in COLS]
        lines.append(" & ".join(cells).replace("–", "--") + r" \\")
    pm = r" $\pm$ "
    acc_tex = (f"ACC {_cell(final.get('acc'), std.get('acc'), pm=pm)}, "
               f"BWT {_cell(final.get('bwt'), std.get('bwt'), pm=pm)}").replace("–", "--")
    lines += ["\\midrule", rf"\multicolumn{{{len(head)}}}{{l}}{{{acc_tex}}} \\", "\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def evaluate_results(folder: str, as_json: bool = False, as_csv: bool = False, reference: str = "prefix",
                     fmt: str | None = None, **kw) -> None:
    """Print a results folder's per-operation metrics. ``fmt``: None (a terminal table,
    or --json/--csv), ``"latex"`` or ``"markdown"``."""
    from ..plots.results import load_results

    fmt = check_table_format(fmt)
    if fmt is not None and (as_json or as_csv):
        raise UsageError("--format and --json/--csv are mutually exclusive", "pick one")
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
    if fmt is not None:
        typer.echo(format_table(summary, rows, fmt), nl=False)
        return
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
    t = Table(title=f"{summary.get('run')}  {summary.get('dataset')}  {n_seeds} seed(s): mean ± s.d. over seeds")
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
