"""``cluctl launch``: a sequence x seeds x devices, resumable, with a results folder."""

from __future__ import annotations

import typer

from .common import err
from .options import command_options

def _own():
    import inspect

    return [inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                              default=typer.Option(False, "--json", rich_help_panel="Output",
                                                   help="Print the outcome and the results' summary.json as JSON "
                                                        "instead of the results folder."))]


@command_options("launch", own=_own())
def launch(**flags):
    """Run a task sequence for several seeds, one process per seed, checkpointing every
    operation in the store; the same command again resumes. Prints the results folder.

    Example: cluctl launch --sequence A4 --algo neggem --seeds 3 --devices cpu --per-device 2
    """
    from ..launch import execute, load_toml, make_plan, merge

    config = flags.pop("config", None)
    as_json = bool(flags.pop("as_json", False))
    if flags.get("quiet"):
        from .common import setup_logging

        setup_logging(quiet=True)
    flags["aggregate_only"] = flags.get("aggregate_only") or None
    toml_values = load_toml(config) if config else None
    plan = make_plan(merge(toml_values, flags))
    for w in plan.warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    outcome = execute(plan)
    if as_json:
        _print_outcome(outcome)
    elif outcome.out is not None:
        typer.echo(str(outcome.out))
    others = "the other seeds finished; " if outcome.complete else ""
    for seed, msg in sorted(outcome.failed.items()):
        if seed in outcome.diverged:
            where = f"results ({outcome.out})" if outcome.out is not None else "store"
            err.print(f"error: seed {seed} of run {outcome.run} stopped at {outcome.diverged[seed]}: {msg} — "
                      f"{others}the {where} record the operations before it and the divergence",
                      markup=False, soft_wrap=True)
            continue
        err.print(f"error: seed {seed} of run {outcome.run} failed: {msg} — {others}run the same command "
                  "again to resume it", markup=False, soft_wrap=True)
    if outcome.exit_code == 1 and not outcome.failed and outcome.incomplete:
        err.print(f"error: seeds {', '.join(map(str, outcome.incomplete))} of run {outcome.run} did not finish — "
                  "run the same command again to resume", markup=False, soft_wrap=True)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _print_outcome(outcome) -> None:
    import json

    from .common import print_json

    summary = None
    if outcome.out is not None and (outcome.out / "summary.json").is_file():
        try:
            summary = json.loads((outcome.out / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
    print_json({"run": outcome.run, "out": None if outcome.out is None else str(outcome.out),
                "exit_code": outcome.exit_code, "complete": outcome.complete, "incomplete": outcome.incomplete,
                "failed": {str(k): v for k, v in sorted(outcome.failed.items())},
                "diverged": {str(k): v for k, v in sorted(outcome.diverged.items())},
                "stopped": outcome.stopped, "summary": summary})


def register(app: typer.Typer) -> None:
    """Add the ``launch`` command to the cluctl app."""
    app.command("launch", help=launch.__doc__)(launch)
