"""The option table (cluctl.config.TABLE) is the one place an option is declared: the CLI's
flags, help and defaults, launch's TOML keys and thesis spellings, the API's keyword
arguments, the value checks and the typed configs all come from it."""

from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluctl import config as C
from cluctl.cli.main import app
from cluctl.cli.options import flags_for, help_text
from cluctl.errors import UsageError
from cluctl.launch import options as O

SRC = Path(__file__).resolve().parents[1] / "src" / "cluctl"


def _string_constants() -> list[tuple[str, str]]:
    out = []
    for p in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append((str(p.relative_to(SRC)), node.value))
    return out


def test_help_defaults_and_thesis_spellings_are_written_once_in_the_source():
    consts = _string_constants()
    values = [v for _, v in consts]
    for o in C.TABLE:
        # the help line: one literal, in the table
        assert values.count(o.help) == 1, f"{o.key}: help written {values.count(o.help)} times"
        assert [f for f, v in consts if v == o.help] == ["config.py"]
        # a thesis spelling is a literal of the table only (launch and TOML derive from it)
        for t in o.thesis:
            if t == o.key:  # the same spelling as the option's key (used as such everywhere)
                continue
            where = [f for f, v in consts if v == t]
            assert where == ["config.py"], f"thesis spelling {t!r} written in {where}"
    # no command declares a table option's flag itself (the per-command spellings of the
    # table, --from and learn's --algo, are the only flag literals)
    # (memorize, mia, plot and store have options of their own, e.g. the proxy's --epochs)
    mine = ("cli/main.py", "cli/launch.py", "cli/common.py", "cli/options.py", "api.py", "launch/")
    flag_literals = [(f, v) for f, v in consts if v.startswith("--") and v[2:].replace("-", "_") in C.OPTIONS
                     and f.startswith(mine)]
    assert all(f == "config.py" for f, _ in flag_literals), [x for x in flag_literals if x[0] != "config.py"]
    # defaults: the derived tables hold exactly the table's defaults
    for k, v in {**C.RUN_DEFAULTS, **C.LEARN_DEFAULTS, **C.UNLEARN_DEFAULTS}.items():
        assert C.OPTIONS[k].default == v


@pytest.mark.parametrize("command", ["learn", "unlearn", "launch"])
def test_every_table_option_of_a_command_is_in_its_help_with_its_default(command):
    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1", "TERMINAL_WIDTH": "400"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for o in C.options_for(command):
        for f in flags_for(o, command):
            assert f.split("/")[0] in text, f"{command} --help lacks {f}"
        line = " ".join(help_text(o).split())
        assert line[:60] in text, f"{command} --help lacks the help of {o.key}: {line[:60]!r}"
    shown = {f.split("/")[0] for o in C.options_for(command) for f in flags_for(o, command)}
    for o in C.TABLE:  # and nothing the command does not take
        if command not in o.commands and o.flag not in shown:
            assert f"{o.flag} " not in text, f"{command} --help shows {o.flag}"


def test_rule_defaults_in_help_come_from_their_owners():
    from cluctl import unlearning
    from cluctl.data import registry

    assert unlearning.rule_help("unlearning_rate") in help_text(C.OPTIONS["unlearning_rate"])
    assert "rl-gem" in help_text(C.OPTIONS["unlearning_rate"])
    for k in registry.kinds():
        if k.default_tasks:
            assert f"{k.name} {k.default_tasks}" in help_text(C.OPTIONS["tasks"])
    for m, w in C.MODEL_WIDTHS.items():
        assert f"{m} {w}" in help_text(C.OPTIONS["width"])


def _outside(o: C.Option) -> list:
    """Values just outside the option's declared range."""
    bad = []
    if o.lo is not None:
        bad.append(o.lo if o.lo_open else (o.lo - 1 if o.type is int else o.lo - 1e-9))
    if o.hi is not None and math.isfinite(o.hi):
        bad.append(o.hi if o.hi_open else (o.hi + 1 if o.type is int else o.hi + 1e-9))
    return bad


def _inside(o: C.Option) -> list:
    good = []
    if o.lo is not None:
        good.append((o.lo + 1e-9 if o.type is float else o.lo + 1) if o.lo_open else o.lo)
    if o.hi is not None and math.isfinite(o.hi):
        good.append((o.hi - 1e-9 if o.type is float else o.hi - 1) if o.hi_open else o.hi)
    return good


RANGED = [o for o in C.TABLE if o.type in (int, float) and (o.lo is not None or o.hi is not None)]


