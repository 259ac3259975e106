"""Launch options: merging (defaults < TOML ``--config`` < flags), thesis aliases, the
resolved scientific config, run names, and the :class:`Plan` a launch executes.

Option keys are the CLI's long names with underscores (``batch_size`` for
``--batch-size``). A TOML file may spell them with dashes or underscores and may use the
thesis's spellings (``learn_batch_size``, ``average_over_n_runs``, ...); unknown keys are an
error naming them.

Identity. A run is ``<sequence>-<algo>-<hash>``: the hash is the first 8 hex digits of the
sha256 of the canonical JSON of ``{"config": <resolved scientific options>, "sequence":
<canonical sequence>}``. Scientific options are the dataset, tasks, model, width and every
learn/unlearn/buffer option (SPEC §8), with their dependent defaults resolved (so
``--unlearning-rate 0.01`` and the default give one run). Seeds, devices, threads, impl,
precision, the store, the output folder and reporting (``--mia``) are not part of it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .. import config as C
from .. import resolve as R
from ..errors import NotFound, UsageError

FORMAT = 1

# ----------------------------------------------------------------- option keys (from the table)

SCIENTIFIC_KEYS: tuple[str, ...] = tuple(k for k in C.keys("run", "learn", "buffers", "unlearn") if k != "seed")
THESIS_TOGGLES = C.keys("thesis")
ALL_KEYS: tuple[str, ...] = tuple(o.key for o in C.options_for(C.X))
#: thesis spelling -> cluctl key (SPEC §8), from the option table
THESIS_ALIASES: dict[str, str] = C.THESIS_ALIASES
_DEFAULTS: dict[str, Any] = {o.key: o.default for o in C.options_for(C.X)}
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
flag = C.flag
available_cores = C.available_cores


# ----------------------------------------------------------------- TOML


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a launch config file; keys normalised to cluctl keys (thesis spellings map to
    theirs). UsageError names unknown keys and keys given twice."""
    p = Path(path)
    if p.exists() and not p.is_dir() and (not p.is_file() or p.stat().st_size > 1 << 20):
        raise UsageError(f"config file {p} is not a TOML file of at most 1 MiB", "pass the path of a TOML file to --config")
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise NotFound(f"config file {p} does not exist", "pass the path of a TOML file to --config") from None
    except IsADirectoryError:
        raise UsageError(f"config file {p} is a directory", "pass the path of a TOML file to --config") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {p} is not valid TOML: {e}", "fix the file (https://toml.io)") from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {p} is not valid TOML: it is not UTF-8 text", "pass a TOML file") from None
    except RecursionError:
        raise UsageError(f"config file {p} nests too deeply", "launch options are plain values at the top level") from None
    except OSError as e:
        raise UsageError(f"config file {p} cannot be read: {e.strerror or e}", "pass a readable TOML file") from None
    return normalise_keys(raw, source=str(p))


def normalise_keys(raw: dict[str, Any], source: str = "config") -> dict[str, Any]:
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        k = str(key).strip().replace("-", "_")
        k = THESIS_ALIASES.get(k, k)
        if k not in ALL_KEYS or k == "config":
            unknown.append(str(key))
            continue
        if isinstance(value, dict):
            raise UsageError(f"{source}: key '{key}' holds a table; launch options are plain values",
                             "write options at the top level of the file")
        if k in out:
            raise UsageError(f"{source}: '{origin[k]}' and '{key}' set the same option {flag(k)}", "keep one of them")
        out[k] = value
        origin[k] = str(key)
    if unknown:
        raise UsageError(
            f"{source}: unknown key(s) {', '.join(repr(u) for u in sorted(unknown))}",
            "keys are launch option names with dashes or underscores (e.g. batch-size, unlearn_batch_size); "
            "see `cluctl launch --help`",
        )
    return out


def merge(toml_values: dict[str, Any] | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Flags (non-None) override the TOML; a seed flag overrides both seed keys of the file,
    as does ``--devices`` over ``gpus`` (and the other way round)."""
    merged = dict(toml_values or {})
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = set(given) - set(ALL_KEYS)
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if "seeds" in given and "seed_list" in given:
        raise UsageError("--seeds and --seed-list are mutually exclusive", "pass one of them")
    if "seeds" in given or "seed_list" in given:
        merged.pop("seeds", None)
        merged.pop("seed_list", None)
    if "devices" in given or "gpus" in given:
        merged.pop("devices", None)
        merged.pop("gpus", None)
    merged.update(given)
    return merged


# ----------------------------------------------------------------- value parsing


def _int(value: Any, key: str, minimum: int = 0) -> int:
    iv = C.check(key, value) if key in C.OPTIONS and C.OPTIONS[key].type is int else None
    if iv is None:
        iv = C.check_int(value, C.Option(key, int, "", (), "", "", lo=minimum))
    if iv < minimum:
        raise UsageError(f"{flag(key)} must be >= {minimum}, got {iv}")
    return iv


def _bool(value: Any, key: str) -> bool:
    return C.check_bool(value, C.OPTIONS[key])


def _toggle(value: Any, key: str) -> int:
    return C.check(key, value)


def parse_seed_list(value: Any) -> list[int]:
    """``"3,7"`` / ``[3, 7]`` -> ``[3, 7]``; non-negative, no duplicates."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [s for s in re.split(r"[\s,]+", str(value).strip()) if s]
    if not items:
        raise UsageError("--seed-list is empty", "write e.g. --seed-list 3,7")
    seeds = []
    for item in items:
        if isinstance(item, bool):
            raise UsageError(f"--seed-list: {item!r} is not a seed")
        try:
            s = int(item) if not isinstance(item, str) else int(item.strip())
        except (TypeError, ValueError):
            raise UsageError(f"--seed-list: {item!r} is not a non-negative integer", "write e.g. --seed-list 3,7") from None
        if s < 0 or (not isinstance(item, str) and s != item):
            raise UsageError(f"--seed-list: {item!r} is not a non-negative integer", "write e.g. --seed-list 3,7")
        if s > C.MAX_SEED:
            raise UsageError(f"--seed-list: seed {s} does not fit in 64 bits", f"use seeds up to {C.MAX_SEED}")
        if s in seeds:
            raise UsageError(f"--seed-list names seed {s} twice")
        seeds.append(s)
    return seeds


def parse_devices(devices: Any = None, gpus: Any = None) -> list[str]:
    """``--devices`` (wins) or ``--gpus N``; default cuda:0 if visible, else cpu
    (:func:`cluctl.devices.parse_device_list`, the one device parser)."""
    from ..devices import parse_device_list

    return parse_device_list(devices, gpus=None if gpus is None else _int(gpus, "gpus"), unique=True)


# ----------------------------------------------------------------- scientific config


def dataset_meta(spec: Any, data_root: str | None = None, download: bool = False) -> tuple[str, int, int]:
    """(canonical name, classes, default tasks) without loading a registered dataset whose
    classes are declared; its files are checked here (before anything is registered in
    the store, not in every worker) unless ``download``."""
    from ..data import registry

    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--dataset must be a name, got {spec!r}", registry.choices())
    kind, _arg = registry.lookup(spec)
    if kind.classes is not None and kind.default_tasks is not None:
        if kind.check is not None and not download:
            kind.check(data_root)
        return kind.name, kind.classes, kind.default_tasks
    from ..data import load_dataset

    ds = load_dataset(spec.strip(), data_root=data_root, download=download)
    return ds.name, ds.num_classes, ds.default_tasks


def scientific_config(values: dict[str, Any], data_root: str | None = None, download: bool = False) -> dict[str, Any]:
    """The resolved scientific options (no seed): defaults filled, dependent defaults
    (unlearning rate, forget-loss scale, stop accuracy, tasks, width) resolved, validated."""
    from ..models.build import DEFAULT_WIDTHS, canonical_kind

    cfg: dict[str, Any] = dict(C.RUN_DEFAULTS)
    cfg.pop("seed", None)
    cfg.update(C.LEARN_DEFAULTS)
    cfg.update(C.UNLEARN_DEFAULTS)
    cfg.update({k: v for k, v in values.items() if k in SCIENTIFIC_KEYS and v is not None})
    name, classes, default_tasks = dataset_meta(cfg["dataset"], data_root, download)
    cfg["dataset"] = name
    tasks = default_tasks if cfg.get("tasks") is None else _int(cfg["tasks"], "tasks", 1)
    if classes % tasks:
        raise UsageError(f"--tasks {tasks} does not divide {name}'s {classes} classes", "choose a divisor of the number of classes")
    cfg["tasks"] = tasks
    if cfg.get("model") is None:
        from ..data import default_model

        cfg["model"] = default_model(name)
    cfg["model"] = canonical_kind(cfg["model"])
    cfg["width"] = DEFAULT_WIDTHS[cfg["model"]] if cfg.get("width") is None else _int(cfg["width"], "width", 1)
    cfg = R.validate_learn(cfg)
    cfg = R.validate_unlearn(cfg, classes_per_task=classes // tasks)
    if cfg.get("mem_scores") is not None:
        cfg["mem_scores"] = str(cfg["mem_scores"])
    out = {k: cfg[k] for k in SCIENTIFIC_KEYS}
    if out.get("profile") == C.OPTIONS["profile"].default:
        # the default profile is not written into a run's config: runs launched before the
        # option existed keep their names (hash) and resume as they were
        out.pop("profile")
    return out


def canonical_sequence(spec: Any, n_tasks: int) -> str:
    """A preset's canonical name (``c4v2`` -> ``C4v2``) or the compact text form."""
    from ..sequences import PRESETS, format_sequence, parse_sequence, resolve_sequence

    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--sequence must be a preset or a list of operations, got {spec!r}",
                         "e.g. A4 or 'L0-4 U4-1'")
    text = spec.strip()
    for p in PRESETS:
        if p.casefold() == text.casefold():
            resolve_sequence(p, n_tasks, 0)  # validates N >= 4
            return p
    ops = resolve_sequence(text, n_tasks, 0)
    return format_sequence(parse_sequence(text, n_tasks)) if ops else text


def sequence_label(seq: str) -> str:
    """The sequence part of a run name: ``a4``; a short text form like ``l0-2_u2``; else ``custom``."""
    label = re.sub(r"[^a-z0-9.-]+", "_", seq.lower()).strip("_")
    return label if 0 < len(label) <= 24 else "custom"


def config_hash(config: dict, sequence: str) -> str:
    from ..store import canonical_json

    return hashlib.sha256(canonical_json({"config": config, "sequence": sequence})).hexdigest()[:8]


def run_name(config: dict, sequence: str) -> str:
    """``<sequence>-<algo>-<hash>``, lowercase, e.g. ``a4-neggem-3f9c2e1b``."""
    return f"{sequence_label(sequence)}-{config['algo']}-{config_hash(config, sequence)}".lower()


def check_run_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise UsageError(f"invalid run name {name!r}: it must match [A-Za-z0-9._-]+ and not be . or ..",
                         "e.g. --name a4-neggem-baseline")
    return name


def run_object(name: str, config: dict, sequence: str, classes: int, given: dict | None = None) -> dict:
    """The JSON stored under ``runs/<run>/config`` (deterministic: same run, same id).
    ``given``: the options given explicitly (the rest follow their defaults and rules)."""
    obj = {"type": "run", "format": FORMAT, "run": name, "config": config, "sequence": sequence,
           "n_tasks": config["tasks"], "k": classes // int(config["tasks"]),
           "hash": config_hash(config, sequence)}
    if given is not None:
        obj["given"] = dict(sorted(given.items()))
    return obj


def given_options(values: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The scientific options given by flag or TOML, with their resolved values."""
    return {k: config[k] for k in SCIENTIFIC_KEYS if values.get(k) is not None and config.get(k) is not None}


def stored_given(obj: dict) -> dict[str, Any]:
    """A stored run's given options (runs stored before they were recorded: every option
    except rule defaults, see :func:`cluctl.config.given_from_resolved`)."""
    if isinstance(obj.get("given"), dict):
        return dict(obj["given"])
    config = obj.get("config") or {}
    return {k: v for k, v in R.given_from_resolved(config, obj.get("k")).items() if k in SCIENTIFIC_KEYS}


def apply_thesis_toggles(values: dict[str, Any]) -> dict[str, Any]:
    """``salun``, ``mem_learning_buffer``, ``mem_unlearning_buffer`` (0/1) -> cluctl options."""
    v = dict(values)
    salun = v.pop("salun", None)
    if salun is not None:
        if _toggle(salun, "salun") == 0:
            v["salun_strength"] = None
        elif v.get("salun_strength") is None:
            raise UsageError("--salun 1 needs a strength", "add --salun_strength S with S in (0, 1], e.g. 0.2")
    mlb = v.pop("mem_learning_buffer", None)
    if mlb is not None and _toggle(mlb, "mem_learning_buffer") == 0:
        v["learn_buffer_type"] = "first"
    mub = v.pop("mem_unlearning_buffer", None)
    if mub is not None and _toggle(mub, "mem_unlearning_buffer") == 0:
        v["unlearn_buffer_type"] = "same"
    return v


# ----------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Everything a launch needs, resolved and validated."""

    run: str
    config: dict[str, Any]
    sequence: str
    seeds: list[int]
    seeds_given: bool
    devices: list[str]
    per_device: int
    threads: int
    classes: int = 0
    impl: str = "fast"
    precision: str = "fp32"
    data_root: str | None = None
    download: bool = False
    store: str = "store"
    out: str = ""
    mia: bool = False
    plots: bool = True
    quiet: bool = False
    resume: bool = False
    aggregate_only: bool = False
    explicit_threads: bool = False
    warnings: list[str] = field(default_factory=list)
    given: dict[str, Any] = field(default_factory=dict)
    reference: str = "prefix"  # CL-ToW reference: prefix or retrain
    log: list[str] = field(default_factory=list)  # experiment loggers (cluctl.launch.loggers)
    log_dir: str = ""

    @property
    def n_tasks(self) -> int:
        return int(self.config["tasks"])

    @property
    def k(self) -> int:
        return self.classes // self.n_tasks

    def run_object(self) -> dict:
        return run_object(self.run, self.config, self.sequence, self.classes, self.given)

    def assignments(self) -> list[tuple[int, str]]:
        """(seed, device): seeds round-robin over the devices."""
        return [(s, self.devices[i % len(self.devices)]) for i, s in enumerate(self.seeds)]

    def concurrency(self) -> int:
        return max(1, min(len(self.seeds), len(self.devices) * self.per_device))


def _check_writable_dir(path: str, flag: str) -> None:
    """``path`` is a folder, or can be made one: its nearest existing ancestor is a writable
    folder (checked before any work; nothing is created here)."""
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not os.path.isdir(p):
        raise UsageError(f"{flag} {path} cannot be a folder: {p} is a file", f"pick another {flag}")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} cannot be written: {p} is not writable", f"pick another {flag}")


def _stored_run(store, name: str) -> dict:
    oid = store.get_ref(f"runs/{name}/config")
    if oid is None:
        raise NotFound(f"no run named {name} in the store at {store.root}",
                       "list runs with `cluctl store ls runs/`, or pass --store")
    obj = store.get_json(oid)
    if not isinstance(obj, dict) or obj.get("type") != "run":
        raise UsageError(f"refs/runs/{name}/config does not point at a run description")
    return obj


def seeds_in_store(store, name: str) -> list[int]:
    seeds = set()
    for ref in store.list_refs(f"runs/{name}/"):
        m = re.fullmatch(rf"runs/{re.escape(name)}/seed-(\d+)/.+", ref)
        if m:
            seeds.add(int(m.group(1)))
    return sorted(seeds)


def make_plan(values: dict[str, Any], store=None) -> Plan:
    """Resolve merged option values (see :func:`merge`) into a :class:`Plan`.

    ``values`` may hold thesis toggles; ``resume`` is a run name. ``store`` is an open
    Store (opened from ``values["store"]`` when None)."""
    from ..api import open_store

    v = apply_thesis_toggles(C.check_all(values))  # every value checked once, here, against the option table
    st = store if store is not None else open_store(v.get("store"))
    resume = v.get("resume")
    aggregate_only = _bool(v.get("aggregate_only") or False, "aggregate_only")
    data_root = v.get("data_root")
    download = _bool(v.get("download") or False, "download")
    warnings: list[str] = []

    if resume is not None:
        name = check_run_name(str(resume).strip())
        if v.get("name") is not None and v["name"] != name:
            raise UsageError(f"--name {v['name']} and --resume {name} disagree", "drop --name when resuming")
        stored = _stored_run(st, name)
        config = dict(stored["config"])
        sequence = stored["sequence"]
        given_opts = stored_given(stored)
        given = {k: val for k, val in v.items() if k in SCIENTIFIC_KEYS and val is not None}
        if given:
            merged = scientific_config({**config, **given}, data_root, download)
            diff = [k for k in SCIENTIFIC_KEYS if merged.get(k) != config.get(k)]
            if diff:
                k = diff[0]
                raise UsageError(
                    f"run {name} was made with {flag(k)} {config.get(k)}; {flag(k)} {merged.get(k)} would be another run"
                    + (f" (and {len(diff) - 1} more option(s) differ)" if len(diff) > 1 else ""),
                    "drop the option to resume, or start a new run without --resume",
                )
        if v.get("sequence") is not None and canonical_sequence(v["sequence"], int(config["tasks"])) != sequence:
            raise UsageError(f"run {name} runs sequence {sequence}, not {v['sequence']}", "drop --sequence when resuming")
    else:
        config = scientific_config(v, data_root, download)
        if config.get("mem_scores"):
            config["mem_scores"] = st.resolve(config["mem_scores"])
        given_opts = given_options(v, config)
        sequence = canonical_sequence(v.get("sequence") or _DEFAULTS["sequence"], int(config["tasks"]))
        name = check_run_name(v["name"]) if v.get("name") is not None else run_name(config, sequence)

    if v.get("seed_list") is not None:
        seeds, seeds_given = parse_seed_list(v["seed_list"]), True
    elif v.get("seeds") is not None:
        n = _int(v["seeds"], "seeds", 1)
        seeds, seeds_given = list(range(n)), True
    else:
        found = seeds_in_store(st, name) if (resume is not None or aggregate_only) else []
        seeds, seeds_given = (found or [0]), False

    devices = parse_devices(v.get("devices"), v.get("gpus")) if not aggregate_only else ["cpu"]
    per_device = _int(_DEFAULTS["per_device"] if v.get("per_device") is None else v["per_device"], "per_device", 1)
    execution = C.validate_execution({"impl": v.get("impl"), "precision": v.get("precision"), "threads": v.get("threads")})
    if config.get("profile") == "thesis" and not aggregate_only:
        # what the reference code had no counterpart for fails here, before any work
        from ..thesis import check_supported

        check_supported(config, config.get("algo"))
        if execution["precision"] == "bf16":
            raise UsageError("--profile thesis computes in float32 as the reference code did; --precision bf16 "
                             "has no counterpart", "use --precision fp32 with --profile thesis")
    if execution["precision"] == "bf16" and not aggregate_only and any(not d.startswith("cuda") for d in devices):
        from ..grads import cpu_bf16_native

        if not cpu_bf16_native():
            raise UsageError("--precision bf16 needs CUDA devices or a CPU with native bf16 (AMX or AVX512-BF16), "
                             "but --devices includes cpu and this CPU has neither",
                             "use --precision fp32 on this CPU, or run on GPUs (--gpus N)")
    classes = dataset_meta(config["dataset"], data_root, download)[1]
    plan = Plan(
        run=name, config=config, sequence=sequence, seeds=seeds, seeds_given=seeds_given,
        devices=devices, per_device=per_device, threads=1, classes=classes,
        impl=execution["impl"], precision=execution["precision"],
        data_root=str(data_root) if data_root is not None else None, download=download,
        store=str(st.root), out=str(v.get("out") or os.path.join("results", name)),
        mia=_bool(v.get("mia") or False, "mia"), plots=_bool(True if v.get("plots") is None else v["plots"], "plots"),
        quiet=_bool(v.get("quiet") or False, "quiet"), resume=resume is not None, aggregate_only=aggregate_only,
        explicit_threads=execution.get("threads") is not None, warnings=warnings, given=given_opts,
    )
    reference = str(v.get("reference") or _DEFAULTS["reference"]).strip().lower()
    if reference not in ("prefix", "retrain"):
        raise UsageError(f"--reference '{v.get('reference')}' is not valid", "choose prefix or retrain")
    plan.reference = reference
    from .loggers import check_available, parse_kinds

    plan.log = parse_kinds(v.get("log"))
    plan.log_dir = str(v.get("log_dir") or os.path.join(plan.out, "logs"))
    if plan.log and aggregate_only:
        warnings.append("--log records training; --aggregate-only trains nothing, so nothing is logged")
        plan.log = []
    check_available(plan.log)  # a missing tensorboard or wandb fails here, before any work
    if plan.log:
        _check_writable_dir(plan.log_dir, C.OPTIONS["log_dir"].flag)
    plan.threads = execution["threads"] or max(1, available_cores() // plan.concurrency())
    return plan
