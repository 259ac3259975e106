#!/usr/bin/env bash
# A private single-node Slurm from Debian's packages, for CI and tests/test_slurm.py.
# Runs as root, without systemd; everything (conf, state, logs, pid files) lives under
# $CLUCTL_SLURM_DIR (default /tmp/cluctl-ci-slurm). Jobs run as the submitting user (root).
#
#   bash sbatch/ci-slurm.sh install     # apt-get the packages if missing (services kept stopped)
#   bash sbatch/ci-slurm.sh start       # fresh conf + state, munged, slurmctld, slurmd; waits for idle
#   eval "$(bash sbatch/ci-slurm.sh env)"   # export SLURM_CONF=... for sbatch/squeue/scontrol
#   bash sbatch/ci-slurm.sh wait JOBID [TIMEOUT_S]  # 0 iff the job (every array task) COMPLETED
#   bash sbatch/ci-slurm.sh status | stop
#
# Or `source sbatch/ci-slurm.sh` and call cluctl_slurm_{install,start,stop,status,wait}.
# `start` exits 3 where it cannot run (Slurm not installed, not root, another Slurm runs),
# 1 when it fails.
#
# The node has $CLUCTL_SLURM_GPUS (default 3) fake GPUs (gres "gpu", each a /dev/null-like
# device file), so the wrappers' `#SBATCH --gres=gpu:N` lines are schedulable here as on a
# real GPU node; the jobs themselves run on CPU (CLUCTL_DEVICES=cpu).

CLUCTL_SLURM_DIR=${CLUCTL_SLURM_DIR:-/tmp/cluctl-ci-slurm}
export SLURM_CONF=$CLUCTL_SLURM_DIR/etc/slurm.conf
CLUCTL_SLURM_PACKAGES=(slurmctld slurmd slurm-client munge)
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin ;; esac  # slurmctld, slurmd, munged

_cs_log() { echo "ci-slurm: $*" >&2; }
# (not `sbatch --version`: Slurm's clients wait 60 s for a missing slurm.conf)
_cs_version() { dpkg-query -W -f '${Version}' slurm-client 2>/dev/null || echo "version unknown"; }

cluctl_slurm_installed() {
  command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
    command -v munged >/dev/null
}

cluctl_slurm_install() {
  if cluctl_slurm_installed; then _cs_log "Slurm is installed (Slurm $(_cs_version))"; return 0; fi
  [ "$(id -u)" = 0 ] || { _cs_log "error: installing Slurm needs root (apt-get)"; return 1; }
  command -v apt-get >/dev/null || { _cs_log "error: no apt-get: install ${CLUCTL_SLURM_PACKAGES[*]} by hand"; return 1; }
  local t0=$SECONDS policy=/usr/sbin/policy-rc.d ours="" rc=0
  if [ ! -e "$policy" ]; then  # keep the packages' services from starting (ours are started by `start`)
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${CLUCTL_SLURM_PACKAGES[@]}" >/dev/null || rc=$?
  [ -n "$ours" ] && rm -f "$policy"
  if [ "$rc" != 0 ] || ! cluctl_slurm_installed; then
    _cs_log "error: apt-get install ${CLUCTL_SLURM_PACKAGES[*]} failed (rc $rc)"; return 1
  fi
  _cs_log "installed ${CLUCTL_SLURM_PACKAGES[*]} (Slurm $(_cs_version)) in $((SECONDS - t0)) s"
}

_cs_alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s#Z}" = "$s" ]; }  # running, not a zombie
_cs_pid() { local p; p=$(cat "$CLUCTL_SLURM_DIR/run/$1.pid" 2>/dev/null) && _cs_alive "$p" && echo "$p"; }

