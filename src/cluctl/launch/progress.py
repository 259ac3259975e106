"""What a launch shows on stderr while its seeds run.

On a terminal: a live rich table, one row per seed (seed, device, op i/n, current op,
step progress, status, elapsed). Elsewhere (a log file, Slurm's output, a test): plain
lines, one per event that matters (start, each finished operation, done, failure), each
starting with its local time.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def stderr_console() -> Console:
    """The console launch writes its log to when the caller gives none (stderr, as the
    CLI's; launch never reaches up into the CLI for it)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


class Display:
    """Consumes worker messages (see :mod:`cluctl.launch.worker`) and shows them."""

    def __init__(self, console: Console, seeds: list[tuple[int, str]], live: bool | None = None, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.live = (console.is_terminal if live is None else live) and not quiet
        self.device = dict(seeds)
        self.t0: dict[int, float] = {}
        self._progress: Progress | None = None
        self._tasks: dict[int, Any] = {}
        if self.live:
            self._progress = Progress(
                TextColumn("seed {task.fields[seed]:>3}"),
                TextColumn("[dim]{task.fields[device]}[/]"),
                TextColumn("op {task.fields[op]:>7}"),
                TextColumn("[bold]{task.fields[label]:<4}[/]"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console, transient=False, refresh_per_second=4,
            )
            for seed, dev in seeds:
                self._tasks[seed] = self._progress.add_task(
                    "", total=None, start=False, seed=seed, device=dev, op="-", label="", status="[dim]queued[/]")

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Display":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _line(self, text: str) -> None:
        if not self.quiet and not self.live:  # a log file: each line with its time
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.console.print(f"{stamp} {text}", markup=False, highlight=False, soft_wrap=True)

    def _update(self, seed: int, **fields) -> None:
        if self._progress is not None and seed in self._tasks:
            self._progress.update(self._tasks[seed], **fields)

    def _complete_bar(self, seed: int) -> None:
        if self._progress is not None and seed in self._tasks:
            task = next(t for t in self._progress.tasks if t.id == self._tasks[seed])
            total = task.total or max(task.completed, 1)
            self._progress.update(self._tasks[seed], total=total, completed=total)

    # -------------------------------------------------------------- events
    def started(self, seed: int) -> None:
        self.t0[seed] = time.monotonic()
        if self._progress is not None:
            self._progress.start_task(self._tasks[seed])
        self._update(seed, status="starting")

    def message(self, msg: tuple) -> None:
        kind, seed = msg[0], msg[1]
        dev = self.device.get(seed, "?")
        if kind == "start":
            _, _, done, n, label = msg
            self._update(seed, op=f"{min(done + 1, n)}/{n}", label=label or "", status="running")
            if done >= n:
                self._line(f"seed {seed} [{dev}]: all {n} operations already done")
            elif done:
                self._line(f"seed {seed} [{dev}]: resuming after operation {done}/{n}")
            else:
                self._line(f"seed {seed} [{dev}]: starting, {n} operations")
        elif kind == "op":
            _, _, i, n, label = msg
            self._update(seed, op=f"{i + 1}/{n}", label=label, completed=0, total=None, status="running")
        elif kind == "step":
            _, _, i, steps, total, text = msg
            self._update(seed, completed=steps, total=total, status=text)
        elif kind == "op-done":
            _, _, i, n, label, summary = msg
            extra = ""
            if summary.get("final_forget_acc") is not None:
                extra = f", forget acc {summary['final_forget_acc']:.3f}"
            self._complete_bar(seed)
            self._update(seed, status=f"{label} done{extra}")
            if summary.get("stopped") == "max-epochs":
                extra += " (hit --max-epochs without reaching the stop accuracy)"
            self._line(f"seed {seed} [{dev}]: op {i + 1}/{n} {label} done: {summary.get('steps', 0)} steps"
                       f"{extra}, {summary.get('op_wall_s', 0):.1f} s")
        elif kind == "op-failed":
            _, _, i, n, label, summary = msg
            self._update(seed, status=f"{label} DIVERGED")
            self._line(f"seed {seed} [{dev}]: op {i + 1}/{n} {label} DIVERGED after {summary.get('steps', 0)} steps "
                       f"({summary.get('reason', 'the weights blew up')}); no checkpoint, the seed stops here")
        elif kind == "status":
            self._update(seed, status=msg[2])
            self._line(f"seed {seed} [{dev}]: {msg[2]}")

    def finished(self, seed: int, outcome: str, detail: str = "") -> None:
        wall = time.monotonic() - self.t0.get(seed, time.monotonic())
        style = {"done": "green", "failed": "red", "stopped": "yellow"}.get(outcome, "white")
        text = outcome if not detail else f"{outcome}: {detail}"
        if self._progress is not None:
            self._update(seed, status=f"[{style}]{_short(text)}[/]")
            self._progress.stop_task(self._tasks[seed])
        if outcome != "failed":  # failures get their own error line at the end
            self._line(f"seed {seed} [{self.device.get(seed, '?')}]: {text} ({wall:.1f} s)")

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _short(text: str, n: int = 60) -> str:
    from rich.markup import escape

    text = " ".join(text.split())
    return escape(text if len(text) <= n else text[: n - 1] + "…")
