"""``cluctl launch``: a task sequence x seeds x devices, each seed a spawned process that
runs the same learn/unlearn steps, checkpoints every operation in the store, resumes from
its last finished operation, and a results folder aggregated from the store.

    from cluctl import launch
    out = launch.launch(sequence="A4", algo="neggem", seeds=3, devices="cpu",
                        model="mlp", epochs=1, store="/tmp/st", out="/tmp/res")
    out.exit_code, out.out          # 0, Path('/tmp/res')

Modules: :mod:`.options` (merging, thesis aliases, run identity, the Plan),
:mod:`.worker` (one seed; the store layout of a run), :mod:`.runner` (processes, signals),
:mod:`.progress` (stderr display), :mod:`.results` (the results folder), :mod:`.core`.
"""

from __future__ import annotations

from typing import Any

from .core import LaunchOutcome, aggregate, execute, register_run
from .options import (
    THESIS_ALIASES,
    Plan,
    config_hash,
    load_toml,
    make_plan,
    merge,
    run_name,
    scientific_config,
)
from ..store.core import no_new_store_on_error
from .reference import retrain_references, run_metrics
from .results import write_results
from .worker import compute_mia, run_seed

__all__ = [
    "LaunchOutcome", "Plan", "THESIS_ALIASES", "aggregate", "compute_mia", "config_hash", "execute", "launch",
    "load_toml", "make_plan", "merge", "plan", "register_run", "retrain_references", "run_metrics", "run_name",
    "run_seed", "scientific_config", "write_results",
]


@no_new_store_on_error
def plan(config: str | None = None, **options: Any) -> Plan:
    """Resolve options (CLI names with underscores; thesis spellings and toggles allowed;
    ``config`` = a TOML file whose values the options override) into a :class:`Plan`."""
    from .options import THESIS_ALIASES as _A

    opts = {_A.get(k, k): v for k, v in options.items()}
    return make_plan(merge(load_toml(config) if config else None, opts))


@no_new_store_on_error
def launch(config: str | None = None, live: bool | None = False, **options: Any) -> LaunchOutcome:
    """Plan and run a launch (see :func:`plan`); returns a :class:`LaunchOutcome`."""
    return execute(plan(config, **options), live=live)
