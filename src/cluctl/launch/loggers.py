"""Experiment loggers for ``cluctl launch --log csv,tensorboard,wandb``.

Each seed's process records, to every backend asked for:

- per training step (the engine's ``on_step`` records, :class:`cluctl.engine._Steps`): the
  training loss (learning) or the forget loss (unlearning; the value whose gradient the
  algorithm follows, negative for gradient ascent), the forget-buffer accuracy the stop
  rule saw (unlearning), whether the step's update was projected, and the operation's
  projections so far; the x-axis is the seed's training step counted over all its
  operations (``global_step``);
- per operation, after its evaluation: the test accuracy of every task seen, forget and
  retain accuracy (SPEC §7), the engine's summary (steps, projections, QP fallbacks, final
  forget accuracy, seconds) and the MIA results when ``--mia`` computes them; indexed by the
  operation's position in the sequence;
- once: the run's configuration (run, seed, sequence, every option).

Layout under the log folder (``--log-dir``, default ``<out>/logs``)::

    csv/seed-<s>/config.json, steps.csv, ops.csv   (ops.csv is tidy: one metric a row)
    tensorboard/seed-<s>/steps/ and .../ops/        (event files; ``tensorboard --logdir <dir>/tensorboard``)
    wandb/wandb/offline-run-*/                      (one wandb run per seed, group = the run)

A resumed launch continues each seed's records where its finished operations end: the
CSV rows and TensorBoard events of an operation that was interrupted and is now redone
are dropped (TensorBoard's ``purge_step``). wandb runs offline unless ``WANDB_MODE`` says
otherwise (``wandb sync <dir>/wandb/offline-run-*`` uploads them later); each launch of a
seed is its own offline run (id ``<run>-seed-<s>``, resumed on sync).

TensorBoard and wandb are optional (``pip install 'cluctl[tensorboard]'``, ``'cluctl[wandb]'``);
:func:`check_available` fails in one line, before any work, when one is missing."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import UsageError

log = logging.getLogger(__name__)

KINDS = ("csv", "tensorboard", "wandb")
STEP_FIELDS = ("run", "seed", "index", "op", "step", "global_step", "loss", "forget_acc", "projected", "projections")
OP_FIELDS = ("run", "seed", "index", "op", "metric", "value")
_EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb"}


def parse_kinds(value: Any) -> list[str]:
    """``--log`` as a list of backends: a comma-separated text or a list (TOML); None or
    empty text is none. Unknown names fail in one line."""
    if value is None:
        return []
    items: Iterable[Any] = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UsageError(f"--log must name loggers, got {item!r}", f"choose from {', '.join(KINDS)}")
        name = item.strip().lower()
        if not name:
            continue
        if name not in KINDS:
            raise UsageError(f"--log '{item.strip()}' is not a logger",
                             f"choose from {', '.join(KINDS)} (comma-separated for several)")
        if name not in out:
            out.append(name)
    return out


def check_available(kinds: Iterable[str]) -> None:
    """Import each backend's package now, so that a missing one fails before any work."""
    for kind in kinds:
        if kind == "tensorboard":
            try:
                import tensorboard  # noqa: F401
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                _missing(kind)
        elif kind == "wandb":
            try:
                import wandb  # noqa: F401
            except ImportError:
                _missing(kind)


def _missing(kind: str):
    raise UsageError(f"--log {kind} needs the {_EXTRA[kind]} package, which is not installed",
                     f"pip install 'cluctl[{kind}]' (or drop {kind} from --log)")


