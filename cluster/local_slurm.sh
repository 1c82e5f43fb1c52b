#!/usr/bin/env bash
# local_slurm.sh start|stop|status [STATE_DIR]
#
# Brings up (or down) a one-machine Slurm: a private munged, slurmctld and slurmd,
# all with their config, sockets, pid files, state and logs under STATE_DIR
# (default: /tmp/deepshard-slurm). Nothing under /etc is changed, except that the
# system munge key (/etc/munge/munge.key) is created when it is missing.
#
#   start   write STATE_DIR/slurm.conf, start munged, slurmctld and slurmd, wait until
#           the node is idle, print `export SLURM_CONF=...`. A second start on a
#           running STATE_DIR only prints the export line again.
#   stop    stop the daemons this script started in STATE_DIR (by their pid files),
#           and nothing else. Safe to run when nothing is running.
#   status  print what runs; exit 0 when all three daemons are up, 3 otherwise.
#
# Must run as root (slurmd and SlurmUser=root). Tested with Debian 12's Slurm 22.05
# and munge 0.5.15 (packages slurmctld slurmd slurm-client munge).
#
# Environment knobs: DS_SLURM_CPUS (default: nproc; may exceed it: the node then
# shares its cores among more one-CPU tasks), DS_SLURM_CTLD_PORT (6817),
# DS_SLURM_D_PORT (6818), DS_SLURM_MEM_MARGIN_MB (2048), DS_MUNGE_KEY
# (/etc/munge/munge.key).
set -euo pipefail

cmd=${1:-}
STATE_DIR=${2:-/tmp/deepshard-slurm}
case "$cmd" in start|stop|status) ;; *)
  echo "usage: $0 start|stop|status [STATE_DIR]" >&2; exit 2 ;;
esac
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
CONF=$STATE_DIR/slurm.conf
MUNGE_DIR=$STATE_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
MUNGE_KEY=${DS_MUNGE_KEY:-/etc/munge/munge.key}
CTLD_PORT=${DS_SLURM_CTLD_PORT:-6817}
D_PORT=${DS_SLURM_D_PORT:-6818}

log() { echo "[local_slurm] $*" >&2; }
die() { log "error: $*"; exit 1; }

# pid from a pid file, if that process is alive.
alive_pid() {
  local f=$1 pid
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

# stop_pidfiles NAME FILE [NAME FILE ...]: SIGTERM to each live process named by a
# pid file, all at once; waits up to 10 s for them, then SIGKILL. Removes the files.
stop_pidfiles() {
  local names=() pids=() files=() pid i k
  while [ $# -ge 2 ]; do
    files+=("$2")
    if pid=$(alive_pid "$2"); then
      names+=("$1"); pids+=("$pid"); kill -TERM "$pid" 2>/dev/null || true
    fi
    shift 2
  done
  for k in "${!pids[@]}"; do
    for i in $(seq 100); do kill -0 "${pids[$k]}" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "${pids[$k]}" 2>/dev/null; then
      log "${names[$k]} (${pids[$k]}) ignored SIGTERM; killing"
      kill -KILL "${pids[$k]}" 2>/dev/null || true
    fi
    log "stopped ${names[$k]} (${pids[$k]})"
  done
  rm -f "${files[@]}"
}

status() {
  local rc=0 n pid
  for n in munged slurmctld slurmd; do
    if pid=$(alive_pid "$STATE_DIR/$n.pid"); then echo "$n: running (pid $pid)"
    else echo "$n: stopped"; rc=3; fi
  done
  if [ $rc -eq 0 ]; then
    SLURM_CONF=$CONF sinfo -h -o "node %n: %T (%c cpus, %m MB)" 2>/dev/null || true
  fi
  return $rc
}

write_conf() {
  local host cpus mem_mb margin
  host=$(hostname -s 2>/dev/null || hostname)
  cpus=${DS_SLURM_CPUS:-$(nproc)}
  margin=${DS_SLURM_MEM_MARGIN_MB:-2048}
  mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - margin ))
  [ "$mem_mb" -gt 256 ] || mem_mb=256
  mkdir -p "$STATE_DIR/ctld" "$STATE_DIR/d" "$STATE_DIR/log"
  cat >"$CONF" <<EOF
# Written by cluster/local_slurm.sh: a one-machine Slurm for tests.
ClusterName=deepshard-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$D_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Trust CPUs= below even when it exceeds the cores (DS_SLURM_CPUS), so that tests can
# place PP*EP tasks of one CPU each on a small machine; the cores are then shared.
SlurmdParameters=config_overrides
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if alive_pid "$STATE_DIR/munged.pid" >/dev/null; then return 0; fi
  if [ ! -s "$MUNGE_KEY" ]; then
    log "creating munge key $MUNGE_KEY"
    mkdir -p "$(dirname "$MUNGE_KEY")"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$MUNGE_KEY"
    else
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
    chown munge:munge "$MUNGE_KEY"; chmod 0400 "$MUNGE_KEY"
  fi
  # munged (run as user munge) must reach its private socket directory.
  chmod 0755 "$STATE_DIR"
  mkdir -p "$MUNGE_DIR"; chown munge:munge "$MUNGE_DIR"; chmod 0755 "$MUNGE_DIR"
  runuser -u munge -- test -x "$MUNGE_DIR" \
    || die "user munge cannot reach $MUNGE_DIR: make every directory above it searchable (chmod o+x), or pick another STATE_DIR"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" \
    || die "munged failed to start; see $MUNGE_DIR/munged.log"
  cp "$MUNGE_DIR/munged.pid" "$STATE_DIR/munged.pid"
  # munged detaches; root must also be able to reach the socket (it can).
  local i
  for i in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
  munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null \
    || die "munge round trip failed on $MUNGE_SOCKET"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (slurmd and SlurmUser=root)"
  local b
  for b in munged slurmctld slurmd sinfo scontrol; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] \
      || die "$b not installed (apt-get install --no-install-recommends slurmctld slurmd slurm-client munge)"
  done
  if status >/dev/null 2>&1; then
    log "already running in $STATE_DIR"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  # Partly up (a daemon died): restart the Slurm daemons from a clean slate.
  stop_pidfiles slurmd "$STATE_DIR/slurmd.pid" slurmctld "$STATE_DIR/slurmctld.pid"
  write_conf
  start_munge
  export SLURM_CONF=$CONF
  /usr/sbin/slurmctld -f "$CONF" || die "slurmctld failed; see $STATE_DIR/log/slurmctld.log"
  /usr/sbin/slurmd -f "$CONF" || die "slurmd failed; see $STATE_DIR/log/slurmd.log"
  local i state=""
  for i in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
    case "$state" in idle*|mixed*|allocated*) break ;; esac
    sleep 0.2
  done
  case "$state" in idle*|mixed*|allocated*) ;; *)
    die "node not idle after 30 s (state '$state'); see $STATE_DIR/log/" ;;
  esac
  log "up in $STATE_DIR (node $state)"
  echo "export SLURM_CONF=$CONF"
}

stop() {
  # Cancel this cluster's jobs while the daemons still run, so that no slurmstepd
  # or job process outlives them (up to 15 s).
  if alive_pid "$STATE_DIR/slurmctld.pid" >/dev/null && [ -f "$CONF" ]; then
    local jobs i
    jobs=$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
      for i in $(seq 150); do
        [ -z "$(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  # The Slurm daemons together, then munged (they authenticate until they exit).
  stop_pidfiles slurmd "$STATE_DIR/slurmd.pid" slurmctld "$STATE_DIR/slurmctld.pid"
  stop_pidfiles munged "$STATE_DIR/munged.pid"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
esac
