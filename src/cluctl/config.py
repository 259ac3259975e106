"""The option table: every option of ``learn``, ``unlearn`` and ``launch`` declared once.

One :class:`Option` row holds an option's name, type, default (or the rule that gives its
default), range or choices, thesis spellings, help line, help panel, the commands that
take it, and its scope (``run``/``learn``/``buffers``/``unlearn`` options are part of what
a checkpoint or run *is*; ``execution`` and ``output`` ones change how, not what, is
computed). Everything else is derived from the table: the Typer options of the three
commands (:mod:`cluctl.cli.options`), the TOML keys and thesis aliases of ``launch``, the
API's keyword arguments, the defaults below, the value checks (:func:`check`) and the typed
configs (:class:`LearnConfig`, :class:`UnlearnConfig`, :class:`Execution`).

One name per option across all commands (SPEC §8). Some defaults depend on other options
(the unlearning rate and forget-loss scale on the algorithm, the stop accuracy on the
number of classes per task, the model on the dataset): these are *rules*, resolved afresh
at every operation from the options the user gave (:func:`cluctl.resolve.resolve_unlearn`),
never frozen into a lineage. A checkpoint records both: ``given`` (the options given
explicitly, inherited along ``--from``) and ``config`` (the values its operation used).
Names of algorithms, datasets and models are checked by their registries
(:mod:`cluctl.resolve`, :mod:`cluctl.data.registry`, :mod:`cluctl.models.build`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UsageError

LEARN_BUFFER_TYPES = ("first", "random", "most", "least")
UNLEARN_BUFFER_TYPES = ("same", "random", "most", "least")
SALUN_MODES = ("gradient", "update")
IMPLS = ("fast", "classic")
PRECISIONS = ("fp32", "bf16")
REFERENCES = ("prefix", "retrain")
PROFILES = ("spec", "thesis")  # what the algorithms compute (docs/thesis-profile.md)

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
THREADS_PER_CORE = 4  # --threads beyond cores x this is refused (100000 threads exhaust memory)

# panels of --help (launch's grouping, used by every command)
P_RUN = "Sequence, seeds, run"
P_OP = "Operation"
P_LEARN = "Learning"
P_UNLEARN = "Unlearning"
P_BUF = "Buffers"
P_DATA = "Data and model"
P_EXEC = "Execution (not part of the identity)"
P_OUT = "Output"
P_THESIS = "Thesis compatibility"

L, U, X = "learn", "unlearn", "launch"

#: the networks and their default widths (ResNet nf, MLP hidden units)
MODEL_WIDTHS: dict[str, int] = {"resnet18": 20, "mlp": 100}


@dataclass(frozen=True)
class Option:
    """One option. ``key`` is the long flag with underscores (``batch_size`` for
    ``--batch-size``); ``default`` the static default (None: off, or given by ``rule``, a
    phrase for the help text; ``rule="per_algorithm"`` asks the unlearning registry)."""

    key: str
    type: type
    help: str
    commands: tuple[str, ...]
    scope: str  # run | learn | buffers | unlearn | execution | output | launch | thesis
    panel: str
    default: Any = None
    rule: str | None = None  # a phrase, or the name of a rule the help asks its owner for
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | str | None = None  # values, or the registry that names them
    thesis: tuple[str, ...] = ()  # the thesis's spellings (flags in launch, TOML keys)
    short: str | None = None
    envvar: str | None = None
    negatable: bool = False  # a bool flag written --x/--no-x
    flags: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # per-command extra spellings
    required: tuple[str, ...] = ()  # commands where it must be given
    many: bool = False  # a list (TOML) or comma-separated text (flags)
    spellings: tuple[str, ...] = ()  # other TOML keys for it (not the thesis's)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def identity(self) -> bool:
        """Part of what a checkpoint or run is (its id or hash)."""
        return self.scope in ("run", "learn", "buffers", "unlearn")

    def default_text(self) -> str | None:
        """How --help states the default (None: no default to state)."""
        if self.rule is not None:
            return self.rule
        if self.default is None or self.type is bool and self.default is False:
            return None
        return ("on" if self.default else "off") if self.type is bool else str(self.default)


TABLE: tuple[Option, ...] = (
    # --- the operation (learn, unlearn)
    Option("task", int, "Task to learn (0..N-1), or to forget (it must be learned).", (L, U), "op", P_OP,
           lo=0, short="-t", required=(L, U)),
    Option("from_ref", str, "Checkpoint to continue (ref, id or 8+ hex prefix); its options are kept "
           "unless given again.", (L, U), "op", P_OP, required=(U,), flags={L: ("--from",), U: ("--from",)}),
    Option("tag", str, "Also point refs/tags/NAME at the new checkpoint.", (L, U), "op", P_OP),
    # --- sequence, seeds, run (launch)
    Option("sequence", str, "Preset A4..H4, C4v2, or operations like 'L0-4 U4-1'.", (X,), "launch", P_RUN,
           default="A4", thesis=("task_sequence",)),
    Option("seeds", int, "Run seeds 0..N-1.", (X,), "launch", P_RUN, rule="1 seed, 0", lo=1,
           thesis=("average_over_n_runs",)),
    Option("seed_list", str, "Run exactly these seeds, e.g. 3,7 (one Slurm array task each).", (X,), "launch", P_RUN,
           many=True),
    Option("name", str, "Run name.", (X,), "launch", P_RUN, rule="<sequence>-<algo>-<hash of the scientific options>"),
    Option("resume", str, "Continue run RUN with its stored options (finished operations are kept).", (X,),
           "launch", P_RUN),
    Option("aggregate_only", bool, "Only rebuild the results folder from the store (no training).", (X,),
           "launch", P_RUN, default=False),
    Option("config", str, "TOML file of options (keys = option names, dashes or underscores); flags override it.",
           (X,), "launch", P_RUN),
    # --- data and model (a run's identity)
    Option("dataset", str, "Dataset: {datasets}.", (L, X), "run", P_DATA, default="digits", choices="datasets"),
    Option("tasks", int, "Number of tasks N.", (L, X), "run", P_DATA, rule="dataset_tasks", lo=1),
    Option("model", str, "Network: {models}.", (L, X), "run", P_DATA, choices="models", rule="dataset_model"),
    Option("width", int, "ResNet nf or MLP hidden units.", (L, X), "run", P_DATA, rule="model_width", lo=1),
    Option("seed", int, "Run seed: class order, initial weights, every operation's randomness.", (L,), "run",
           P_RUN, default=0, lo=0, hi=MAX_SEED),
    Option("profile", str, "spec (SPEC's principled algorithms) or thesis (the reference code's computations, "
           "quirks included: docs/thesis-profile.md).", (L, X), "run", P_RUN, default="spec", choices=PROFILES),
    # --- learning
    Option("learn_algo", str, "Learning algorithm: {learning}.", (L, X), "learn", P_LEARN, default="gem",
           choices="learning", flags={L: ("--learn-algo", "--algo")}),
    Option("lr", float, "Learning rate.", (L, X), "learn", P_LEARN, default=0.1, lo=0.0, hi=math.inf, lo_open=True),
    Option("batch_size", int, "Batch size.", (L, X), "learn", P_LEARN, default=10, lo=1, thesis=("learn_batch_size",)),
    Option("epochs", int, "Epochs over each task.", (L, X), "learn", P_LEARN, default=3, lo=1),
    Option("memories", int, "Samples per buffer.", (L, X), "learn", P_LEARN, default=256, lo=1),
    Option("mem_strength", float, "GEM margin while learning.", (L, X), "learn", P_LEARN, default=0.5, lo=0.0,
           hi=math.inf, thesis=("learn_mem_strength",)),
    Option("agem_sample", int, "A-GEM paper variant: the reference from one random batch of M pooled memories.",
           (L, X), "learn", P_LEARN, rule="off, all pooled memories", lo=1),
    # --- buffers
    Option("learn_buffer_type", str, "Learn buffers: first, random, most or least memorized.", (L, X), "buffers",
           P_BUF, default="least", choices=LEARN_BUFFER_TYPES, thesis=("learning_buffer_type",)),
    Option("learn_buffer_split", float, "Fraction chosen by score for most/least.", (L, X), "buffers", P_BUF,
           default=0.2, lo=0.0, hi=1.0, thesis=("learning_buffer_split",)),
    Option("unlearn_buffer_type", str, "Unlearn buffers: same (as learn), random, most or least memorized.",
           (L, X), "buffers", P_BUF, default="most", choices=UNLEARN_BUFFER_TYPES, thesis=("unlearning_buffer_type",)),
    Option("unlearn_buffer_split", float, "Fraction of the unlearn buffer chosen by score.", (L, X), "buffers",
           P_BUF, default=0.2, lo=0.0, hi=1.0, thesis=("unlearning_buffer_split",)),
    Option("mem_scores", str, "Memorization scores (ref/id) for most/least.", (L, X), "buffers", P_BUF,
           rule="the cached confidence proxy"),
    # --- unlearning
    Option("algo", str, "Unlearning algorithm: {unlearning} (case-insensitive; thesis spellings work).", (U, X),
           "unlearn", P_UNLEARN, default="neggem", choices="unlearning", thesis=("algorithm",),
           spellings=("unlearn_algo",), flags={U: ("--unlearn-algo", "--algo"), X: ("--unlearn-algo", "--algo")}),
    Option("unlearning_rate", float, "SGD rate while unlearning.", (U, X), "unlearn", P_UNLEARN, rule="per_algorithm",
           lo=0.0, hi=math.inf, lo_open=True),
    Option("unlearn_batch_size", int, "b samples from each forget buffer per step.", (U, X), "unlearn", P_UNLEARN,
           default=10, lo=1, thesis=("unlearn_batch_size",)),
    Option("unlearn_mem_strength", float, "GEM margin while unlearning.", (U, X), "unlearn", P_UNLEARN, default=0.5,
           lo=0.0, hi=math.inf, thesis=("unlearn_mem_strength",)),
    Option("alpha", float, "NegGrad+ weight of the retained tasks, in [0, 1].", (U, X), "unlearn", P_UNLEARN,
           default=0.5, lo=0.0, hi=1.0, thesis=("alpha",)),
    Option("forget_loss_scale", float, "s, the forget loss's scale.", (U, X), "unlearn", P_UNLEARN, rule="per_algorithm",
           lo=0.0, hi=math.inf, lo_open=True),
    Option("stop_acc", float, "Stop when the forget buffers' accuracy is at most this.", (U, X), "unlearn",
           P_UNLEARN, rule="chance + (1-chance)/6", lo=0.0, hi=1.0),
    Option("max_epochs", int, "Maximum passes over the unlearn buffer.", (U, X), "unlearn", P_UNLEARN, default=48,
           lo=1),
    Option("salun_strength", float, "SalUn: keep this fraction (0, 1] of weights by saliency.", (U, X), "unlearn",
           P_UNLEARN, rule="off", lo=0.0, hi=1.0, lo_open=True, thesis=("salun_strength",)),
    Option("salun_on", str, "SalUn mask on: gradient (g_f, thesis) or update (the final update).", (U, X),
           "unlearn", P_UNLEARN, default="gradient", choices=SALUN_MODES),
    # --- execution
    Option("impl", str, "fast (batched reference gradients, Gram-only QP) or classic (GEM reference code "
           "structure).", (L, U, X), "execution", P_EXEC, default="fast", choices=IMPLS),
    Option("precision", str, "fp32, or bf16 autocast of the training forward passes (CUDA, or a CPU with "
           "AMX/AVX512-BF16).", (L, U, X), "execution", P_EXEC, default="fp32", choices=PRECISIONS),
    Option("device", str, "cpu, cuda or cuda:N.", (L, U), "execution", P_EXEC, rule="cuda:0 if visible, else cpu"),
    Option("devices", str, "cpu or cuda:0,cuda:1 (seeds round-robin); wins over --gpus.", (X,), "execution", P_EXEC,
           rule="cuda:0 if visible, else cpu", many=True),
    Option("gpus", int, "Use cuda:0..cuda:N-1.", (X,), "execution", P_EXEC, lo=0, thesis=("number_of_gpus",)),
    Option("per_device", int, "Seed processes running at once per device.", (X,), "execution", P_EXEC, default=1, lo=1),
    Option("threads", int, "CPU threads per process.", (L, U, X), "execution", P_EXEC,
           rule="all cores; launch: cores / concurrent seed processes", lo=1),
    Option("store", str, "Store directory.", (L, U, X), "execution", P_EXEC, rule="$CLUCTL_STORE or ./store",
           envvar="CLUCTL_STORE"),
    Option("data_root", str, "Where CIFAR files live.", (L, U, X), "execution", P_DATA,
           rule="$CLUCTL_DATA or ~/.cache/cluctl/data"),
    Option("download", bool, "Download CIFAR through torchvision if missing (needs internet).", (L, U, X),
           "execution", P_DATA, default=False, negatable=True),
    # --- output
    Option("out", str, "Results folder.", (X,), "output", P_OUT, rule="results/<run>/"),
    Option("mia", bool, "Membership-inference attacks after every operation (mia.csv).", (X,), "output", P_OUT,
           default=False, negatable=True),
    Option("plots", bool, "Standard figures in <out>/plots/.", (X,), "output", P_OUT, default=True, negatable=True),
    Option("reference", str, "CL-ToW reference: prefix (the earlier forgotten-nothing row) or retrain (models "
           "retrained on the retained tasks, trained once in the store; reports how many operations that took).",
           (X,), "output", P_OUT, default="prefix", choices=REFERENCES),
    Option("log", str, "Experiment loggers, comma-separated: csv, tensorboard, wandb (per-step forget loss, "
           "forget-buffer accuracy and projections, per-operation metrics, the run's options; wandb offline "
           "unless WANDB_MODE is set). tensorboard and wandb are extras: pip install 'cluctl[tensorboard]'.",
           (X,), "output", P_OUT, many=True),
    Option("log_dir", str, "Folder of the experiment loggers' files.", (X,), "output", P_OUT, rule="<out>/logs"),
    Option("quiet", bool, "No progress bar or summary on stderr.", (L, U, X), "output", P_OUT, default=False,
           short="-q"),
    # --- thesis toggles (launch)
    Option("salun", int, "1: SalUn on (needs --salun_strength); 0: off even if a strength is given.", (X,),
           "thesis", P_THESIS, lo=0, hi=1, thesis=("salun",)),
    Option("mem_learning_buffer", int, "0: learn buffer type first; 1: use --learning_buffer_type.", (X,), "thesis",
           P_THESIS, lo=0, hi=1, thesis=("mem_learning_buffer",)),
    Option("mem_unlearning_buffer", int, "0: unlearn buffer type same; 1: use --unlearning_buffer_type.", (X,),
           "thesis", P_THESIS, lo=0, hi=1, thesis=("mem_unlearning_buffer",)),
)

OPTIONS: dict[str, Option] = {o.key: o for o in TABLE}


def options_for(command: str) -> list[Option]:
    return [o for o in TABLE if command in o.commands]


def keys(*scopes: str) -> tuple[str, ...]:
    return tuple(o.key for o in TABLE if o.scope in scopes)


def defaults(*scopes: str) -> dict[str, Any]:
    return {o.key: o.default for o in TABLE if o.scope in scopes}


def flag(key: str) -> str:
    o = OPTIONS.get(key)
    return o.flag if o is not None else "--" + key.replace("_", "-")


# ----------------------------------------------------------------- derived tables

# Scientific options: they define what a checkpoint/run *is*. Anything else (device,
# threads, store, output, progress) never changes results' identity.
RUN_DEFAULTS: dict[str, Any] = defaults("run")
LEARN_DEFAULTS: dict[str, Any] = defaults("learn", "buffers")
UNLEARN_DEFAULTS: dict[str, Any] = defaults("unlearn")
# Options that change how, not what, is computed (kept out of a run's identity).
# impl/precision are equivalent up to float rounding; they are recorded, not hashed.
EXECUTION_KEYS = ("impl", "precision", "device", "threads")
EXECUTION_DEFAULTS: dict[str, Any] = {k: OPTIONS[k].default for k in EXECUTION_KEYS}
# Unlearning options whose default is a rule (depends on the algorithm or the classes).
DERIVED_UNLEARN_KEYS = ("unlearning_rate", "forget_loss_scale", "stop_acc")
# Options that can be given (and so recorded as given): run, learning and unlearning.
OPTION_KEYS: tuple[str, ...] = tuple(o.key for o in TABLE if o.identity)
#: thesis (and other) spelling -> cluctl key (SPEC §8), for launch flags and TOML keys
THESIS_ALIASES: dict[str, str] = {t: o.key for o in TABLE for t in o.thesis + o.spellings if t != o.key}


# ----------------------------------------------------------------- value checks


def _number(value: Any, f: str, kind: str) -> float:
    if isinstance(value, bool):  # TOML `true` for a number
        raise UsageError(f"{f} must be {kind}, got {value!r}")
    try:
        return float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{f} must be {kind}, got {value!r}") from None


def check_int(value: Any, o: Option) -> int:
    f = o.flag
    kind = "a positive integer" if o.lo == 1 and o.hi is None else "an integer"
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        iv = int(value.strip())
    else:
        fv = _number(value, f, kind)
        if not math.isfinite(fv) or fv != int(fv):
            raise UsageError(f"{f} must be {kind}, got {value!r}")
        iv = int(fv) if not isinstance(value, int) else value
    if o.lo is not None and iv < o.lo:
        if o.hi is not None and o.hi - o.lo == 1:
            raise UsageError(f"{f} must be {o.lo:g} or {o.hi:g}, got {iv}")
        raise UsageError(f"{f} must be {kind}, got {value}" if o.lo == 1 and o.hi is None
                         else f"{f} must be >= {o.lo:g}, got {iv}")
    if o.hi is not None and iv > o.hi:
        if o.lo is not None and o.hi - o.lo == 1:
            raise UsageError(f"{f} must be {o.lo:g} or {o.hi:g}, got {iv}")
        raise UsageError(f"{f} must be at most {o.hi:g}, got {iv}")
    return iv


def check_float(value: Any, o: Option) -> float:
    f = o.flag
    fv = _number(value, f, "a number")
    lo = -math.inf if o.lo is None else o.lo
    hi = math.inf if o.hi is None else o.hi
    bad = not math.isfinite(fv) or fv < lo or (o.lo_open and fv == lo) or fv > hi or (o.hi_open and fv == hi)
    if bad:
        lb, rb = "(" if o.lo_open else "[", ")" if o.hi_open else "]"
        raise UsageError(f"{f} must be in {lb}{lo:g}, {hi:g}{rb}, got {value}")
    return fv


def check_bool(value: Any, o: Option) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise UsageError(f"{o.flag} must be true or false, got {value!r}")


def check_str(value: Any, o: Option) -> Any:
    if o.many and isinstance(value, (list, tuple)):
        if not value:
            raise UsageError(f"{o.flag} is empty", f"give at least one value to {o.flag}")
        return [v if isinstance(v, int) and not isinstance(v, bool) else check_str(v, dataclasses.replace(o, many=False))
                for v in value]
    if isinstance(value, (bool, int, float)) and o.choices is not None:
        raise UsageError(f"{o.flag} '{value}' is not valid", _choices_hint(o))
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise UsageError(f"{o.flag} must be text, got {value!r}")
    text = str(value)
    if isinstance(o.choices, tuple):
        v = text.strip().lower()
        if v not in o.choices:
            raise UsageError(f"{o.flag} '{value}' is not valid", _choices_hint(o))
        return v
    if not text.strip():
        raise UsageError(f"{o.flag} is empty", f"give a value to {o.flag} or leave it out for the default")
    return text


def _choices_hint(o: Option) -> str:
    return f"choose one of: {', '.join(o.choices)}" if isinstance(o.choices, tuple) else f"see --help for {o.flag}"


_CHECKS: dict[type, Callable[[Any, Option], Any]] = {int: check_int, float: check_float, bool: check_bool, str: check_str}


def check(key: str, value: Any) -> Any:
    """``value`` for option ``key``, converted and checked against the table (None passes:
    "not given"). One-line UsageError naming the flag otherwise. Registry names (algorithm,
    dataset, model) are checked by their registries in :mod:`cluctl.resolve`."""
    if value is None:
        return None
    o = OPTIONS[key]
    v = _CHECKS[o.type](value, o)
    if key == "threads":
        cap = available_cores() * THREADS_PER_CORE
        if v > cap:
            raise UsageError(f"--threads {v} is more than {THREADS_PER_CORE} per core of this machine's "
                             f"{available_cores()}", f"use at most {cap} (default: all cores)")
    return v


def check_all(values: dict[str, Any]) -> dict[str, Any]:
    """Every table option in ``values`` checked (:func:`check`); other keys kept as they are."""
    return {k: (check(k, v) if k in OPTIONS else v) for k, v in values.items()}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def check_learn(cfg: dict) -> dict:
    """The learning and buffer options' values (the algorithm's name is checked by its
    registry: :func:`cluctl.resolve.validate_learn`)."""
    out = dict(cfg)
    for k in keys("learn", "buffers"):
        if k != "learn_algo" and k in out:
            out[k] = check(k, out[k])
    return out


def check_unlearn(cfg: dict) -> dict:
    """The unlearning options' values, once the algorithm's name is canonical and its rule
    defaults are filled in (:func:`cluctl.resolve.validate_unlearn`)."""
    out = dict(cfg)
    for k in keys("unlearn"):
        if k != "algo" and k in out:
            out[k] = check(k, out[k])
    return out


def validate_execution(cfg: dict) -> dict:
    out = dict(cfg)
    out["impl"] = check("impl", cfg.get("impl") or "fast")
    out["precision"] = check("precision", cfg.get("precision") or "fp32")
    if cfg.get("threads") is not None:
        out["threads"] = check("threads", cfg["threads"])
    return out


# ----------------------------------------------------------------- typed configs


class _Config:
    """Typed, checked option values built from the table (fields = the table's keys of
    the config's scopes, defaults = the table's). ``from_options`` checks once, at the edge."""

    _scopes: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, values: dict[str, Any] | None = None, **kw: Any):
        vals = {**(values or {}), **kw}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(vals) - names)
        if unknown:
            raise UsageError(f"unknown option(s) for {cls.__name__}: {', '.join(unknown)}",
                             f"valid: {', '.join(sorted(names))}")
        return cls(**{k: check(k, v) for k, v in vals.items() if v is not None})

    def given(self) -> dict[str, Any]:
        """The fields that differ from "not given" (None)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _make(name: str, scopes: tuple[str, ...], doc: str, static_defaults: bool, extra: tuple[str, ...] = ()):
    fields = []
    for o in TABLE:
        if o.scope in scopes or o.key in extra:
            default = o.default if static_defaults else None
            fields.append((o.key, o.type | None, dataclasses.field(default=default)))
    cls = dataclasses.make_dataclass(name, fields, bases=(_Config,), frozen=True, namespace={"__doc__": doc})
    cls.__module__ = __name__
    return cls


