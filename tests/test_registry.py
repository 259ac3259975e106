"""The algorithm registries are the one place an algorithm is declared: names, aliases,
rule defaults, CLI choices and help all come from there, for every registered algorithm
(including ones added later as a single file)."""

import subprocess
import sys

import pytest

from cluctl import learning, resolve, unlearning
from cluctl.engine import run_config, unlearn_task
from cluctl.errors import UsageError

from conftest import TINY, clone_state

UNLEARN = list(unlearning.names())
LEARN = list(learning.names())


def test_builtins_in_spec_order_then_the_rest():
    assert UNLEARN[:6] == ["neggem", "negagem", "rl-gem", "rl-agem", "alt-neggem", "neggrad"]
    assert LEARN[:3] == ["naive", "gem", "agem"]


@pytest.mark.parametrize("name", UNLEARN)
def test_unlearning_names_aliases_and_rule_defaults_come_from_the_declaration(name):
    alg = unlearning.REGISTRY[name]
    for spelling in (name, name.upper(), name.replace("-", "_"), name.replace("-", ""), *alg.aliases):
        assert unlearning.canonical(spelling) == name
    cfg = resolve.validate_unlearn({**run_config(**TINY), "algo": name.upper()}, classes_per_task=2)
    assert cfg["algo"] == name
    assert cfg["unlearning_rate"] == alg.unlearning_rate and cfg["forget_loss_scale"] == alg.forget_loss_scale
    assert cfg["stop_acc"] == pytest.approx(0.5 + 0.5 / 6)
    assert alg.help, "every algorithm declares a help line"


def test_unknown_names_list_the_registry():
    with pytest.raises(UsageError) as ei:
        unlearning.canonical("negative-gem")
    assert all(n in str(ei.value) for n in UNLEARN)
    with pytest.raises(UsageError) as ei:
        learning.canonical("ewc")
    assert all(n in str(ei.value) for n in LEARN)


def test_names_cannot_be_registered_twice():
    alg = unlearning.REGISTRY["neggem"]
    with pytest.raises(ValueError, match="taken"):
        unlearning.register(unlearning.UnlearnAlgorithm("neg-gem-copy", alg.combine, aliases=("NEGGEM",)))
    assert "neg-gem-copy" not in unlearning.REGISTRY
    with pytest.raises(UsageError):
        unlearning.canonical("neg-gem-copy")  # nothing of the refused algorithm was kept


def test_cli_help_lists_every_registered_algorithm():
    for cmd, names in ((["unlearn", "--help"], UNLEARN), (["learn", "--help"], LEARN), (["launch", "--help"], UNLEARN)):
        out = subprocess.run([sys.executable, "-m", "cluctl.cli.main", *cmd], capture_output=True, text=True,
                             env={"COLUMNS": "400", "PATH": ""}).stdout
        for n in names:
            assert n in out, (cmd, n)
    rate = unlearning.rule_help("unlearning_rate")
    assert "0.03 for" in rate and "rl-gem" in rate and rate.endswith("0.01 otherwise")


def test_registry_is_readable_without_torch():
    code = "import sys, cluctl.learning, cluctl.unlearning, cluctl.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("name", UNLEARN)
def test_every_unlearning_algorithm_forgets_a_task(tiny_learned3, name):
    """Every registered algorithm runs a request end to end: the task is forgotten, its
    buffers leave the state, the summary reports the algorithm and how it stopped, and the
    updates applied are finite."""
    st = clone_state(tiny_learned3)
    seen = []
    s = unlearn_task(st, 2, {"algo": name, "max_epochs": 2}, step_hook=lambda d: seen.append(d))
    assert s["algo"] == name and s["stopped"] in ("stop-acc", "max-epochs")
    assert st.learned == [0, 1] and st.forgotten == [2] and 2 not in st.buffers
    assert all(bool(d["x"].isfinite().all()) for d in seen)
    assert s["steps"] == len(seen)


# ------------------------------------------------------------------ datasets


