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

from .. import __version__
from ..errors import CluctlError
from .common import (DataRootOpt, DeviceOpt, DownloadOpt, ImplOpt, StoreOpt, ThreadsOpt, err, open_store, print_json,
                     progress_bar, setup_logging)
from .options import command_options, typer_option

def _flags_show_no_type() -> None:
    """Typer's help prints ``<bool>`` in the type column of every on/off flag (--help and
    --mia included), which reads as if the flag took a value; show nothing there. Only where
    Typer has that column (its ``display_type_rich``); other versions are left alone."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    show = getattr(option, "display_type_rich", None)
    if show is None or getattr(show, "_cluctl", False):
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return show(self, ctx)

    display_type_rich._cluctl = True
    option.display_type_rich = display_type_rich


_flags_show_no_type()

app = typer.Typer(
    name="cluctl",
    help="Continual learning with continual unlearning: learn a stream of tasks (GEM, A-GEM), "
    "forget some on request (NegGEM, RL-GEM, NegGrad+, ...), keep every step in a store.\n\n"
    "Example: cluctl learn --task 0 --dataset digits | xargs -I{} cluctl learn --task 1 --from {}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        typer.echo(f"cluctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    setup_logging()


# ------------------------------------------------------------------ learn


def _operation_call(values: dict) -> tuple[dict, dict]:
    """(the API's execution keyword arguments, the operation's options) from parsed flags."""
    from ..config import OPTIONS

    v = {k: val for k, val in values.items() if val is not None}
    ex = {k: v.pop(k) for k in ("device", "data_root", "impl", "precision", "threads") if k in v}
    ex["download"] = bool(v.pop("download", False))
    for k in ("task", "from_ref", "tag", "store", "quiet", "as_json"):
        v.pop(k, None)
    assert all(k in OPTIONS for k in v)
    return ex, v


def _json_param():
    import inspect

    return [inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                              default=typer.Option(False, "--json", rich_help_panel="Output",
                                                   help='Print {"id": ..., "summary": {...}} as JSON instead of the id.'))]


def _print_result(res, as_json: bool) -> None:
    if as_json:
        print_json({"id": res.id, "summary": res.summary})
    else:
        typer.echo(res.id)


@app.command()
@command_options("learn", own=_json_param())
def learn(**values):
    """Learn one task, from scratch or continuing a checkpoint; prints the new checkpoint id.

    With --from, every option given along the checkpoint's lineage is kept unless given again.

    Example: cluctl learn --task 0 --dataset digits --model mlp --seed 1
    """
    from .. import api

    task, tag, quiet = values["task"], values.get("tag"), bool(values.get("quiet"))
    setup_logging(quiet)
    ex, opts = _operation_call(values)
    st = open_store(values.get("store"))
    if tag is not None:  # a bad, overlong or taken name fails before any work
        st.check_tag_name(tag)
    with progress_bar(not quiet, f"learn task {task}") as prog:
        res = api.learn(task, from_ref=values.get("from_ref"), store=st, progress=prog, **ex, **opts)
    if tag:
        st.set_ref(f"tags/{tag}", res.id)
    s = res.summary
    if not quiet:
        err.print(f"learned task {task} ({s['algo']}): {s['steps']} steps, {s['projections']} projections, "
                  f"{s['qp_fallbacks']} QP fallbacks, buffers of {s['buffer_size']}, {s['wall_s']:.1f} s")
    _print_result(res, bool(values.get("as_json")))


# ------------------------------------------------------------------ unlearn


@app.command()
@command_options("unlearn", own=_json_param())
def unlearn(**values):
    """Forget one learned task; prints the new checkpoint id.

    Options given explicitly earlier in the lineage are kept unless given again; the rule defaults (unlearning rate, forget-loss scale, stop accuracy) follow this operation's algorithm. A request whose weights blow up (norm beyond 100x its start, or not finite) fails with exit 1 and writes nothing.

    Example: cluctl unlearn --task 4 --from tags/learned-all --algo rl-gem
    """
    from .. import api

    task, tag, quiet = values["task"], values.get("tag"), bool(values.get("quiet"))
    setup_logging(quiet)
    ex, opts = _operation_call(values)
    st = open_store(values.get("store"), must_exist=True)
    if tag is not None:  # a bad, overlong or taken name fails before any work
        st.check_tag_name(tag)
    with progress_bar(not quiet, f"unlearn task {task}") as prog:
        res = api.unlearn(task, from_ref=values["from_ref"], store=st, progress=prog, **ex, **opts)
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
    _print_result(res, bool(values.get("as_json")))


# ------------------------------------------------------------------ evaluate


@app.command()
def evaluate(
    ref: str = typer.Argument(..., help="A checkpoint (ref, id, prefix) or a launch's results folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a stable interface)."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
    metrics: bool = typer.Option(False, "--metrics", help="For a results folder: ACC, BWT, CL-ToW, CLU_mix per operation."),
    table_format: Optional[str] = typer.Option(None, "--format", help="With --metrics on a results folder: a latex "
                                               "(booktabs) or markdown table of mean ± s.d. per operation."),
    reference: str = typer_option("reference", default="prefix"),
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
        evaluate_results(ref, as_json=as_json, as_csv=as_csv, reference=reference, fmt=table_format, **kw)
        return
    if table_format is not None:
        raise CluctlError(f"--format {table_format} needs a launch's results folder (with --metrics); '{ref}' is not one",
                          "pass the folder launch wrote (results/<run>/), or use --json/--csv for a checkpoint")
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
    for mod in ("launch", "mia", "plot", "runs"):
        try:
            module = __import__(f"cluctl.cli.{mod}", fromlist=["register"])
        except ModuleNotFoundError as e:  # pragma: no cover - only while a module is missing
            if e.name != f"cluctl.cli.{mod}":
                raise
            continue
        module.register(app)


_mount()


class Interrupted(CluctlError):
    """Ctrl-C (SIGINT): raised by the CLI's own handler, so that Typer (which turns a
    KeyboardInterrupt into a silent exit 130) lets it reach :func:`_run`."""

    exit_code = 130


def _on_sigint(signum, frame):
    raise Interrupted("interrupted", "nothing half-written was kept; run the command again to redo it")


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: run the app, turning every error into one line and an exit code."""
    import signal

    from ..store import core as store_core

    debug = os.environ.get("CLUCTL_DEBUG") not in (None, "", "0")
    mark = store_core.new_stores_mark()
    code = 1
    old = signal.getsignal(signal.SIGINT)
    if old is signal.default_int_handler:  # not when SIGINT is ignored (nohup, &)
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        code = _run(argv, debug)
    finally:  # also when CLUCTL_DEBUG=1 lets an exception through
        if old is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting: no traceback
        if code == 0:
            store_core.forget_new_stores(mark)
        else:  # a failed command leaves no empty store of its own making behind
            store_core.discard_new_stores(mark)
        if argv is not None:  # called from Python (tests, notebooks): hand SIGINT back
            signal.signal(signal.SIGINT, old)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
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
