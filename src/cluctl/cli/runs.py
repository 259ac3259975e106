"""``cluctl runs``: the runs of a store and how far each got."""

from __future__ import annotations

import typer

from .common import StoreOpt, open_store, print_json


def runs(as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
         store: str = StoreOpt):
    """List the launch runs in the store: seeds finished / started, each seed's last
    finished operation and status, and the results folder (when results/<run>/ exists here).

    Example: cluctl runs --store /scratch/store
    """
    from ..launch.runs import list_runs

    rows = list_runs(open_store(store, must_exist=True))
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no runs in this store (cluctl launch makes them)")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="runs")
    for c in ("run", "sequence", "seeds done", "last op per seed", "results"):
        t.add_column(c)
    for r in rows:
        per = ", ".join(f"{x['seed']}:{x['last_op'] or '-'}" + ("" if x["status"] in ("done", "running or stopped",
                                                                                    "not started") else f" {x['status']}")
                        for x in r["seeds"])
        t.add_row(r["run"], str(r["sequence"]), f"{r['seeds_done']}/{r['seeds_total']}", per or "-", r["results"] or "-")
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.command("runs", help=runs.__doc__)(runs)
