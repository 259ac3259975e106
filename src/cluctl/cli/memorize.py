"""``cluctl memorize``: memorization scores for the ranked replay buffers (SPEC §5).

``import`` reads Feldman & Zhang's published .npz; ``estimate`` runs their subsampled
estimator (or, with ``--method confidence``, the cheap confidence proxy). Both print the
scores object's id on stdout (one line) for ``--mem-scores``; progress and a summary go
to stderr. The library behind it is :mod:`cluctl.buffers.memorization`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Optional

import typer

from ..errors import UsageError
from .common import DATASET_CHOICES, DataRootOpt, DownloadOpt, QuietOpt, StoreOpt, err, open_store, progress_bar, setup_logging

app = typer.Typer(
    help="Memorization scores for ranked replay buffers: import Feldman & Zhang's file or estimate them. "
    "Example: cluctl memorize estimate --dataset digits --models 64",
    no_args_is_help=True,
)

_METHODS = {"fz": "feldman-zhang", "feldman-zhang": "feldman-zhang", "feldman_zhang": "feldman-zhang",
            "confidence": "confidence", "proxy": "confidence"}


def _method(name: str) -> str:
    key = str(name).strip().lower()
    if key not in _METHODS:
        raise UsageError(f"unknown --method {name!r}", "use fz (feldman-zhang) or confidence")
    return _METHODS[key]


@app.command("import")
def import_cmd(
    file: str = typer.Argument(..., help="An .npz with tr_mem (one score per training example) and optionally tr_labels."),
    dataset: str = typer.Option("digits", "--dataset", help=f"Dataset the scores belong to: {DATASET_CHOICES}."),
    store: Optional[str] = StoreOpt,
    data_root: Optional[str] = DataRootOpt,
    download: bool = DownloadOpt,
    quiet: bool = QuietOpt,
    as_json: bool = typer.Option(False, "--json", help='Print {"id", "ref", "n", "mean", ...} as JSON instead of the id.'),
):
    """Import Feldman & Zhang memorization scores (tr_mem) from an .npz; prints the scores id.

    When the file holds tr_labels they must equal the dataset's training labels in order, else nothing is imported (the published file follows TFDS's order, not torchvision's).

    Example: cluctl memorize import cifar100_infl_matrix.npz --dataset cifar100
    """
    from ..buffers.memorization import import_scores, load_scores
    from ..data import load_dataset

    setup_logging(quiet)
    ds = load_dataset(dataset, data_root=data_root, download=download)
    st = open_store(store)
    oid = import_scores(st, file, ds)
    if not quiet:
        scores, meta = load_scores(st, oid)
        checked = "labels checked" if meta["params"].get("labels_checked") else "no tr_labels in the file, order NOT checked"
        err.print(
            f"imported {len(scores):,} scores for {ds.name} ({checked}); "
            f"min {scores.min():.4g}, mean {scores.mean():.4g}, max {scores.max():.4g}"
        )
    if as_json:
        scores, meta = load_scores(st, oid)
        _print(oid, None, scores, meta)
        return
    typer.echo(oid)


@app.command("estimate")
def estimate_cmd(
    dataset: str = typer.Option("digits", "--dataset", help=f"{DATASET_CHOICES}."),
    method: str = typer.Option("fz", "--method", help="fz (feldman-zhang: K models on random subsets) or confidence (the cheap proxy: one training run)."),
    models: int = typer.Option(100, "--models", help="K, the number of models (fz)."),
    subset: float = typer.Option(0.7, "--subset", help="Fraction of the training set each model trains on, in (0, 1) (fz)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs per model (default: 10 for fz, 5 for confidence)."),
    model: str = typer.Option(
        "mlp", "--model",
        help="mlp or resnet18. mlp by default: each of the K models must fit (near 100 % training accuracy) "
        "its subset, quickly. For the confidence proxy that launch caches, use the run's model (the dataset's default: mlp for digits, resnet18 for CIFAR).",
    ),
    width: Optional[int] = typer.Option(None, "--width", help="MLP hidden size (default 100) or ResNet base width (default 20)."),
    lr: float = typer.Option(0.05, "--lr", help="SGD learning rate."),
    batch_size: int = typer.Option(32, "--batch-size", help="Training batch size (at least 2)."),
    momentum: Optional[float] = typer.Option(None, "--momentum", help="SGD momentum (default: 0.9 for fz, so the models fit; 0 for confidence)."),
    seed: int = typer.Option(0, "--seed", help="Model j's subset, init and shuffling are seeded by (seed, j)."),
    devices: Optional[str] = typer.Option(None, "--devices", help="cpu or a comma list like cuda:0,cuda:1 (default: cuda:0 if visible, else cpu)."),
    workers: int = typer.Option(1, "--per-device", "--workers", help="Processes per device (fz), as launch's --per-device (also spelled --workers); 1 with one device runs in this process."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads per process (default: all cores in-process; cores / processes for workers)."),
    store: Optional[str] = StoreOpt,
    data_root: Optional[str] = DataRootOpt,
    download: bool = DownloadOpt,
    quiet: bool = QuietOpt,
    as_json: bool = typer.Option(False, "--json", help='Print {"id", "ref", "n", "mean", ...} as JSON instead of the id.'),
):
    """Estimate memorization scores (Feldman & Zhang, or the confidence proxy); prints the scores id.

    fz trains K models on random subsets of the whole training set and scores mem(i) = P(correct | i trained on) - P(correct | i held out). Finished models are kept in the store, so re-running the same command resumes (and a larger --models reuses them).

    Example: cluctl memorize estimate --dataset digits --models 64
    """
    from ..buffers import memorization as M
    from ..data import load_dataset

    setup_logging(quiet)
    meth = _method(method)
    if not (isinstance(subset, float) and math.isfinite(subset) and 0.0 < subset < 1.0):
        raise UsageError(f"--subset must be in (0, 1), got {subset}", "e.g. --subset 0.7 (Feldman & Zhang's choice)")
    if meth == "feldman-zhang" and models < 2:
        raise UsageError(f"--models must be at least 2, got {models}", "Feldman & Zhang used thousands; 64-100 is a usable minimum")
    if workers < 1:
        raise UsageError(f"--per-device must be at least 1, got {workers}")
    defaults = M.ESTIMATE_DEFAULTS if meth == "feldman-zhang" else M.PROXY_DEFAULTS
    epochs = defaults["epochs"] if epochs is None else epochs
    momentum = defaults["momentum"] if momentum is None else momentum
    devs = M._parse_devices(devices)
    ds = load_dataset(dataset, data_root=data_root, download=download)
    kind, w = M._resolve_model(model, width)
    st = open_store(store)

    if meth == "confidence":
        if len(devs) > 1 and not quiet:
            err.print(f"the confidence proxy is one training run: using {devs[0]} only")
        with progress_bar(not quiet, "confidence proxy") as bar:
            params = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "momentum": momentum}
            if params == M.PROXY_DEFAULTS:  # the very object launch/learn would cache
                scores, oid = M.cached_proxy(st, ds, kind, w, seed, device=devs[0], progress=bar, quiet=True, threads=threads)
                ref = M.proxy_ref(ds, kind, w, seed)
            else:
                scores = M.confidence_proxy(ds, kind, w, seed, device=devs[0], progress=bar, threads=threads, **params)
                meta = {"method": "confidence", "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
                        "params": {"model": kind, "width": w, "seed": seed, **params}, "no_estimate": 0}
                oid = M.save_scores(st, scores, meta)
                tag = hashlib.sha256(repr(sorted(params.items())).encode()).hexdigest()[:8]
                ref = f"scores/confidence/{ds.fingerprint[:16]}-{kind}-{w}-seed{seed}-{tag}"
                st.set_ref(ref, oid)
        if not quiet:
            err.print(
                f"confidence proxy for {ds.name} ({kind} width {w}, {epochs} epochs, seed {seed}): "
                f"{len(scores):,} scores, mean {scores.mean():.4f}; ref {ref}"
            )
        if as_json:
            _print(oid, ref, scores, M.load_scores(st, oid)[1])
            return
        typer.echo(oid)
        return

    with progress_bar(not quiet, "memorize (fz)") as bar:
        scores, info = M.estimate_memorization(
            ds, models=models, subset=subset, epochs=epochs, model=kind, width=w, lr=lr, batch_size=batch_size,
            seed=seed, devices=devs, workers=workers, store=st, progress=bar, momentum=momentum, threads=threads,
        )
    params = {"models": models, "subset": subset, "epochs": epochs, "model": kind, "width": w, "lr": lr,
              "batch_size": batch_size, "momentum": momentum, "seed": seed, "run_key": info["run_key"],
              "train_acc_mean": round(info["train_acc_mean"], 6)}
    meta = {"method": "feldman-zhang", "dataset": ds.name, "dataset_fingerprint": ds.fingerprint,
            "params": params, "no_estimate": info["no_estimate"]}
    oid = M.save_scores(st, scores, meta)
    ref = f"scores/feldman-zhang/{info['run_key']}-k{models}"
    st.set_ref(ref, oid)
    if not quiet:
        err.print(
            f"feldman-zhang on {ds.name}: {models} models ({info['models_trained']} trained, "
            f"{info['models_reused']} reused) in {info['wall_s']:.1f} s; mean training-subset accuracy "
            f"{info['train_acc_mean']:.4f}"
            + (" (below 0.95: the models do not fit their subsets; raise --epochs or --width)" if info["train_acc_mean"] < 0.95 else "")
        )
        err.print(
            f"{info['no_estimate']:,} of {len(scores):,} samples were seen by all or none of the models: "
            f"no estimate, given the mean score {float(scores.mean()):.4f}; ref {ref}"
        )
    if as_json:
        _print(oid, ref, scores, meta, info={k: info[k] for k in ("models_trained", "models_reused", "wall_s")
                                              if k in info})
        return
    typer.echo(oid)


def _print(oid, ref, scores, meta, info=None) -> None:
    """The scores' JSON: id, ref, method, dataset, count, summary statistics, parameters."""
    from .common import print_json

    print_json({"id": oid, "ref": ref, "method": meta.get("method"), "dataset": meta.get("dataset"),
                "n": int(len(scores)), "min": float(scores.min()), "mean": float(scores.mean()),
                "max": float(scores.max()), "no_estimate": meta.get("no_estimate"), "params": meta.get("params"),
                **({"run": info} if info else {})})
