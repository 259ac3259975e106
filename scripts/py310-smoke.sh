#!/usr/bin/env bash
# Python 3.10 smoke run: cluctl must install and run on 3.10 (requires-python >= 3.10; launch's
# TOML goes through tomli there). In a 3.10 venv with every dependency but torch/torchvision
# (on 3.10 those are a ~5.5 GB download here; on 3.11 they come from local wheels), it runs
# the torch-free part of the suite: the CLI and its --help, the option table and its checks,
# launch TOML files read through tomli, and the import layers. .ci/run calls it after the
# suite; it skips (exit 0, with a line on stderr) where no Python 3.10 is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY310="${PY310:-}"
if [ -z "$PY310" ]; then
  for c in /root/.pyenv/versions/3.10*/bin/python3.10 "$(command -v python3.10 || true)"; do
    if [ -n "$c" ] && [ -x "$c" ] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      PY310="$c"; break
    fi
  done
fi
if [ -z "$PY310" ]; then
  echo "py310-smoke: no Python 3.10 on this machine; skipped" >&2
  exit 0
fi
V=.venv310
"$PY310" -m venv "$V"
"$V/bin/python" -m pip install --quiet --upgrade pip
"$V/bin/python" -m pip install --quiet typer rich quadprog numpy pandas matplotlib safetensors scikit-learn \
  "tomli>=1.1" pytest
"$V/bin/python" -m pip install --quiet --no-deps -e .
"$V/bin/python" -c 'import sys, tomli; assert sys.version_info[:2] == (3, 10); print("py310-smoke:", sys.version.split()[0])'
"$V/bin/cluctl" launch --help > /dev/null
"$V/bin/python" -m pytest -q -p no:cacheprovider tests/test_options.py tests/test_layers.py
