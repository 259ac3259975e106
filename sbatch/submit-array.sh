#!/usr/bin/env bash
# Submit launch-array.sbatch (one seed per array task, into the shared store $CLUCTL_STORE)
# and aggregate.sbatch after it (--dependency=afterok: only once every task COMPLETED),
# both with the same `cluctl launch` arguments. Prints the two job ids on stdout.
#
#   sbatch/submit-array.sh [SBATCH_OPTION... --] LAUNCH_ARGS...
#
#   export CLUCTL_STORE=/shared/cluctl-store CLUCTL=$PWD/.venv/bin/cluctl
#   sbatch/submit-array.sh --sequence A4 --algo neggem                    # seeds 0,1,2
#   sbatch/submit-array.sh --array=0-9%4 --time=12:00:00 -- --sequence A4 --algo neggem
#
# SBATCH_OPTIONs (before `--`) go to both sbatch calls, except --array/-a (the seeds; default
# $CLUCTL_ARRAY or $SBATCH_ARRAY_INX, else the #SBATCH --array line of launch-array.sbatch)
# which only the array gets; the aggregate job gets --seed-list <those seeds>. The environment (CLUCTL,
# CLUCTL_STORE, CLUCTL_DEVICES, CLUCTL_OUT ...) reaches both jobs (sbatch's --export=ALL).
# If a task fails, the aggregate job is cancelled (--kill-on-invalid-dep=yes); fix, then
# resubmit: finished seeds are kept in the store and are not redone.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "submit-array: error: $*" >&2; exit 2; }

sb=() array=${CLUCTL_ARRAY:-${SBATCH_ARRAY_INX:-}}
for a in "$@"; do [ "$a" = -- ] && { have_sep=1; break; }; done
if [ -n "${have_sep:-}" ]; then
  while [ "$1" != -- ]; do
    case $1 in
      --array=*) array=${1#--array=} ;;
      --array | -a) [ $# -ge 2 ] || die "$1 needs a value"; array=$2; shift ;;
      -a*) array=${1#-a} ;;
      *) sb+=("$1") ;;
    esac
    shift
  done
  shift
fi
[ $# -gt 0 ] || die "no cluctl launch arguments (usage: $0 [SBATCH_OPTION... --] LAUNCH_ARGS...)"
has_store=""
for a in "$@"; do case $a in --store | --store=*) has_store=1 ;; esac; done
[ -n "${CLUCTL_STORE:-}" ] || [ -n "$has_store" ] || die "set CLUCTL_STORE (or pass --store) to a store every array task can reach"
[ -n "$array" ] || array=$(sed -n 's/^#SBATCH --array=\([^ ]*\).*/\1/p' "$here/launch-array.sbatch")

# The array's task ids = the seeds: 0-4,7,10-20:5%2 -> 0,1,2,3,4,7,10,15,20
seeds=()
IFS=, read -ra parts <<<"${array%%\%*}"
for part in "${parts[@]}"; do
  s=1
  [[ $part == *:* ]] && { s=${part#*:}; part=${part%%:*}; }
  a=${part%-*} b=${part#*-}
  if ! [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ && $s =~ ^[1-9][0-9]*$ ]] || [ "$a" -gt "$b" ]; then
    die "cannot read --array $array"
  fi
  for ((i = a; i <= b; i += s)); do seeds+=("$i"); done
done
seed_list=$(IFS=,; echo "${seeds[*]}")

unset SBATCH_ARRAY_INX  # (sbatch's environment form of --array would make the aggregate job an array too)
job=$(sbatch --parsable "${sb[@]}" --array="$array" "$here/launch-array.sbatch" "$@")
job=${job%%;*}
agg=$(sbatch --parsable "${sb[@]}" --dependency="afterok:$job" --kill-on-invalid-dep=yes \
  "$here/aggregate.sbatch" "$@" --seed-list "$seed_list")
agg=${agg%%;*}
echo "submit-array: array job $job (seeds $seed_list), aggregate job $agg after it" >&2
echo "$job"
echo "$agg"