def test_every_registered_dataset_is_declared_once_and_listed():
    from cluctl.data import registry
    from cluctl.launch.options import dataset_meta

    kinds = registry.kinds()
    assert [k.name for k in kinds][:4] == ["digits", "cifar10", "cifar100", "npz"]
    text = registry.choices()
    for k in kinds:
        assert (f"{k.name}:PATH" if k.path_arg else k.name) in text
        assert k.help and k.default_model in ("mlp", "resnet18")
        if not k.path_arg:
            assert registry.lookup(k.name.upper())[0] is k
            name, classes, tasks = dataset_meta(k.name, download=True)  # declared: nothing loaded
            assert (name, classes, tasks) == (k.name, k.classes, k.default_tasks)
    assert registry.lookup("npz:./x.npz") == (registry.REGISTRY["npz"], "./x.npz")
    assert registry.default_model("npz:/abs/x.npz") == "resnet18" and registry.default_model("digits") == "mlp"
    with pytest.raises(UsageError, match="digits, cifar10, cifar100 or npz:PATH"):
        registry.lookup("mnist")


def test_declared_files_are_checked_before_any_work(tmp_path):
    from cluctl.errors import NotFound
    from cluctl.launch.options import dataset_meta

    with pytest.raises(NotFound, match="CIFAR-100 not found"):
        dataset_meta("cifar100", data_root=str(tmp_path))


def test_dataset_help_comes_from_the_registry():
    from cluctl.data import registry

    out = subprocess.run([sys.executable, "-m", "cluctl.cli.main", "learn", "--help"], capture_output=True,
                         text=True, env={"COLUMNS": "400", "PATH": ""}).stdout
    assert registry.choices() in out


def test_every_reader_of_a_results_folder_takes_k_from_one_rule(tmp_path):
    """A results folder whose summary.json has no "k": the plots' reader, evaluate --metrics
    (recomputing without metrics.csv) and run_metrics all use the registered dataset's
    classes / tasks (cifar100, 20 tasks: k = 5, chance 0.2), not a default of 2."""
    import json

    import numpy as np

    from cluctl.launch import run_metrics
    from cluctl.metrics import clu_mix
    from cluctl.plots.results import classes_per_task, load_results

    from conftest import run_cli

    assert classes_per_task({"dataset": "cifar100", "n_tasks": 20}) == 5
    assert classes_per_task({"k": 4, "dataset": "cifar100", "n_tasks": 20}) == 4
    assert classes_per_task({"dataset": "npz:/x.npz", "n_tasks": 3}) is None
    ops = ["L0", "L1", "U1"]
    rng = np.random.default_rng(0)
    train = rng.uniform(0.25, 0.45, (3, 20))  # between chance for k = 5 (0.2) and k = 2 (0.5)
    test = rng.uniform(0.25, 0.45, (3, 20))
    out = tmp_path / "res"
    (out / "seed-0").mkdir(parents=True)
    for name, m in (("test_acc", test), ("train_acc", train), ("test_conf", test), ("train_conf", train)):
        rows = ["op," + ",".join(map(str, range(20)))] + [f"{o}," + ",".join(repr(float(v)) for v in r) for o, r in zip(ops, m)]
        (out / "seed-0" / f"{name}.csv").write_text("\n".join(rows) + "\n")
    (out / "summary.json").write_text(json.dumps({"run": "r", "dataset": "cifar100", "n_tasks": 20, "ops": ops,
                                                  "seeds": [{"seed": 0}], "mean": {}, "std": {}}))
    want = clu_mix(ops, train, k=5)[-1]
    assert want != clu_mix(ops, train, k=2)[-1]
    assert load_results(str(out)).k == 5
    assert run_metrics(out)["rows"][-1]["clu_mix"] == pytest.approx(want)
    p = run_cli(["evaluate", str(out), "--metrics", "--json"], check=0)
    assert json.loads(p.stdout)["per_op"][-1]["clu_mix"] == pytest.approx(want)
