"""The estimator's worker processes: ``workers`` spawned processes per device, the dataset
passed once through a temporary safetensors file (no pickled tensors)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from cluctl.errors import InternalError

from .common import _check_int
from .one_model import _train_one


# worker-process state (spawned processes only)
_WORKER: dict[str, Any] = {}


def _worker_init(data_path: str, device: str, threads: int, num_classes: int, input_shape) -> None:
    from safetensors.torch import load_file

    torch.set_num_threads(max(1, int(threads)))
    t = load_file(data_path, device=device)
    _WORKER.update(X=t["x"], Y=t["y"], num_classes=num_classes, input_shape=tuple(input_shape))


def _worker_job(j: int, cfg: dict) -> dict:
    w = _WORKER
    return _train_one(w["X"], w["Y"], w["num_classes"], w["input_shape"], j, cfg)


def _run_pool(ds, devs: Sequence[str], workers: int, todo: list[int], cfg: dict, finish, threads=None) -> None:
    """``workers`` spawned processes per device; the dataset travels once through a
    temporary safetensors file (no pickled tensors)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from safetensors.torch import save_file

    cores = os.cpu_count() or 1
    procs = len(devs) * workers
    threads = max(1, cores // procs) if threads is None else _check_int("--threads", threads, 1)
    tmp = tempfile.mkdtemp(prefix="cluctl-memorize-")
    pools: list[ProcessPoolExecutor] = []
    try:
        path = os.path.join(tmp, "train.safetensors")
        save_file({"x": ds.x_train.contiguous(), "y": ds.y_train.contiguous()}, path)
        ctx = mp.get_context("spawn")
        for d in devs:
            pools.append(ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_worker_init,
                initargs=(path, d, threads, int(ds.num_classes), tuple(ds.input_shape)),
            ))
        pending = {pools[i % len(pools)].submit(_worker_job, j, cfg) for i, j in enumerate(todo)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    doc = fut.result()
                except BrokenProcessPool:
                    raise InternalError(
                        "a memorization worker process died",
                        "re-run the same command: finished models are kept in the store and skipped",
                    ) from None
                finish(doc)
    finally:
        for p in pools:
            p.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
