"""Ctrl-C: one line on stderr and exit 130 (Typer alone turns it into a silent 130), the
store keeping only whole objects, and no traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import TINY_FLAGS


def test_ctrl_c_during_learn_says_so_in_one_line(tmp_path):
    store = tmp_path / "store"
    env = dict(os.environ, CLUCTL_DEBUG="0")
    args = [sys.executable, "-m", "cluctl.cli.main", "learn", "--task", "0", *TINY_FLAGS, "--epochs", "500",
            "--store", str(store)]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    # the initial checkpoint is written just before training starts
    while not (store / "refs" / "checkpoints").is_dir() or not any((store / "refs" / "checkpoints").iterdir()):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "learn did not start"
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert out == ""  # no checkpoint id: the operation did not finish
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted"), err
    assert "Traceback" not in err
    r = subprocess.run([sys.executable, "-m", "cluctl.cli.main", "store", "verify", "--store", str(store)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