def _num(v: Any) -> float | None:
    if v is None or isinstance(v, str):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def op_metrics(labels: list[str], test_row: list, n_tasks: int, summary: dict, mia: list | None) -> dict[str, float]:
    """The numbers recorded after operation ``labels[-1]``: ``test_acc/task-<t>`` for the
    tasks seen, ``forget_acc`` and ``retain_acc`` (SPEC §7, :func:`cluctl.metrics.forget_retain`
    on this row), the summary's numbers and the MIA results (``mia/<attack>/task-<t>/<field>``).
    Metrics without a value (an empty forgotten set, a skipped attack) are left out."""
    import numpy as np

    from ..metrics import forget_retain, parse_ops

    out: dict[str, float] = {}
    row = [_num(v) for v in test_row]
    if len(row) == n_tasks and None not in row:
        # forget_retain reads each row on its own: the earlier rows only give it the shape
        forget, retain = forget_retain(labels, np.tile(np.asarray(row, dtype=float), (len(labels), 1)))
        for name, v in (("forget_acc", forget[-1]), ("retain_acc", retain[-1])):
            if _num(v) is not None:
                out[name] = float(v)
    seen = {t for _, t in parse_ops(labels, n_tasks)}
    for t, v in enumerate(row):
        if v is not None and t in seen:
            out[f"test_acc/task-{t}"] = v
    for key in ("steps", "projections", "qp_fallbacks", "final_forget_acc", "wall_s", "op_wall_s", "eval_s",
                "save_s", "mia_s"):
        v = _num(summary.get(key))
        if v is not None:
            out[f"summary/{key}"] = v
    for r in mia or []:
        for field in ("acc", "auc", "cv_acc", "efficacy"):
            v = _num(r.get(field))
            if v is not None:
                out[f"mia/{r.get('attack')}/task-{r.get('task')}/{field}"] = v
    return out


# ---------------------------------------------------------------------- backends


class _Csv:
    """``csv/seed-<s>/``: config.json, steps.csv, ops.csv (appended; rows of operations
    from ``start_index`` on, left by an interrupted attempt, are dropped first)."""

    def __init__(self, folder: Path, config: dict, start_index: int):
        from ..atomic import write_text

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        self.steps = self._open(folder / "steps.csv", STEP_FIELDS, start_index)
        self.ops = self._open(folder / "ops.csv", OP_FIELDS, start_index)

    @staticmethod
    def _open(path: Path, fields: tuple[str, ...], start_index: int):
        from ..atomic import write_text

        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if r.get("index", "").isdigit() and int(r["index"]) < start_index]
            if len(keep) != len(rows):
                buf = io.StringIO()
                w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
                w.writeheader()
                w.writerows(keep)
                write_text(path, buf.getvalue())
            f = open(path, "a", newline="", encoding="utf-8")
            return f, csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        f = open(path, "w", newline="", encoding="utf-8")
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        return f, w

    def step(self, base: dict, rec: dict, global_step: int) -> None:
        self.steps[1].writerow({**base, **{k: _cell(rec.get(k)) for k in STEP_FIELDS if k in rec},
                                "global_step": global_step})

    def op(self, base: dict, metrics: dict[str, float], global_step: int) -> None:
        for name, value in metrics.items():
            self.ops[1].writerow({**base, "metric": name, "value": repr(float(value))})
        self.flush()

    def flush(self) -> None:
        for f, _ in (self.steps, self.ops):
            f.flush()

    def close(self) -> None:
        for f, _ in (self.steps, self.ops):
            f.close()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return repr(v)
    return v


