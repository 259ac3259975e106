"""The runs of a store: what ``cluctl runs`` lists (run, sequence, seeds done / started,
the last finished operation per seed, failures, the default results folder)."""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import CluctlError


def list_runs(store, results_root: str = "results") -> list[dict[str, Any]]:
    """One dict per run registered in ``store`` (``runs/<run>/config``), sorted by name:
    ``{"run", "sequence", "algo", "dataset", "n_ops", "seeds": [{"seed", "done", "last_op",
    "status"}], "seeds_done", "seeds_total", "results"}``; ``status`` is ``done``,
    ``running or stopped`` (some operations finished), ``failed`` (a recorded divergence)
    or ``not started``; ``results`` is ``<results_root>/<run>`` when that folder exists."""
    from ..sequences import resolve_sequence
    from .options import seeds_in_store
    from .worker import completed_prefix, failure_ref

    names = sorted({m.group(1) for r in store.list_refs("runs/")
                    if (m := re.fullmatch(r"runs/([^/]+)/config", r))})
    out = []
    for name in names:
        try:
            obj = store.get_json(store.get_ref(f"runs/{name}/config"))
        except CluctlError:
            continue  # a damaged run description: `cluctl store verify` reports it
        seq, n_tasks = obj.get("sequence"), int(obj.get("n_tasks") or (obj.get("config") or {}).get("tasks") or 0)
        seeds = []
        for s in seeds_in_store(store, name):
            try:
                labels = [str(o) for o in resolve_sequence(seq, n_tasks, s)]
            except CluctlError:
                labels = []
            ids = completed_prefix(store, name, s)
            done = min(len(ids), len(labels)) if labels else len(ids)
            if labels and done >= len(labels):
                status = "done"
            elif store.get_ref(failure_ref(name, s)) is not None:
                status = "failed"
            else:
                status = "running or stopped" if done else "not started"
            seeds.append({"seed": s, "done": done, "n_ops": len(labels), "last_op": labels[done - 1] if done and labels
                          else None, "status": status})
        folder = os.path.join(results_root, name)
        cfg = obj.get("config") or {}
        out.append({"run": name, "sequence": seq, "algo": cfg.get("algo"), "dataset": cfg.get("dataset"),
                    "seeds": seeds, "seeds_done": sum(1 for x in seeds if x["status"] == "done"),
                    "seeds_total": len(seeds), "results": folder if os.path.isdir(folder) else None})
    return out


__all__ = ["list_runs"]
