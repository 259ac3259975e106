"""``cluctl plot``: the standard figures of one or more launch results folders."""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from .common import QuietOpt, err


def default_out_dir(results: List[str]) -> str:
    """``<results>/plots`` for one folder, ``plots`` for several."""
    return os.path.join(results[0], "plots") if len(results) == 1 else "plots"


def plot(
    results: List[str] = typer.Argument(..., metavar="RESULTS...",
                                        help="Launch results folders (results/<run>/), e.g. one per algorithm."),
    out: Optional[str] = typer.Option(None, "--out", "-o",
                                      help="Output folder (default: RESULTS/plots for one folder, ./plots for several)."),
    fmt: str = typer.Option("png", "--format", "-f", help="png, pdf or svg."),
    dpi: int = typer.Option(120, "--dpi", help="Resolution of raster output (png)."),
    size: Optional[str] = typer.Option(None, "--size",
                                       help="Paper column width: single (3.3 in) or double (6.9 in), fonts legible "
                                            "at that size (default: 12 in screen figures)."),
    no_title: bool = typer.Option(False, "--no-title", help="Leave titles out (a paper's caption says it)."),
    label: Optional[List[str]] = typer.Option(None, "--label",
                                              help="RUN=NAME: the legend name of a run (run name or results folder); "
                                                   "repeatable. Default: the algorithm, with the options that tell "
                                                   "runs of one algorithm apart."),
    quiet: bool = QuietOpt,
):
    """Plot launch results: per-task accuracy and confidence, CL-ToW, CLU_mix, MIA AUC and a summary
    table; prints the paths of the figures written. Lines are the mean over seeds, bands mean ± s.d.

    Example: cluctl plot results/a4-neggem-1a2b3c4d results/a4-neggrad-5e6f7a8b

    For a paper: cluctl plot RESULTS... --size single --no-title --format pdf --label a4-neggem-1a2b3c4d=NegGEM
    """
    from ..plots import standard_figures
    from ..plots.figures import check_format, check_size, parse_labels

    fmt = check_format(fmt)  # a bad --format, --size or --label fails before any folder is read
    size = check_size(size)
    labels = parse_labels(label)
    out_dir = out or default_out_dir(results)

    def warn(msg: str) -> None:
        if not quiet:
            err.print(f"warning: {msg}", markup=False, soft_wrap=True)

    paths = standard_figures(results, out_dir, fmt=fmt, dpi=dpi, size=size, title=not no_title, labels=labels,
                             warn=warn)
    for p in paths:
        typer.echo(p)
    if not quiet:
        note = "" if any(os.path.basename(p).startswith("mia_auc.") for p in paths) else \
            " (no mia_auc: no folder has loss-attack rows in mia.csv)"
        err.print(f"wrote {len(paths)} figures to {out_dir}{note}", markup=False)


def register(app: typer.Typer) -> None:
    """Add the ``plot`` command to ``app``."""
    app.command("plot")(plot)
