"""Typer options built from the option table (:mod:`cluctl.config`): every option's flag,
thesis spellings, help line, default and panel come from its one row there.

:func:`command_options` gives a command function the signature Typer reads (one
``typer.Option`` per table row the command takes, plus the command's own parameters), so
``learn``, ``unlearn`` and ``launch`` are declared as ``def learn(**values)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Optional

import typer

from .. import config as C

def _choice_text(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def _registry_choices(name: str) -> str:
    """Names from the registries (one module per algorithm/dataset; torch-free imports)."""
    if name == "learning":
        from .. import learning

        return _choice_text(learning.names())
    if name == "unlearning":
        from .. import unlearning

        return _choice_text(unlearning.names())
    if name == "datasets":
        from ..data import registry

        return registry.choices()
    if name == "models":
        return _choice_text(C.MODEL_WIDTHS)
    raise KeyError(name)


def _rule_text(o: C.Option) -> str:
    """A rule default in words, from whoever owns the rule."""
    if o.rule == "per_algorithm":  # each unlearning algorithm declares its own
        from .. import unlearning

        return unlearning.rule_help(o.key)
    if o.rule in ("dataset_tasks", "dataset_model"):
        from ..data import registry

        if o.rule == "dataset_tasks":
            per = [f"{k.name} {k.default_tasks}" for k in registry.kinds() if k.default_tasks]
        else:
            by: dict[str, list[str]] = {}
            for k in registry.kinds():
                by.setdefault(k.default_model, []).append(k.name)
            per = [f"{m} for {', '.join(names)}" for m, names in by.items()]
        return "the dataset's: " + ("; " if o.rule == "dataset_model" else ", ").join(per)
    if o.rule == "model_width":
        return ", ".join(f"{m} {w}" for m, w in C.MODEL_WIDTHS.items())
    return o.rule


def help_text(o: C.Option) -> str:
    """The option's help line with its default: 'Learning rate (default: 0.1).'"""
    text = o.help
    if isinstance(o.choices, str):
        text = text.replace("{" + o.choices + "}", _registry_choices(o.choices))
    default = _rule_text(o) if o.rule is not None else o.default_text()
    if default is not None:
        text = f"{text.rstrip('.')} (default: {default})."
    return text


def flags_for(o: C.Option, command: str | None) -> list[str]:
    names = list(o.flags.get(command, (o.flag,))) if command else [o.flag]
    if command == C.X:  # launch also takes the thesis's spellings
        names += [f"--{t}" for t in o.thesis if f"--{t}" not in names]
    if o.negatable:
        names = [f"{n}/--no-{n[2:]}" for n in names[:1]] + names[1:]
    if o.short:
        names.append(o.short)
    return names


def _registry_names(name: str) -> list[str]:
    if name == "learning":
        from .. import learning

        return list(learning.names())
    if name == "unlearning":
        from .. import unlearning

        return list(unlearning.names())
    if name == "datasets":
        from ..data import registry

        return [f"{k.name}:" if k.path_arg else k.name for k in registry.kinds()]
    if name == "models":
        return list(C.MODEL_WIDTHS)
    return []


def complete_ref(ctx, incomplete: str) -> list[str]:
    """Shell completion of a checkpoint reference: tags, run refs and checkpoint ids of the
    store (``--store``, $CLUCTL_STORE or ./store); nothing when there is no store."""
    import os
    from pathlib import Path

    root = Path((ctx.params.get("store") if ctx is not None else None) or os.environ.get("CLUCTL_STORE") or "store")
    if not (root / "VERSION").is_file():
        return []
    try:
        from ..store import Store

        st = Store.open(root)
        names = [r for r in st.list_refs("") if not r.startswith(("scores/", "runs/")) or "/seed-" in r]
    except Exception:  # completion never fails loudly
        return []
    out = [n for n in names if n.startswith(incomplete)]
    out += [n[len("checkpoints/"):] for n in names if n.startswith("checkpoints/" + incomplete) or
            (n.startswith("checkpoints/") and n[len("checkpoints/"):].startswith(incomplete))]
    return sorted(set(out))[:200]


def _completer(o: C.Option):
    if o.key == "from_ref":
        return complete_ref
    if isinstance(o.choices, str):
        return lambda incomplete: [n for n in _registry_names(o.choices) if n.startswith(incomplete.lower())]
    return None


def typer_option(key: str, command: str | None = None, default: Any = None, **extra: Any):
    """The ``typer.Option`` of table row ``key`` (for ``command``'s spellings)."""
    o = C.OPTIONS[key]
    kw: dict[str, Any] = {"help": help_text(o), "show_default": False}
    if isinstance(o.choices, tuple):
        kw["case_sensitive"] = False
    completer = _completer(o)
    if completer is not None:
        kw["autocompletion"] = completer
    if o.envvar:
        kw.update(envvar=o.envvar, show_envvar=False)
    if command is not None:
        kw["rich_help_panel"] = o.panel
    kw.update(extra)
    required = command is not None and command in o.required
    return typer.Option(... if required else default, *flags_for(o, command), **kw)


def annotation(o: C.Option, command: str | None = None):
    """The parameter's type: a Literal of the choices (so --help and completion list them),
    else the table's type; Optional unless the command requires the option."""
    t = Literal[o.choices] if isinstance(o.choices, tuple) else o.type
    return t if command in o.required else Optional[t]


def command_options(command: str, own: list[inspect.Parameter] | None = None, skip: tuple[str, ...] = ()):
    """Decorator: give ``fn(**values)`` the Typer signature of ``command``'s table rows
    (in table order) followed by ``own`` parameters."""

    def wrap(fn):
        params = []
        for o in C.options_for(command):
            if o.key in skip:
                continue
            params.append(inspect.Parameter(o.key, inspect.Parameter.KEYWORD_ONLY,
                                            default=typer_option(o.key, command), annotation=annotation(o, command)))
        params += list(own or [])
        fn.__signature__ = inspect.Signature(params)
        fn.__annotations__ = {p.name: p.annotation for p in params}
        return fn

    return wrap


__all__ = ["command_options", "typer_option", "help_text", "flags_for", "annotation", "complete_ref"]
