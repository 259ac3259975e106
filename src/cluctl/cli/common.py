"""Shared CLI plumbing: the stderr console, store/device options, progress bars, output."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import learning, unlearning
from ..data import registry as _datasets

# stdout carries results; everything else (progress, logs, warnings) goes to stderr.
err = Console(stderr=True, highlight=False, soft_wrap=True)

STORE_HELP = "Store directory (default: $CLUCTL_STORE or ./store)."
StoreOpt = typer.Option(None, "--store", help=STORE_HELP, envvar="CLUCTL_STORE", show_envvar=False)
DataRootOpt = typer.Option(None, "--data-root", help="Where CIFAR files live (default: $CLUCTL_DATA or ~/.cache/cluctl/data).")
DownloadOpt = typer.Option(False, "--download", help="Download CIFAR through torchvision if missing (needs internet).")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda:0 if visible, else cpu).")
def _choices(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


# choices derived from the algorithm registries (one module per algorithm)
LEARN_CHOICES = _choices(learning.names())
UNLEARN_CHOICES = _choices(unlearning.names())
DATASET_CHOICES = _datasets.choices()  # from the dataset registry (one module per dataset)

ThreadsOpt = typer.Option(None, "--threads", help="CPU threads for this process (default: all cores).")
ImplOpt = typer.Option("fast", "--impl", help="fast (batched reference gradients, Gram-only QP) or classic (GEM reference code structure).")
PrecisionOpt = typer.Option("fp32", "--precision", help="fp32, or bf16 autocast of the training forward passes (CUDA, or a CPU with AMX/AVX512-BF16).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on stderr.")


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
        TimeElapsedColumn(), TextColumn("{task.fields[msg]}"),
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