class _TensorBoard:
    """Two writers per seed: ``steps/`` (x: the seed's training step) and ``ops/`` (x: the
    operation's index), each purging what an interrupted attempt left from where it resumes."""

    def __init__(self, folder: Path, config: dict, start_step: int, start_index: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides the events an interrupted attempt left from there on
        self.steps = SummaryWriter(str(folder / "steps"), purge_step=start_step + 1)  # the first step logged now
        self.ops = SummaryWriter(str(folder / "ops"), purge_step=start_index)
        text = "\n".join(f"    {k} = {json.dumps(v, default=str)}" for k, v in sorted(config.items()))
        self.ops.add_text("config", text, global_step=start_index)

    def step(self, base: dict, rec: dict, global_step: int) -> None:
        for key in ("loss", "forget_acc", "projections"):
            v = _num(rec.get(key))
            if v is not None:
                self.steps.add_scalar(f"{key}/{rec['op'][0]}", v, global_step)
        if rec.get("projected") is not None:
            self.steps.add_scalar(f"projected/{rec['op'][0]}", float(bool(rec["projected"])), global_step)

    def op(self, base: dict, metrics: dict[str, float], global_step: int) -> None:
        for name, value in metrics.items():
            self.ops.add_scalar(name, value, base["index"])
        self.flush()

    def flush(self) -> None:
        self.steps.flush()
        self.ops.flush()

    def close(self) -> None:
        self.steps.close()
        self.ops.close()


def _wandb_id(run: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{run}-seed-{seed}")[:64]


class _Wandb:
    """One wandb run per seed (group = the launch's run), offline unless ``WANDB_MODE`` is
    set. Step records under ``step/``, operation metrics under ``op/`` against ``op/index``."""

    def __init__(self, folder: Path, config: dict, run: str, seed: int):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("WANDB_MODE") or "offline"
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "cluctl", group=run,
                              name=f"{run}/seed-{seed}", id=_wandb_id(run, seed), resume="allow", dir=str(folder),
                              config=config, mode=mode, job_type="launch", settings=wandb.Settings(silent=True, console="off"))
        self.run.define_metric("op/index")
        self.run.define_metric("op/*", step_metric="op/index")
        self.last = -1

    def step(self, base: dict, rec: dict, global_step: int) -> None:
        data = {f"step/{k}": _num(rec.get(k)) for k in ("loss", "forget_acc", "projections")}
        if rec.get("projected") is not None:
            data["step/projected"] = float(bool(rec["projected"]))
        data = {k: v for k, v in data.items() if v is not None}
        if global_step > self.last:
            self.run.log(data, step=global_step)
            self.last = global_step

    def op(self, base: dict, metrics: dict[str, float], global_step: int) -> None:
        data = {f"op/{k}": v for k, v in metrics.items()}
        data["op/index"] = base["index"]
        self.run.log(data, step=max(global_step, self.last))
        self.last = max(global_step, self.last)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def _kind_of(backend) -> str:
    return {_Csv: "csv", _TensorBoard: "tensorboard", _Wandb: "wandb"}.get(type(backend), type(backend).__name__)


class SeedLogger:
    """Everything one seed records, to each backend of ``kinds``, under ``log_dir``.
    ``start_index``: the first operation this process runs (earlier ones are finished);
    ``start_step``: the training steps those took (the x-axis continues from there)."""

    def __init__(self, kinds: Iterable[str], log_dir: str | os.PathLike, run: str, seed: int, config: dict,
                 start_index: int = 0, start_step: int = 0):
        kinds = parse_kinds(list(kinds))
        check_available(kinds)
        root = Path(log_dir)
        self.run, self.seed = run, int(seed)
        self.global_step = int(start_step)
        self.index = int(start_index)
        self.label = ""
        self._op_start = self.global_step
        cfg = {"run": run, "seed": self.seed, **config}
        self.backends: list[Any] = []
        try:
            for kind in kinds:
                if kind == "csv":
                    self.backends.append(_Csv(root / "csv" / f"seed-{seed}", cfg, self.index))
                elif kind == "tensorboard":
                    self.backends.append(_TensorBoard(root / "tensorboard" / f"seed-{seed}", cfg, self.global_step,
                                                      self.index))
                else:
                    self.backends.append(_Wandb(root / "wandb", cfg, run, self.seed))
        except BaseException:
            self.close()
            raise

    def start_op(self, index: int, label: str) -> None:
        self.index, self.label = int(index), str(label)
        self._op_start = self.global_step

    def step(self, rec: dict) -> None:
        """An engine ``on_step`` record of the current operation."""
        self.global_step = self._op_start + int(rec["step"])
        base = {"run": self.run, "seed": self.seed, "index": self.index, "op": self.label}
        self._each("step", base, rec, self.global_step)

    def op(self, metrics: dict[str, float], steps: int | None = None) -> None:
        """The current operation finished with ``metrics`` (:func:`op_metrics`) after ``steps``."""
        if steps is not None:
            self.global_step = self._op_start + int(steps)
        base = {"run": self.run, "seed": self.seed, "index": self.index, "op": self.label}
        self._each("op", base, metrics, self.global_step)

    def _each(self, what: str, *args) -> None:
        """Hand a record to every backend. A backend that fails (a full disk, a wandb error)
        is dropped with one warning: the run goes on, its results are in the store."""
        for b in list(self.backends):
            try:
                getattr(b, what)(*args)
            except Exception as e:  # noqa: BLE001 - a logger never stops the science
                self.backends.remove(b)
                log.warning("warning: seed %s: --log %s stopped recording (%s: %s); the run goes on and its "
                            "results are in the store", self.seed, _kind_of(b), type(e).__name__,
                            " ".join(str(e).split())[:200])
                try:
                    b.close()
                except Exception:  # noqa: BLE001
                    pass

    def close(self) -> None:
        for b in self.backends:
            try:
                b.close()
            except Exception:  # closing one backend never hides the others' records
                pass
        self.backends = []


__all__ = ["KINDS", "SeedLogger", "check_available", "op_metrics", "parse_kinds"]
