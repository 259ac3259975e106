"""The parent side of a launch: one spawned process per seed, at most ``per_device`` at
once on each device, progress through one multiprocessing queue per worker (so a worker
killed mid-message cannot wedge the others), and a clean stop on SIGTERM/SIGINT.

Stopping: the first SIGTERM or SIGINT sets a shared Event; workers ignore the signals
themselves and stop at their next safe point (a training step or between operations;
the operation in progress is simply redone on resume). Seeds not started yet are not
started. A second SIGINT kills the workers at once (SIGKILL; the store stays consistent).
"""

from __future__ import annotations

import os
import queue as queue_mod
import signal
import threading
import time
from dataclasses import dataclass, field

from .worker import EXIT_STOPPED, worker_main

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass
class SeedOutcome:
    seed: int
    device: str
    status: str = "queued"  # queued | running | done | failed | stopped | skipped
    error: str | None = None
    exitcode: int | None = None
    diverged_op: str | None = None  # the operation at which the seed diverged


@dataclass
class RunnerResult:
    outcomes: dict[int, SeedOutcome] = field(default_factory=dict)
    stop_signal: int | None = None  # the signal that asked us to stop, if any

    @property
    def failed(self) -> list[SeedOutcome]:
        return [o for o in self.outcomes.values() if o.status == "failed"]


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


class Runner:
    def __init__(self, jobs: list[dict], per_device: int, display, poll_s: float = 0.05):
        import torch.multiprocessing as tmp

        self.ctx = tmp.get_context("spawn")
        self.jobs = jobs
        self.per_device = per_device
        self.display = display
        self.poll_s = poll_s
        self.stop = self.ctx.Event()
        self.stop_signal: int | None = None
        self._interrupts = 0
        self._procs: dict[int, tuple] = {}  # seed -> (process, queue)

    # -------------------------------------------------------------- signals
    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        self.stop.set()
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts >= 2:  # workers ignore SIGTERM: kill them (nothing half-written is referenced)
                for proc, _ in self._procs.values():
                    if proc.is_alive():
                        proc.kill()

    # -------------------------------------------------------------- running
    def run(self) -> RunnerResult:
        result = RunnerResult()
        for job in self.jobs:
            result.outcomes[job["seed"]] = SeedOutcome(job["seed"], job["device"])
        pending = list(self.jobs)
        busy: dict[str, int] = {}
        old = {}
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self._on_signal)
        try:
            while pending or self._procs:
                if not self.stop.is_set():
                    for job in list(pending):
                        dev = job["device"]
                        if busy.get(dev, 0) >= self.per_device:
                            continue
                        pending.remove(job)
                        busy[dev] = busy.get(dev, 0) + 1
                        self._start(job, result)
                elif pending:
                    for job in pending:
                        result.outcomes[job["seed"]].status = "stopped"
                        self.display.finished(job["seed"], "stopped", "not started")
                    pending = []
                self._drain(result)
                for seed, (proc, q) in list(self._procs.items()):
                    if proc.exitcode is None:
                        continue
                    proc.join()
                    self._drain_one(seed, q, result, final=True)
                    self._finish(seed, proc.exitcode, result)
                    busy[result.outcomes[seed].device] -= 1
                    del self._procs[seed]
                    q.close()
                    proc.close()
                time.sleep(self.poll_s)
        except BaseException:
            self.stop.set()
            for proc, _ in self._procs.values():
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
            raise
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        result.stop_signal = self.stop_signal
        return result

    def _start(self, job: dict, result: RunnerResult) -> None:
        q = self.ctx.Queue()
        proc = self.ctx.Process(target=worker_main, args=(job, q, self.stop, os.getpid()),
                                name=f"cluctl-seed-{job['seed']}", daemon=True)
        # The child inherits a blocked SIGTERM/SIGINT through exec, so a signal sent to the
        # whole process group (Slurm, Ctrl-C) while it is still importing cannot kill it; it
        # ignores them once running. Here they stay pending and arrive right after.
        blocked = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_sigmask")
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if blocked else None
        try:
            proc.start()
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self._procs[job["seed"]] = (proc, q)
        result.outcomes[job["seed"]].status = "running"
        self.display.started(job["seed"])

    def _drain(self, result: RunnerResult) -> None:
        for seed, (_, q) in list(self._procs.items()):
            self._drain_one(seed, q, result)

    def _drain_one(self, seed: int, q, result: RunnerResult, final: bool = False) -> None:
        deadline = time.monotonic() + (1.0 if final else 0.0)
        while True:
            try:
                msg = q.get(timeout=0.05) if final and time.monotonic() < deadline else q.get_nowait()
            except (queue_mod.Empty, EOFError, OSError):
                return
            except Exception:  # a message cut off by a killed worker
                return
            kind = msg[0]
            if kind == "error":
                result.outcomes[seed].error = msg[2]
            elif kind == "op-failed":
                result.outcomes[seed].diverged_op = msg[4]
            elif kind == "stopped":
                result.outcomes[seed].status = "stopped"
            self.display.message(msg)

    def _finish(self, seed: int, code: int, result: RunnerResult) -> None:
        out = result.outcomes[seed]
        out.exitcode = code
        if code == 0:
            out.status = "done"
            self.display.finished(seed, "done")
        elif code == EXIT_STOPPED:
            out.status = "stopped"
            self.display.finished(seed, "stopped", "resume to finish it")
        else:
            out.status = "failed"
            if out.error is None:
                out.error = (f"its process was killed by {_signal_name(-code)}" if code < 0
                             else f"its process exited with code {code}")
            self.display.finished(seed, "failed", out.error)