#: The learning, buffer and run options of one ``learn`` (None: not given, i.e. the
#: default, or with ``--from`` the checkpoint's value).
LearnConfig = _make("LearnConfig", ("run", "learn", "buffers"),
                    "Options of one learning operation (run, learning and buffer options); None = not given.", False)
#: The unlearning options of one ``unlearn`` (None: not given; rules resolved per operation).
UnlearnConfig = _make("UnlearnConfig", ("unlearn",),
                      "Options of one unlearning operation; None = not given (defaults and rules apply).", False)
#: How an operation runs (not part of any identity).
Execution = _make("Execution", (), "How an operation runs: impl, precision, device, threads (not part of the "
                  "identity).", True, extra=EXECUTION_KEYS)


__all__ = [
    "Option", "TABLE", "OPTIONS", "options_for", "keys", "defaults", "flag", "check", "check_all",
    "check_learn", "check_unlearn", "validate_execution", "LearnConfig", "UnlearnConfig", "Execution",
    "RUN_DEFAULTS", "LEARN_DEFAULTS", "UNLEARN_DEFAULTS", "EXECUTION_KEYS", "EXECUTION_DEFAULTS",
    "DERIVED_UNLEARN_KEYS", "OPTION_KEYS", "THESIS_ALIASES",
]
