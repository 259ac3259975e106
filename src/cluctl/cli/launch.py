"""``cluctl launch``: a sequence x seeds x devices, resumable, with a results folder."""

from __future__ import annotations

from typing import Optional

import typer

from .. import unlearning
from .common import DATASET_CHOICES, LEARN_CHOICES, UNLEARN_CHOICES, err

P_RUN = "Sequence, seeds, run"
P_LEARN = "Learning"
P_UNLEARN = "Unlearning"
P_BUF = "Buffers"
P_DATA = "Data and model"
P_EXEC = "Execution (not part of the run's identity)"
P_OUT = "Output"
P_THESIS = "Thesis compatibility (also: --algorithm, --number_of_gpus, --learn_batch_size, ...)"


def launch(
    # --- sequence, seeds, run
    sequence: Optional[str] = typer.Option(None, "--sequence", "--task_sequence", rich_help_panel=P_RUN,
                                           help="Preset A4..H4, C4v2, or operations like 'L0-4 U4-1' (default: A4)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", "--average_over_n_runs", rich_help_panel=P_RUN,
                                        help="Run seeds 0..N-1 (default: 1 seed, 0)."),
    seed_list: Optional[str] = typer.Option(None, "--seed-list", rich_help_panel=P_RUN,
                                            help="Run exactly these seeds, e.g. 3,7 (one Slurm array task each)."),
    name: Optional[str] = typer.Option(None, "--name", rich_help_panel=P_RUN,
                                       help="Run name (default: <sequence>-<algo>-<hash of the scientific options>)."),
    resume: Optional[str] = typer.Option(None, "--resume", rich_help_panel=P_RUN,
                                         help="Continue run RUN with its stored options (finished operations are kept)."),
    aggregate_only: bool = typer.Option(False, "--aggregate-only", rich_help_panel=P_RUN,
                                        help="Only rebuild the results folder from the store (no training)."),
    config: Optional[str] = typer.Option(None, "--config", rich_help_panel=P_RUN,
                                         help="TOML file of options (keys = option names, dashes or underscores); flags override it."),
    # --- learning
    learn_algo: Optional[str] = typer.Option(None, "--learn-algo", rich_help_panel=P_LEARN, help=f"{LEARN_CHOICES} (default: gem)."),
    lr: Optional[float] = typer.Option(None, "--lr", rich_help_panel=P_LEARN, help="Learning rate (default: 0.1)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "--learn_batch_size", rich_help_panel=P_LEARN,
                                             help="Batch size (default: 10)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", rich_help_panel=P_LEARN, help="Epochs per task (default: 3)."),
    memories: Optional[int] = typer.Option(None, "--memories", rich_help_panel=P_LEARN, help="Samples per buffer (default: 256)."),
    mem_strength: Optional[float] = typer.Option(None, "--mem-strength", "--learn_mem_strength", rich_help_panel=P_LEARN,
                                                 help="GEM margin while learning (default: 0.5)."),
    agem_sample: Optional[int] = typer.Option(None, "--agem-sample", rich_help_panel=P_LEARN,
                                              help="A-GEM: reference from one random batch of M pooled memories."),
    # --- unlearning
    algo: Optional[str] = typer.Option(None, "--algo", "--algorithm", rich_help_panel=P_UNLEARN,
                                       help=f"{UNLEARN_CHOICES} (default: neggem)."),
    unlearning_rate: Optional[float] = typer.Option(None, "--unlearning-rate", rich_help_panel=P_UNLEARN,
                                                    help=f"SGD rate (default: {unlearning.rule_help('unlearning_rate')})."),
    unlearn_batch_size: Optional[int] = typer.Option(None, "--unlearn-batch-size", "--unlearn_batch_size", rich_help_panel=P_UNLEARN,
                                                     help="b samples from each forget buffer per step (default: 10)."),
    unlearn_mem_strength: Optional[float] = typer.Option(None, "--unlearn-mem-strength", "--unlearn_mem_strength",
                                                         rich_help_panel=P_UNLEARN, help="GEM margin while unlearning (default: 0.5)."),
    alpha: Optional[float] = typer.Option(None, "--alpha", rich_help_panel=P_UNLEARN, help="NegGrad+ weight of the retained tasks (default: 0.5)."),
    forget_loss_scale: Optional[float] = typer.Option(None, "--forget-loss-scale", rich_help_panel=P_UNLEARN,
                                                      help=f"s (default: {unlearning.rule_help('forget_loss_scale')})."),
    stop_acc: Optional[float] = typer.Option(None, "--stop-acc", rich_help_panel=P_UNLEARN,
                                             help="Stop at this forget-buffer accuracy (default: chance + (1-chance)/6)."),
    max_epochs: Optional[int] = typer.Option(None, "--max-epochs", rich_help_panel=P_UNLEARN, help="Maximum passes (default: 48)."),
    salun_strength: Optional[float] = typer.Option(None, "--salun-strength", "--salun_strength", rich_help_panel=P_UNLEARN,
                                                   help="SalUn: keep this fraction (0, 1] of weights (default: off)."),
    salun_on: Optional[str] = typer.Option(None, "--salun-on", rich_help_panel=P_UNLEARN,
                                           help="gradient (thesis) or update (default: gradient)."),
    # --- buffers
    learn_buffer_type: Optional[str] = typer.Option(None, "--learn-buffer-type", "--learning_buffer_type", rich_help_panel=P_BUF,
                                                    help="first, random, most or least (default: least)."),
    learn_buffer_split: Optional[float] = typer.Option(None, "--learn-buffer-split", "--learning_buffer_split", rich_help_panel=P_BUF,
                                                       help="Fraction chosen by score for most/least (default: 0.2)."),
    unlearn_buffer_type: Optional[str] = typer.Option(None, "--unlearn-buffer-type", "--unlearning_buffer_type", rich_help_panel=P_BUF,
                                                      help="same, random, most or least (default: most)."),
    unlearn_buffer_split: Optional[float] = typer.Option(None, "--unlearn-buffer-split", "--unlearning_buffer_split",
                                                         rich_help_panel=P_BUF, help="Fraction chosen by score (default: 0.2)."),
    mem_scores: Optional[str] = typer.Option(None, "--mem-scores", rich_help_panel=P_BUF,
                                             help="Memorization scores REF (default: the cached confidence proxy)."),
    # --- data and model
    dataset: Optional[str] = typer.Option(None, "--dataset", rich_help_panel=P_DATA,
                                          help=f"{DATASET_CHOICES} (default: digits; the thesis used cifar100)."),
    tasks: Optional[int] = typer.Option(None, "--tasks", rich_help_panel=P_DATA, help="Number of tasks N (default: the dataset's)."),
    model: Optional[str] = typer.Option(None, "--model", rich_help_panel=P_DATA, help="resnet18 or mlp (default: the dataset's model: mlp for digits, resnet18 for CIFAR and npz)."),
    width: Optional[int] = typer.Option(None, "--width", rich_help_panel=P_DATA, help="ResNet nf (default 20) or MLP hidden units (default 100)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", rich_help_panel=P_DATA,
                                            help="Where CIFAR files live (default: $CLUCTL_DATA or ~/.cache/cluctl/data)."),
    download: Optional[bool] = typer.Option(None, "--download/--no-download", rich_help_panel=P_DATA,
                                            help="Download CIFAR through torchvision if missing."),
    # --- execution
    devices: Optional[str] = typer.Option(None, "--devices", rich_help_panel=P_EXEC,
                                          help="cpu or cuda:0,cuda:1 (seeds round-robin; default: cuda:0 if visible, else cpu). Wins over --gpus."),
    gpus: Optional[int] = typer.Option(None, "--gpus", "--number_of_gpus", rich_help_panel=P_EXEC, help="Use cuda:0..cuda:N-1."),
    per_device: Optional[int] = typer.Option(None, "--per-device", rich_help_panel=P_EXEC,
                                             help="Seed processes running at once per device (default: 1)."),
    threads: Optional[int] = typer.Option(None, "--threads", rich_help_panel=P_EXEC,
                                          help="CPU threads per seed process (default: cores / concurrent processes, at least 1)."),
    impl: Optional[str] = typer.Option(None, "--impl", rich_help_panel=P_EXEC, help="fast or classic (default: fast)."),
    precision: Optional[str] = typer.Option(None, "--precision", rich_help_panel=P_EXEC, help="fp32, or bf16 autocast of the training forward passes (CUDA devices, or CPUs with AMX/AVX512-BF16) (default: fp32)."),
    store: Optional[str] = typer.Option(None, "--store", envvar="CLUCTL_STORE", show_envvar=False, rich_help_panel=P_EXEC,
                                        help="Store directory (default: $CLUCTL_STORE or ./store)."),
    # --- output
    out: Optional[str] = typer.Option(None, "--out", rich_help_panel=P_OUT, help="Results folder (default: results/<run>/)."),
    mia: Optional[bool] = typer.Option(None, "--mia/--no-mia", rich_help_panel=P_OUT,
                                       help="Membership-inference attacks after every operation (mia.csv)."),
    plots: Optional[bool] = typer.Option(None, "--plots/--no-plots", rich_help_panel=P_OUT, help="Standard figures in <out>/plots/ (default: on)."),
    reference: Optional[str] = typer.Option(None, "--reference", rich_help_panel=P_OUT,
                                            help="CL-ToW reference: prefix (the earlier forgotten-nothing row) or "
                                                 "retrain (models retrained on the retained tasks, trained once in "
                                                 "the store; reports how many operations that took) (default: prefix)."),
    quiet: Optional[bool] = typer.Option(None, "--quiet", "-q", rich_help_panel=P_OUT, help="No progress on stderr."),
    # --- thesis toggles
    salun: Optional[int] = typer.Option(None, "--salun", rich_help_panel=P_THESIS,
                                        help="1: SalUn on (needs --salun_strength); 0: off even if a strength is given."),
    mem_learning_buffer: Optional[int] = typer.Option(None, "--mem_learning_buffer", rich_help_panel=P_THESIS,
                                                      help="0: learn buffer type first; 1: use --learning_buffer_type."),
    mem_unlearning_buffer: Optional[int] = typer.Option(None, "--mem_unlearning_buffer", rich_help_panel=P_THESIS,
                                                        help="0: unlearn buffer type same; 1: use --unlearning_buffer_type."),
):
    """Run a task sequence for several seeds, one process per seed, checkpointing every
    operation in the store; the same command again resumes. Prints the results folder.

    Example: cluctl launch --sequence A4 --algo neggem --seeds 3 --devices cpu --per-device 2
    """
    flags = dict(locals())
    flags.pop("config")
    from ..launch import execute, load_toml, make_plan, merge

    flags["aggregate_only"] = aggregate_only or None
    toml_values = load_toml(config) if config else None
    plan = make_plan(merge(toml_values, flags))
    for w in plan.warnings:
        err.print(f"warning: {w}", markup=False, soft_wrap=True)
    outcome = execute(plan)
    if outcome.out is not None:
        typer.echo(str(outcome.out))
    others = "the other seeds finished; " if outcome.complete else ""
    for seed, msg in sorted(outcome.failed.items()):
        if seed in outcome.diverged:
            where = f"results ({outcome.out})" if outcome.out is not None else "store"
            err.print(f"error: seed {seed} of run {outcome.run} stopped at {outcome.diverged[seed]}: {msg} — "
                      f"{others}the {where} record the operations before it and the divergence",
                      markup=False, soft_wrap=True)
            continue
        err.print(f"error: seed {seed} of run {outcome.run} failed: {msg} — {others}run the same command "
                  "again to resume it", markup=False, soft_wrap=True)
    if outcome.exit_code == 1 and not outcome.failed and outcome.incomplete:
        err.print(f"error: seeds {', '.join(map(str, outcome.incomplete))} of run {outcome.run} did not finish — "
                  "run the same command again to resume", markup=False, soft_wrap=True)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def register(app: typer.Typer) -> None:
    """Add the ``launch`` command to the cluctl app."""
    app.command("launch", help=launch.__doc__)(launch)