cluctl_slurm_start() {
  local d=$CLUCTL_SLURM_DIR h n=${CLUCTL_SLURM_GPUS:-3} node i p
  cluctl_slurm_installed || { _cs_log "error: Slurm is not installed — run: bash sbatch/ci-slurm.sh install"; return 3; }
  [ "$(id -u)" = 0 ] || { _cs_log "error: the CI Slurm runs as root"; return 3; }
  cluctl_slurm_stop
  for p in $(pgrep -x slurmctld) $(pgrep -x slurmd); do  # one Slurm per host (fixed ports)
    _cs_alive "$p" && { _cs_log "error: another Slurm daemon runs (pid $p) — stop it first"; return 3; }
  done
  h=$(hostname -s)
  getent hosts "$h" >/dev/null || echo "127.0.0.1 $h" >>/etc/hosts
  rm -rf "$d" && mkdir -p "$d"/{etc,state,spool,log,run,gpu} || return 1
  # The node as slurmd sees it (sockets, cores, threads, memory), plus fake GPUs.
  node=$(slurmd -C 2>/dev/null | head -n1 | sed 's/ UpTime=.*//')
  case $node in NodeName=*) ;; *) node="NodeName=$h CPUs=$(nproc)" ;; esac
  node="NodeName=$h ${node#NodeName=* }"
  if [ "$n" -gt 0 ]; then  # gres without a File= is dropped: give each fake GPU a device file
    for ((i = 0; i < n; i++)); do mknod "$d/gpu/$i" c 1 3; done
    echo "NodeName=$h Name=gpu File=$d/gpu/[0-$((n - 1))]" >"$d/etc/gres.conf"
    node="$node Gres=gpu:$n"
  fi
  cat >"$SLURM_CONF" <<EOF
# cluctl CI: one node, jobs run as their submitter; written by sbatch/ci-slurm.sh
ClusterName=cluctl-ci
SlurmctldHost=$h
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
$([ "$n" -gt 0 ] && echo GresTypes=gpu)
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_interval=2
# a requeued job may start again cred_expire s later (default 120)
AuthInfo=cred_expire=5
ReturnToService=2
MinJobAge=3600
KillWait=10
MailProg=/bin/true
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/run/slurmctld.pid
SlurmdPidFile=$d/run/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
$node State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # munge: reuse a working munged, else start our own (Debian's postinst makes the key)
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey -c || return 1
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged || { _cs_log "error: munged did not start"; return 1; }
    cp /run/munge/munged.pid "$d/run/munged.pid"
  fi
  if ! slurmctld -c || ! slurmd; then  # both fork into the background
    _cs_log "error: slurmctld/slurmd did not start"; tail -n 20 "$d"/log/*.log >&2; return 1
  fi
  for ((i = 0; i < 120; i++)); do  # 30 s
    [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ] && { _cs_log "node $h idle (SLURM_CONF=$SLURM_CONF)"; return 0; }
    sleep 0.25
  done
  _cs_log "error: the node did not become idle"; sinfo -N -l >&2; tail -n 20 "$d"/log/*.log >&2
  return 1
}

cluctl_slurm_stop() {
  local d=$CLUCTL_SLURM_DIR f p i
  if _cs_pid slurmctld >/dev/null; then  # (client commands hang for ~20 s without a slurmctld)
    timeout 10 scancel --user="$(id -un)" 2>/dev/null
    for ((i = 0; i < 40; i++)); do [ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && break; sleep 0.25; done
  fi
  for f in slurmd slurmctld munged; do
    p=$(_cs_pid "$f") || continue
    kill "$p" 2>/dev/null
    for ((i = 0; i < 50; i++)); do _cs_alive "$p" || break; sleep 0.2; done
    rm -f "$d/run/$f.pid"
  done
  return 0
}

cluctl_slurm_status() {
  if ! _cs_pid slurmctld >/dev/null; then echo "not running (SLURM_CONF=$SLURM_CONF)"; return 1; fi
  echo "SLURM_CONF=$SLURM_CONF"; sinfo -N -l; squeue
}

# JOBID [TIMEOUT_S]: wait until the job (every task of an array) has ended; prints the
# states on stderr; 0 iff all COMPLETED, 1 otherwise, 124 on timeout.
cluctl_slurm_wait() {
  local id=$1 timeout=${2:-300} end s
  end=$((SECONDS + timeout))
  while :; do
    s=$(scontrol -o show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | sort | uniq -c | xargs)
    [ -n "$s" ] || { _cs_log "job $id: unknown"; return 1; }
    grep -qE 'PENDING|RUNNING|CONFIGURING|COMPLETING|SUSPENDED|REQUEUE|RESIZING|SIGNALING|STAGE_OUT' <<<"$s" || break
    [ "$SECONDS" -lt "$end" ] || { _cs_log "job $id: still $s after ${timeout} s"; return 124; }
    sleep 0.25
  done
  _cs_log "job $id: $s"
  [[ $s =~ ^[0-9]+\ JobState=COMPLETED$ ]]
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case ${1:-} in
    install) cluctl_slurm_install ;;
    start) cluctl_slurm_start ;;
    stop) cluctl_slurm_stop ;;
    status) cluctl_slurm_status ;;
    wait) shift; cluctl_slurm_wait "$@" ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: bash $0 install|start|stop|status|env|wait JOBID [TIMEOUT_S]" >&2; exit 2 ;;
  esac
fi
