#!/usr/bin/env bash
# One-shot check of the fast paths on a machine with a CUDA GPU (no network needed).
#
#   benchmarks/gpu_check.sh OUTDIR             # on the GPU machine, from anywhere
#   benchmarks/gpu_check.sh --dry-run OUTDIR   # tiny sizes on the CPU: exercises every stage
#   CLUCTL_GPU_CHECK_DEVICE=cpu benchmarks/gpu_check.sh OUTDIR   # same as --dry-run
#
# Stages (each under its own `timeout`, all of it under ~9 minutes; GPU_CHECK_TOTAL_S):
#   1. pytest -m cuda                      (tests/test_cuda.py: fast == classic per step, CUDA-graph
#                                           replays == eager, bf16 steps)
#   2. bench_step on the device            (GEM learn / NegGEM unlearn step at T = 1, 5, 19; classic,
#                                           fast, fast-nograph, fast-bf16, fast-cudnnbench; peak GPU
#                                           memory of one step)
#   3. bench_run probe                     (thesis-scale CIFAR-shaped setting: real learn/unlearn
#                                           operations timed at T = 0, 2, 5, 10, 19 for classic/fp32,
#                                           fast/fp32, fast/bf16; full A4 extrapolated from them)
#   4. 3 seeds with --per-device 3 on one GPU vs 1 seed (cluctl launch; ratio of walls)
#   5. thesis-scale A4 run in order for a fixed budget (bench_run budget, fp32), extrapolated
#   6. torch.profiler table of fast learn steps at T = 19 (if time is left)
#   7. bf16 vs fp32 end-to-end accuracy on a reduced CIFAR-shaped A4 (if time is left)
# Writes OUTDIR/summary.txt (the key lines of every stage) and OUTDIR/logs.tar.gz (all logs
# and JSON); the individual files stay in OUTDIR/stages/.
#
# Environment: python3 with torch (CUDA) on PATH (or $PYTHON). cluctl is used from src/
# (PYTHONPATH); if quadprog is missing and a .whl/ folder exists at the repo root, its
# wheels are installed offline into /tmp/site (pip --no-index --no-deps --target). Prepare
# that folder where there is network, for the GPU machine's Python version, e.g.
#   pip download quadprog pytest pluggy iniconfig --only-binary :all: \
#       --python-version 3.12 --platform manylinux2014_x86_64 -d .whl
# (pytest and its deps only if that python3 lacks them; env.txt lists what is missing).
set -u

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:?usage: gpu_check.sh [--dry-run] OUTDIR}
[ "${CLUCTL_GPU_CHECK_DEVICE:-cuda}" = "cpu" ] && DRY=1
mkdir -p "$OUT/stages"
OUT=$(cd "$OUT" && pwd)
S="$OUT/stages"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL_S:-520}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

log() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((TOTAL - ($(date +%s) - START))); }
# stage_timeout WANT: the stage's own limit, cut to what is left of the total (min 20 s)
stage_timeout() { local l; l=$(left); l=$((l - 5)); [ "$l" -lt 20 ] && l=20; [ "$1" -lt "$l" ] && echo "$1" || echo "$l"; }

