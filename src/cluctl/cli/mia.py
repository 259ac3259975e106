"""``cluctl mia``: membership inference against one task of a checkpoint."""

from __future__ import annotations

from typing import Optional

import typer

from .common import DataRootOpt, DeviceOpt, DownloadOpt, StoreOpt, err, open_store, print_json


def mia(
    ref: str = typer.Argument(..., help="Checkpoint (ref, id or 8+ hex prefix)."),
    task: int = typer.Option(..., "--task", "-t", help="Task whose membership is attacked."),
    members: str = typer.Option("train", "--members", help="train (the task's training samples) or buffer (its replay buffer)."),
    attack: str = typer.Option("loss", "--attack", help="loss (loss-based logistic attack) or efficacy (SalUn's MIA-efficacy)."),
    seed: Optional[int] = typer.Option(None, "--attack-seed", "--seed", help="The attack's sampling seed, not the run's (also spelled --seed) (default: the run seed)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    device: Optional[str] = DeviceOpt,
    store: Optional[str] = StoreOpt,
    data_root: Optional[str] = DataRootOpt,
    download: bool = DownloadOpt,
):
    """Membership inference on a task: can an attacker tell its training samples from its
    test samples? AUC near 0.5 means it cannot.

    Example: cluctl mia tags/after-u1 --task 1 --members train
    """
    from .. import api

    st = open_store(store, must_exist=True)
    res = api.mia(ref, task, members=members, attack=attack, seed=seed, store=st, device=device,
                  data_root=data_root, download=download)
    if res.get("buffer_from"):
        err.print(f"task {task} is {res['status']}: using its buffer from ancestor checkpoint "
                  f"{res['buffer_from'][:12]}", markup=False)
    if as_json:
        print_json(res)
    elif attack == "loss":
        typer.echo(f"task {task} ({res['status']}), members={members}: attack acc {res['acc']:.4f}  "
                   f"AUC {res['auc']:.4f}  5-fold CV acc {res['cv_acc']:.4f}  (n={res['n']} per side)")
    else:
        typer.echo(f"task {task} ({res['status']}): MIA-efficacy {res['efficacy']:.4f} "
                   "(fraction of its training samples called non-members)")


def register(app: typer.Typer) -> None:
    app.command("mia")(mia)
