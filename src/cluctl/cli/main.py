"""The ``cluctl`` command line: parses, calls the library, prints.

stdout carries results (a checkpoint id, a table, JSON); progress, summaries and warnings
go to stderr. Errors are one line, ``error: <what> — <what to do>``, exit code 2 for bad
input and 1 for internal failures (``CLUCTL_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer
from typer.exceptions import Abort as _Abort
from typer.exceptions import Exit as _Exit
from typer.exceptions import TyperException

from .. import __version__, unlearning
from ..errors import CluctlError
from .common import (
    DataRootOpt,
    DeviceOpt,
    DownloadOpt,
    DATASET_CHOICES,
    ImplOpt,
    LEARN_CHOICES,
    UNLEARN_CHOICES,
    PrecisionOpt,
    QuietOpt,
    StoreOpt,
    ThreadsOpt,
    err,
    open_store,
    print_json,
    progress_bar,
)

app = typer.Typer(
    name="cluctl",
    help="Continual learning with continual unlearning: learn a stream of tasks (GEM, A-GEM), "
    "forget some on request (NegGEM, RL-GEM, NegGrad+, ...), keep every step in a store.\n\n"
    "Example: cluctl learn --task 0 --dataset digits | xargs -I{} cluctl learn --task 1 --from {}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        typer.echo(f"cluctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


# ------------------------------------------------------------------ learn


@app.command()
def learn(
    task: int = typer.Option(..., "--task", "-t", help="Task to learn (0..N-1)."),
    from_ref: Optional[str] = typer.Option(None, "--from", help="Continue this checkpoint (ref, id or 8+ hex prefix)."),
    algo: Optional[str] = typer.Option(None, "--algo", help=f"{LEARN_CHOICES} (default: gem)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=f"{DATASET_CHOICES} (default: digits)."),
    tasks: Optional[int] = typer.Option(None, "--tasks", help="Number of tasks N (default: the dataset's: digits 5, cifar100 20)."),
    model: Optional[str] = typer.Option(None, "--model", help="resnet18 or mlp (default: the dataset's model: mlp for digits, resnet18 for CIFAR and npz)."),
    width: Optional[int] = typer.Option(None, "--width", help="ResNet nf (default 20) or MLP hidden units (default 100)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run seed: class order, initial weights, every op's randomness (default: 0)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: 0.1)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size (default: 10)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs over the task (default: 3)."),
    memories: Optional[int] = typer.Option(None, "--memories", help="Samples per buffer (default: 256)."),
    mem_strength: Optional[float] = typer.Option(None, "--mem-strength", help="GEM margin while learning (default: 0.5)."),
    agem_sample: Optional[int] = typer.Option(None, "--agem-sample", help="A-GEM: reference from one random batch of M pooled memories (paper variant)."),
    learn_buffer_type: Optional[str] = typer.Option(None, "--learn-buffer-type", help="first, random, most or least (default: least)."),
    learn_buffer_split: Optional[float] = typer.Option(None, "--learn-buffer-split", help="Fraction chosen by score for most/least (default: 0.2)."),
    unlearn_buffer_type: Optional[str] = typer.Option(None, "--unlearn-buffer-type", help="same, random, most or least (default: most)."),
    unlearn_buffer_split: Optional[float] = typer.Option(None, "--unlearn-buffer-split", help="Fraction chosen by score (default: 0.2)."),
    mem_scores: Optional[str] = typer.Option(None, "--mem-scores", help="Memorization scores (ref/id) for most/least (default: the cached confidence proxy)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Also point refs/tags/NAME at the new checkpoint."),
    impl: str = ImplOpt,
    precision: str = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    store: Optional[str] = StoreOpt,
    data_root: Optional[str] = DataRootOpt,
    download: bool = DownloadOpt,
    quiet: bool = QuietOpt,
):
    """Learn one task, from scratch or continuing a checkpoint; prints the new checkpoint id.

    Example: cluctl learn --task 0 --dataset digits --model mlp --seed 1
    """
    from .. import api

    if tag is not None:
        from ..store import Store

        Store.check_ref_name(f"tags/{tag}")
    st = open_store(store)
    with progress_bar(not quiet, f"learn task {task}") as prog:
        res = api.learn(
            task, from_ref=from_ref, store=st, device=device, data_root=data_root, download=download,
            impl=impl, precision=precision, threads=threads, progress=prog, algo=algo, dataset=dataset, tasks=tasks, model=model,
            width=width, seed=seed, lr=lr, batch_size=batch_size, epochs=epochs, memories=memories,
            mem_strength=mem_strength, agem_sample=agem_sample, learn_buffer_type=learn_buffer_type,
            learn_buffer_split=learn_buffer_split, unlearn_buffer_type=unlearn_buffer_type,
            unlearn_buffer_split=unlearn_buffer_split, mem_scores=mem_scores,
        )
    if tag:
        st.set_ref(f"tags/{tag}", res.id)
    s = res.summary
    if not quiet:
        err.print(f"learned task {task} ({s['algo']}): {s['steps']} steps, {s['projections']} projections, "
                  f"{s['qp_fallbacks']} QP fallbacks, buffers of {s['buffer_size']}, {s['wall_s']:.1f} s")
    typer.echo(res.id)


# ------------------------------------------------------------------ unlearn


@app.command()
def unlearn(
    task: int = typer.Option(..., "--task", "-t", help="Task to forget (must be learned)."),
    from_ref: str = typer.Option(..., "--from", help="Checkpoint to start from (ref, id or 8+ hex prefix)."),
    algo: str = typer.Option("neggem", "--algo", help=f"{UNLEARN_CHOICES} (case-insensitive; thesis spellings work)."),
    unlearning_rate: Optional[float] = typer.Option(None, "--unlearning-rate", help=f"SGD rate (default: {unlearning.rule_help('unlearning_rate')})."),
    unlearn_batch_size: Optional[int] = typer.Option(None, "--unlearn-batch-size", help="b samples from each forget buffer per step (default: 10)."),
    unlearn_mem_strength: Optional[float] = typer.Option(None, "--unlearn-mem-strength", help="GEM margin while unlearning (default: 0.5)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="NegGrad+ weight of the retained tasks, in [0, 1] (default: 0.5)."),
    forget_loss_scale: Optional[float] = typer.Option(None, "--forget-loss-scale", help=f"s (default: {unlearning.rule_help('forget_loss_scale')})."),
    stop_acc: Optional[float] = typer.Option(None, "--stop-acc", help="Stop when the forget buffers' accuracy is at most this (default: chance + (1-chance)/6)."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="Maximum passes over the unlearn buffer (default: 48)."),
    salun_strength: Optional[float] = typer.Option(None, "--salun-strength", help="SalUn: keep this fraction (0, 1] of weights by saliency (default: off)."),
    salun_on: Optional[str] = typer.Option(None, "--salun-on", help="gradient (mask g_f, thesis) or update (mask the final update) (default: gradient)."),
    tag: Optional[str] = typer.Option(None, "--tag", help="Also point refs/tags/NAME at the new checkpoint."),
    impl: str = ImplOpt,
    precision: str = PrecisionOpt,
    device: Optional[str] = DeviceOpt,
    threads: Optional[int] = ThreadsOpt,
    store: Optional[str] = StoreOpt,
    data_root: Optional[str] = DataRootOpt,
    download: bool = DownloadOpt,
    quiet: bool = QuietOpt,
):
    """Forget one learned task; prints the new checkpoint id.

    Options given explicitly earlier in the lineage are kept unless given again; the rule defaults (unlearning rate, forget-loss scale, stop accuracy) follow this operation's algorithm. A request whose weights blow up (norm beyond 100x its start, or not finite) fails with exit 1 and writes nothing.

    Example: cluctl unlearn --task 4 --from tags/learned-all --algo rl-gem
    """
    from .. import api

    if tag is not None:
        from ..store import Store

        Store.check_ref_name(f"tags/{tag}")
    st = open_store(store, must_exist=True)
    with progress_bar(not quiet, f"unlearn task {task}") as prog:
        res = api.unlearn(
            task, from_ref=from_ref, store=st, device=device, data_root=data_root, download=download, impl=impl,
            precision=precision, threads=threads, progress=prog, algo=algo, unlearning_rate=unlearning_rate,
            unlearn_batch_size=unlearn_batch_size, unlearn_mem_strength=unlearn_mem_strength, alpha=alpha,
            forget_loss_scale=forget_loss_scale, stop_acc=stop_acc, max_epochs=max_epochs,
            salun_strength=salun_strength, salun_on=salun_on,
        )
    if tag:
        st.set_ref(f"tags/{tag}", res.id)
    s = res.summary
    if not quiet:
        if s["stopped"] == "reset":
            err.print(f"unlearned task {task}: it was the only learned task, reset to the initial weights")
        else:
            how = {"stop-acc": "reached the stop accuracy",
                   "max-epochs": "hit --max-epochs WITHOUT reaching the stop accuracy"}[s["stopped"]]
            err.print(f"unlearned task {task} ({s['algo']}): {s['steps']} steps, forget accuracy "
                      f"{s['final_forget_acc']:.3f} ({how}, stop at {s['stop_acc']:.3f}), "
                      f"{s['projections']} projections, {s['qp_fallbacks']} QP fallbacks, {s['wall_s']:.1f} s")
    typer.echo(res.id)


# ------------------------------------------------------------------ evaluate


@app.command()
def evaluate(
    ref: str = typer.Argument(..., help="A checkpoint (ref, id, prefix) or a launch's results folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    metrics: bool = typer.Option(False, "--metrics", help="For a results folder: ACC, BWT, CL-ToW, CLU_mix per operation."),
    reference: str = typer.Option("prefix", "--reference", help="CL-ToW reference with --metrics: prefix (the "
                                  "earlier forgotten-nothing row; none for most presets) or retrain (a model "
                                  "retrained on the retained tasks, trained once in the run's store)."),
    impl: str = ImplOpt,
    threads: Optional[int] = ThreadsOpt,
    device: Optional[str] = DeviceOpt,
    store: Optional[str] = StoreOpt,
    data_root: Optional[str] = DataRootOpt,
    download: bool = DownloadOpt,
):
    """Per-task test/train accuracy and confidence, with each task's status.

    Example: cluctl evaluate tags/learned-all --json
    """
    from .. import api

    if as_json and as_csv:
        raise CluctlError("--json and --csv are mutually exclusive", "pick one")
    if os.path.isdir(ref) and (metrics or os.path.exists(os.path.join(ref, "summary.json"))):
        from .results import evaluate_results

        kw = {}
        if reference == "retrain":
            kw = dict(store=open_store(store, must_exist=True), device=device, data_root=data_root,
                      download=download, impl=impl, threads=threads)
        evaluate_results(ref, as_json=as_json, as_csv=as_csv, reference=reference, **kw)
        return
    if metrics:
        raise CluctlError(f"--metrics needs a launch's results folder; '{ref}' is not one",
                          "pass the folder launch wrote (results/<run>/)")
    st = open_store(store, must_exist=True)
    res = api.evaluate(ref, store=st, device=device, data_root=data_root, download=download)
    if as_json:
        print_json(res)
        return
    cols = ["task", "status", "test_acc", "test_conf", "train_acc", "train_conf"]
    if as_csv:
        typer.echo(",".join(cols + ["classes"]))
        for t in res["tasks"]:
            typer.echo(",".join(str(t[c]) for c in cols) + "," + " ".join(map(str, t["classes"])))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{res['checkpoint'][:12]}  {res['dataset']}  seed {res['seed']}  after {res['op']}")
    for c in cols:
        table.add_column(c, justify="right" if c != "status" else "left")
    style = {"learned": "green", "forgotten": "red", "unseen": "dim"}
    for t in res["tasks"]:
        table.add_row(str(t["task"]), f"[{style[t['status']]}]{t['status']}[/]",
                      *(f"{t[c]:.3f}" if t[c] is not None else "-" for c in cols[2:]))
    Console().print(table)


# ------------------------------------------------------------------ sub-apps


def _mount():
    from . import store_cmd

    app.add_typer(store_cmd.app, name="store", help="Inspect and maintain the store: ls, show, log, tag, verify, gc, purge.")
    for name, mod, attr, helptext in (
        ("memorize", "memorize", "app", "Memorization scores: import the published file or estimate them."),
    ):
        try:
            module = __import__(f"cluctl.cli.{mod}", fromlist=[attr])
        except ModuleNotFoundError as e:  # pragma: no cover - only while a module is missing
            if e.name != f"cluctl.cli.{mod}":
                raise
            continue
        app.add_typer(getattr(module, attr), name=name, help=helptext)
    # Commands living in their own modules register themselves: module.register(app).
    for mod in ("launch", "mia", "plot"):
        try:
            module = __import__(f"cluctl.cli.{mod}", fromlist=["register"])
        except ModuleNotFoundError as e:  # pragma: no cover - only while a module is missing
            if e.name != f"cluctl.cli.{mod}":
                raise
            continue
        module.register(app)


_mount()


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: run the app, turning every error into one line and an exit code."""
    from ..store import core as store_core

    debug = os.environ.get("CLUCTL_DEBUG") not in (None, "", "0")
    mark = store_core.new_stores_mark()
    code = 1
    try:
        code = _run(argv, debug)
    finally:  # also when CLUCTL_DEBUG=1 lets an exception through
        if code == 0:
            store_core.forget_new_stores(mark)
        else:  # a failed command leaves no empty store of its own making behind
            store_core.discard_new_stores(mark)
    sys.stdout.flush()
    sys.exit(code)


def _run(argv: Optional[List[str]], debug: bool) -> int:
    """Run the app; return the exit code (errors printed as one line unless ``debug``)."""
    try:
        rv = app(args=argv, prog_name="cluctl", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except CluctlError as e:
        if debug:
            raise
        err.print(f"error: {e}", markup=False, soft_wrap=True)
        code = e.exit_code
    except _Exit as e:
        code = e.exit_code
    except TyperException as e:  # click's usage errors (vendored by typer)
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            code = 2
        else:
            if debug:
                raise
            msg = " ".join(e.format_message().split())
            hint = f" — see '{ctx.command_path} --help'" if ctx is not None else ""
            err.print(f"error: {msg}{hint}", markup=False, soft_wrap=True)
            code = getattr(e, "exit_code", 2)
    except _Abort:
        err.print("error: aborted", markup=False)
        code = 130
    except KeyboardInterrupt:
        err.print("error: interrupted", markup=False)
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as e:  # an internal failure: say so in one line
        if debug:
            raise
        text = " ".join(str(e).split())[:300]
        err.print(f"error: internal error: {type(e).__name__}: {text} — set CLUCTL_DEBUG=1 for the traceback "
                  "and report it", markup=False, soft_wrap=True)
        code = 1
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