# ---------------------------------------------------------------- environment
if ! "$PY" -c "import quadprog" 2>/dev/null; then
  if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site "$ROOT"/.whl/*.whl >"$S/pip.txt" 2>&1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
{
  date -u
  "$PY" - <<'EOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "tf32 conv", torch.backends.cudnn.allow_tf32,
          "tf32 matmul", torch.backends.cuda.matmul.allow_tf32)
for m in ("quadprog", "numpy", "typer", "rich", "safetensors", "sklearn", "pandas", "matplotlib", "pytest"):
    try:
        importlib.import_module(m); print("ok", m)
    except Exception as e:
        print("MISSING", m, type(e).__name__, e)
EOF
  nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv 2>/dev/null || echo "no nvidia-smi"
  nproc
} >"$S/env.txt" 2>&1
log "== gpu_check $(date -u +%FT%TZ) dry-run=$DRY root=$ROOT"
grep -E "^(python|gpu|MISSING)" "$S/env.txt" | tee -a "$SUMMARY"

if [ "$DRY" = 1 ]; then
  DEV=cpu; LDEV=cpu
  STEP_ARGS=(--device cpu --tasks 1,2 --n-tasks 4 --width 4 --memories 16 --repeats 1 --impls classic,fast,fast-nograph)
  PROBE_ARGS=(--device cpu --tasks 4 --samples-per-task 50 --width 4 --memories 16 --epochs 1 --probe-tasks 0,1,3
              --steps 6 --unlearn-steps 6 --configs classic/fp32,fast/fp32)
  SEEDS_ARGS=(--device cpu --tasks 4 --samples-per-task 20 --width 4 --memories 8 --epochs 1 --seeds 2 --sequence "L0")
  BUDGET_ARGS=(--device cpu --tasks 4 --samples-per-task 50 --width 4 --memories 16 --epochs 1 --budget-s 10)
  PROF_ARGS=(--device cpu --tasks 2 --n-tasks 4 --width 4 --memories 16 --profile 2 --impls fast)
  BF16_ARGS=(--device cpu --dataset cifar-synth --tasks 4 --samples-per-task 50 --width 4 --memories 16 --epochs 1
             --seeds 0 --impls fast --precisions fp32 --driver engine --learn-buffer-type random
             --unlearn-buffer-type random)
else
  DEV=cuda; LDEV=cuda:0
  STEP_ARGS=(--device cuda --tasks 1,5,19 --repeats 5 --warmup 2 --impls classic,fast,fast-nograph,fast-bf16,fast-cudnnbench)
  PROBE_ARGS=(--device cuda --probe-tasks 0,2,5,10,19 --steps 20 --unlearn-steps 12
              --configs classic/fp32,fast/fp32,fast/bf16)
  SEEDS_ARGS=(--device cuda:0 --seeds 3 --sequence "L0 L1 L2" --tasks 3 --samples-per-task 1000)
  BUDGET_ARGS=(--device cuda --budget-s 60)
  PROF_ARGS=(--device cuda --profile 19 --impls fast)
  BF16_ARGS=(--device cuda:0 --dataset cifar-synth --tasks 5 --samples-per-task 500 --seeds 0 --impls fast
             --precisions fp32,bf16 --driver engine --learn-buffer-type random --unlearn-buffer-type random)
fi

run_stage() {  # name want_timeout_s command...
  local name=$1 want=$2; shift 2
  local t0 rc tmo
  tmo=$(stage_timeout "$want")
  t0=$(date +%s)
  log ""
  log "== stage $name (timeout ${tmo}s, $(left)s of the total left)"
  timeout --kill-after=10 "$tmo" "$@" >"$S/$name.txt" 2>&1
  rc=$?
  log "   rc=$rc ($(( $(date +%s) - t0 ))s)$([ $rc = 124 ] && echo ' TIMED OUT')"
  return $rc
}

# 1. CUDA-marked tests (on CPU: they must all skip cleanly, with their reason)
run_stage pytest_cuda 70 "$PY" -m pytest -m cuda tests/test_cuda.py -q -rs -p no:cacheprovider
tail -n 15 "$S/pytest_cuda.txt" | tee -a "$SUMMARY"

# 2. per-step timings and peak memory of one step
run_stage bench_step 100 "$PY" benchmarks/bench_step.py "${STEP_ARGS[@]}" --json "$S/bench_step.json"
grep -E "^(op|learn|unlearn|  |peak|bench_step)" "$S/bench_step.txt" | tee -a "$SUMMARY"

# 3. real operations probed at T = 0..19, full A4 extrapolated (classic, fast, fast bf16)
run_stage probe 110 "$PY" benchmarks/bench_run.py probe "${PROBE_ARGS[@]}" --json "$S/probe.json"
grep -E "^(bench_run|  T=|  classic|  fast|extrapolated|nothing|warning)" "$S/probe.txt" | tee -a "$SUMMARY"

# 4. three seeds sharing one GPU vs one seed
run_stage seeds 110 "$PY" benchmarks/bench_run.py seeds "${SEEDS_ARGS[@]}" --json "$S/seeds.json"
grep -E "seed|RATIO|warning" "$S/seeds.txt" | tee -a "$SUMMARY"

# 5. thesis-scale A4 in order for a time budget, extrapolated (the first tasks only, in the budget)
run_stage budget 90 "$PY" benchmarks/bench_run.py budget "${BUDGET_ARGS[@]}" --json "$S/budget.json"
grep -E "^(bench_run|  L|  U|per-step|extrapolated|EXTRAPOLATED|nothing|warning)" "$S/budget.txt" | tail -n 30 | tee -a "$SUMMARY"

# 6. where the time of a step goes (if time is left)
if [ "$(left)" -ge 70 ]; then
  run_stage profile 60 "$PY" benchmarks/bench_step.py "${PROF_ARGS[@]}"
  grep -A 30 "^profile:" "$S/profile.txt" | cut -c1-180 | tee -a "$SUMMARY"
else
  log "== stage profile skipped: $(left)s left"
fi

# 7. bf16 vs fp32 end-to-end accuracy (reduced A4), only if time is left
if [ "$(left)" -ge 60 ]; then
  run_stage bf16 120 "$PY" benchmarks/bench_run.py a4 "${BF16_ARGS[@]}" --json "$S/bf16.json"
  grep -E "seed|/fp32|/bf16|vs" "$S/bf16.txt" | tee -a "$SUMMARY"
else
  log "== stage bf16 skipped: $(left)s left"
fi

# failures: show the tail of any log with a traceback
for f in "$S"/*.txt; do
  if grep -q "Traceback" "$f"; then log ""; log "== traceback in $(basename "$f"):"; tail -n 25 "$f" | tee -a "$SUMMARY"; fi
done
log ""
log "== done in $(( $(date +%s) - START ))s; logs in $OUT/logs.tar.gz"
tar -czf "$OUT/logs.tar.gz" -C "$OUT" stages summary.txt 2>/dev/null
exit 0