@pytest.mark.parametrize("o", RANGED, ids=[o.key for o in RANGED])
def test_ranges_are_checked_from_the_table(o):
    for v in _outside(o):
        with pytest.raises(UsageError, match=o.flag):
            C.check(o.key, v)
    for v in _inside(o):
        if o.key == "threads":
            v = 1
        assert C.check(o.key, v) == pytest.approx(v)
    for junk in ("abc", True, float("nan"), float("inf") if o.type is int else "nan"):
        with pytest.raises(UsageError, match=o.flag):
            C.check(o.key, junk)
    if o.type is int:
        with pytest.raises(UsageError, match=o.flag):
            C.check(o.key, 2.5)


def test_choices_and_hostile_values():
    assert C.check("learn_buffer_type", " LEAST ") == "least"
    with pytest.raises(UsageError, match="choose one of: first, random, most, least"):
        C.check("learn_buffer_type", "bottom")
    with pytest.raises(UsageError, match="--sequence is empty"):
        C.check("sequence", "  ")
    with pytest.raises(UsageError, match="--seed must be at most"):
        C.check("seed", 2**64)
    assert C.check("seed", 2**63 - 1) == 2**63 - 1
    with pytest.raises(UsageError, match="--threads 100000 is more than"):
        C.check("threads", 100000)
    with pytest.raises(UsageError, match="--tasks must be a positive integer, got 0"):
        C.check("tasks", 0)
    assert C.check("seed_list", [3, "7"]) == [3, "7"]


def test_typed_configs_are_built_from_the_table():
    names = lambda cls: [f.name for f in dataclasses.fields(cls)]  # noqa: E731
    assert names(C.LearnConfig) == list(C.keys("run", "learn", "buffers"))
    assert names(C.UnlearnConfig) == list(C.keys("unlearn"))
    assert names(C.Execution) == list(C.EXECUTION_KEYS)
    assert C.Execution().impl == "fast" and C.Execution().precision == "fp32"
    cfg = C.LearnConfig.from_options(lr="0.05", batch_size=5.0)
    assert cfg.lr == 0.05 and cfg.batch_size == 5 and cfg.given() == {"lr": 0.05, "batch_size": 5}
    with pytest.raises(UsageError, match="--lr must be in"):
        C.LearnConfig.from_options(lr=0)
    with pytest.raises(UsageError, match="unknown option.*alphaa"):
        C.UnlearnConfig.from_options(alphaa=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0


def test_launch_keys_and_aliases_come_from_the_table():
    assert set(O.ALL_KEYS) == {o.key for o in C.options_for("launch")}
    assert O.THESIS_ALIASES["learn_batch_size"] == "batch_size"
    assert O.normalise_keys({"learning-buffer-type": "most", "task_sequence": "A4"}) == {
        "learn_buffer_type": "most", "sequence": "A4"}
    for o in C.TABLE:
        for t in o.thesis + o.spellings:
            assert O.normalise_keys({t: 1}) == {o.key: 1}
    assert O.normalise_keys({"unlearn-algo": "rl-gem"}) == {"algo": "rl-gem"}


def test_launch_toml_file_with_thesis_spellings(tmp_path):
    # tomllib on 3.11+, tomli on 3.10 (scripts/py310-smoke.sh runs this file there)
    f = tmp_path / "run.toml"
    f.write_text('task_sequence = "C4v2"\nlearn-batch-size = 5\nnumber_of_gpus = 0\nseed-list = [3, 7]\n')
    assert O.load_toml(f) == {"sequence": "C4v2", "batch_size": 5, "gpus": 0, "seed_list": [3, 7]}
    f.write_text("batch_size = 5\nlearn_batch_size = 6\n")
    with pytest.raises(UsageError, match="set the same option --batch-size"):
        O.load_toml(f)


def test_api_takes_typed_configs_and_keywords_alike(tmp_path):
    pytest.importorskip("torch")  # (the Python 3.10 smoke run has no torch)
    from conftest import TINY

    from cluctl import api

    a = api.learn(0, store=tmp_path / "a", **TINY)
    typed = C.LearnConfig.from_options(TINY)
    b = api.learn(0, store=tmp_path / "b", config=typed, execution=C.Execution(impl="fast", threads=1))
    assert a.id == b.id  # the same checkpoint, however the options were given
    u1 = api.unlearn(0, from_ref=a.id, store=tmp_path / "a", alpha=0.3, algo="neggrad")
    u2 = api.unlearn(0, from_ref=b.id, store=tmp_path / "b", config=C.UnlearnConfig(alpha=0.3, algo="neggrad"))
    assert u1.id == u2.id
    with pytest.raises(UsageError, match="--alpha must be in"):
        api.unlearn(0, from_ref=a.id, store=tmp_path / "a", config=C.UnlearnConfig(alpha=3.0))
    with pytest.raises(UsageError, match="unknown option"):
        api.learn(1, from_ref=a.id, store=tmp_path / "a", learning_rate=0.1)
