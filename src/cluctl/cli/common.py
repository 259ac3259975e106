"""Shared CLI plumbing: the stderr console, store/device options, progress bars, output."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data import registry as _datasets
from .options import typer_option

# stdout carries results; everything else (progress, logs, warnings) goes to stderr.
err = Console(stderr=True, highlight=False, soft_wrap=True)

# options shared with commands outside the option table's three (evaluate, mia, memorize,
# plot, store ...): help and default text from their one row in cluctl.config
StoreOpt = typer_option("store")
DataRootOpt = typer_option("data_root")
DownloadOpt = typer_option("download", default=False)
DeviceOpt = typer_option("device")
ThreadsOpt = typer_option("threads")
ImplOpt = typer_option("impl", default="fast")
QuietOpt = typer_option("quiet", default=False)
DATASET_CHOICES = _datasets.choices()  # from the dataset registry (one module per dataset)


def setup_logging(quiet: bool = False) -> None:
    """The library's messages (logger ``cluctl``) on stderr: through rich on a terminal,
    as ``<time> <message>`` lines elsewhere (log files, Slurm output); ``quiet`` keeps
    warnings only. Library users configure ``logging`` themselves (by default Python shows
    warnings and keeps the rest quiet)."""
    import logging
    import sys

    logger = logging.getLogger("cluctl")
    for h in [h for h in logger.handlers if getattr(h, "_cluctl_cli", False)]:
        logger.removeHandler(h)
    if err.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err, show_time=False, show_level=False, show_path=False,
                                               markup=False, highlighter=None)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler._cluctl_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def open_store(path: Optional[str], must_exist: bool = False):
    from ..errors import NotFound
    from ..store import Store

    root = Path(path or os.environ.get("CLUCTL_STORE") or "store")
    if must_exist and not (root / "VERSION").exists():
        raise NotFound(f"no cluctl store at {root}", "learn something first, or pass --store DIR")
    return Store.open(root)


@contextmanager
def progress_bar(enabled: bool = True, description: str = "working"):
    """Yields a callback (done, total, message) that drives a rich bar on stderr (only
    when stderr is a terminal: on a pipe or file rich draws nothing but still writes a
    stray newline, which would break the one-line error contract)."""
    if not enabled or not err.is_terminal:
        yield lambda done, total, msg="": None
        return
    prog = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[msg]}"),
        console=err, transient=True,
    )
    with prog:
        tid = prog.add_task(description, total=None, msg="")

        def update(done: int, total: int, msg: str = "") -> None:
            prog.update(tid, completed=done, total=total, msg=msg)

        yield update


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default))


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
