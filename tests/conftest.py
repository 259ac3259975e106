import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import torch
except ImportError:  # the torch-free smoke run on Python 3.10 (scripts/py310-smoke.sh)
    torch = None

# Deterministic, quiet, single-threaded by default: the suite runs on 2 cores.
if torch is not None:
    torch.set_num_threads(1)
os.environ.setdefault("CLUCTL_DEBUG", "0")

CLUCTL = [sys.executable, "-m", "cluctl.cli.main"]

# A tiny profile for end-to-end runs (DESIGN.md, "Tests"). Distinct random learn and unlearn
# buffers, so that code paths that read one buffer instead of the other give different
# numbers (with first/same the two buffers coincide and such mistakes go unseen).
TINY = {"dataset": "digits", "model": "mlp", "width": 32, "epochs": 1, "memories": 32,
        "learn_buffer_type": "random", "unlearn_buffer_type": "random"}
TINY_FLAGS = ["--dataset", "digits", "--model", "mlp", "--width", "32", "--epochs", "1", "--memories", "32",
              "--learn-buffer-type", "random", "--unlearn-buffer-type", "random"]


def run_cli(args, store=None, env=None, check=None, timeout=600):
    e = dict(os.environ)
    e.pop("CLUCTL_FAULT", None)
    e.setdefault("OMP_NUM_THREADS", "1")
    if store is not None:
        e["CLUCTL_STORE"] = str(store)
    e.update(env or {})
    p = subprocess.run(CLUCTL + [str(a) for a in args], capture_output=True, text=True, env=e, timeout=timeout)
    if check is not None:
        assert p.returncode == check, f"rc={p.returncode}\nstdout={p.stdout}\nstderr={p.stderr}"
    return p


def tree_hash(root) -> str:
    """Hash of every file's path, mode and bytes under root (byte-identical store check)."""
    h = hashlib.sha256()
    root = Path(root)
    if not root.exists():
        return "absent"
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


def clone_state(st):
    """An independent copy of an engine State (model, learned/forgotten/history, buffers,
    config, given options, execution), so one module-scoped learned state serves many tests."""
    import copy

    new = copy.copy(st)
    new.model = copy.deepcopy(st.model)
    new.learned, new.forgotten, new.history = list(st.learned), list(st.forgotten), list(st.history)
    new.buffers = {k: dict(v) for k, v in st.buffers.items()}
    new.config = dict(st.config)
    new.execution = dict(st.execution)
    new.given = dict(st.given)
    new.op_config = None if st.op_config is None else dict(st.op_config)
    return new


# the thesis README's command line (its option spellings), on the CPU and the offline digits
THESIS = (
    "--algorithm neggem --alpha 0.9 --number_of_gpus 3 --learn_mem_strength 0.5 --learn_batch_size 10 "
    "--unlearn_mem_strength 0.6 --unlearn_batch_size 10 --average_over_n_runs 3 --salun 1 --salun_strength 0.2 "
    "--mem_learning_buffer 1 --learning_buffer_split 0.2 --learning_buffer_type least --mem_unlearning_buffer 1 "
    "--unlearning_buffer_split 0.2 --unlearning_buffer_type most --devices cpu --dataset digits"
).split()


@pytest.fixture(scope="module")
def tiny_learned3():
    """A TINY state that learned tasks 0, 1, 2 with GEM (module-scoped: clone it per test)."""
    from cluctl.engine import learn_task, new_state, run_config

    st = new_state(run_config(**TINY), device="cpu")
    for t in range(3):
        learn_task(st, t)
    return st


def unlearn_from_cli(tmp_path, algo: str, *flags) -> tuple[str, dict]:
    """Learn tasks 0 and 1 (TINY, through the API), unlearn task 1 with ``cluctl unlearn
    --algo ALGO FLAGS``; returns (its stderr, the config its checkpoint says it used)."""
    import json

    from cluctl import api

    st = tmp_path / "st"
    r = api.learn(0, store=st, **TINY)
    r = api.learn(1, from_ref=r.id, store=st)
    p = run_cli(["unlearn", "--task", "1", "--from", r.id, "--algo", algo, *flags], store=st, check=0)
    meta = json.loads(run_cli(["store", "show", p.stdout.strip(), "--json"], store=st, check=0).stdout)
    return p.stderr, meta["meta"]["config"]
