#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, for tests and CI (Debian's slurm-wlm packages).
#
#   slurm/cluster.sh up       # install the packages if missing, start munged, slurmctld, slurmd n1 and n2
#   eval "$(slurm/cluster.sh env)"   # SLURM_CONF (and the cluster's marker) for sbatch/squeue/scontrol
#   sbatch -N2 slurm/train_multinode.sbatch configs/vae_mnist.yaml train.max_steps=100
#   slurm/cluster.sh status   # daemons and nodes
#   slurm/cluster.sh down     # cancel jobs, stop every daemon, leave nothing running, remove the folder
#
# Everything (slurm.conf, munge key and socket, spool, state, logs, pid files) lives in one folder,
# $GEN_DIST_SLURM_DIR (default /tmp/gen_dist_slurm); the machine's own /etc/slurm and munged are not
# touched. The two nodes n1 and n2 are emulated (two slurmd processes on 127.0.0.1; Debian's build has
# MULTIPLE_SLURMD), so a 2-node job really goes through srun on two "hosts". Ports: slurmctld
# $GEN_DIST_SLURM_CTLD_PORT (default 16817), slurmd $GEN_DIST_SLURM_NODE_PORTS (default 17001-17002).
# Needs root (slurmd runs jobs as the submitting user). Settings follow the field notes: linuxproc
# process tracking, no cgroups, fast scheduling and a 10 s credential lifetime so requeued jobs restart
# in seconds. Partition `debug` (the default) can be preempted by jobs in partition `urgent`: Slurm
# sends SIGTERM to the preempted job's steps, cancels it 15 s later (GraceTime) and leaves the requeue
# to the job, as a site with PreemptMode=CANCEL does.
set -euo pipefail

STATE="${GEN_DIST_SLURM_DIR:-/tmp/gen_dist_slurm}"
CONF="$STATE/slurm.conf"
MUNGE_DIR="$STATE/munge"
SOCKET="$MUNGE_DIR/munge.socket"
NODES=(n1 n2)
CTLD_PORT="${GEN_DIST_SLURM_CTLD_PORT:-16817}"
NODE_PORTS="${GEN_DIST_SLURM_NODE_PORTS:-17001-17002}"
PACKAGES=(slurmctld slurmd slurm-client munge)
# every daemon started here carries this in its environment (slurmstepd and job processes inherit it),
# so `down` can find what is left of this cluster, by process id, and nothing else
MARKER="GEN_DIST_SLURM_CLUSTER=$STATE"

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 2; }

export SLURM_CONF="$CONF"

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  [ "${#missing[@]}" -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is not available: install ${PACKAGES[*]}"
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_config() {
  local host cpus
  host="$(hostname -s)"
  cpus="$(getconf _NPROCESSORS_ONLN)"  # not nproc: it follows OMP_NUM_THREADS
  [ "$cpus" -ge 2 ] || cpus=2  # emulated nodes; SlurmdParameters=config_overrides lets a node claim them
  cat >"$CONF" <<EOF
# written by slurm/cluster.sh: a two-node test cluster on one machine
ClusterName=gendist
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
JobRequeue=1
ReturnToService=2
MailProg=/bin/true
KillWait=10
MinJobAge=600
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
SlurmdParameters=config_overrides
NodeName=n[1-2] NodeHostname=localhost NodeAddr=127.0.0.1 Port=$NODE_PORTS CPUs=$cpus State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=1 PreemptMode=CANCEL GraceTime=15
PartitionName=urgent Nodes=n[1-2] MaxTime=INFINITE State=UP OverSubscribe=NO PriorityTier=10 PreemptMode=OFF
EOF
}

start_munge() {
  mkdir -p "$MUNGE_DIR"
  chmod 755 "$STATE" "$MUNGE_DIR"  # munged wants the socket's folders searchable by all
  if [ ! -f "$MUNGE_DIR/munge.key" ]; then
    dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    chmod 400 "$MUNGE_DIR/munge.key"
  fi
  env "$MARKER" munged --socket="$SOCKET" --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_DIR/munged.pid" \
    --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
}

nodes_idle() {
  local states
  states="$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)" || return 1
  [ "$(grep -c ' idle$' <<<"$states")" -eq "${#NODES[@]}" ]
}

up() {
  [ "$(id -u)" -eq 0 ] || die "needs root (slurmd runs jobs as their owner)"
  install_packages
  if pid_alive "$STATE/run/slurmctld.pid" && scontrol ping >/dev/null 2>&1; then
    log "already up ($STATE)"
    return 0
  fi
  mkdir -p "$STATE"/{ctld,run,log} "${NODES[@]/#/$STATE/spool/}"
  write_config
  start_munge
  env "$MARKER" slurmctld -f "$CONF"
  for node in "${NODES[@]}"; do
    env "$MARKER" slurmd -f "$CONF" -N "$node"
  done
  local deadline=$((SECONDS + 60))
  until nodes_idle; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      sinfo -N >&2 || true
      tail -n 20 "$STATE"/log/*.log >&2 || true
      die "the nodes did not come up within 60 s (logs above)"
    fi
    sleep 0.5
  done
  log "up: nodes ${NODES[*]} idle; use: export SLURM_CONF=$CONF"
}

# processes whose environment carries this cluster's marker (daemons, slurmstepd, jobs), but not this
# script nor its ancestors (the caller may have the marker too)
cluster_pids() {
  local keep=" " pid=$$ p
  while [ -n "$pid" ] && [ "$pid" -gt 1 ]; do
    keep+="$pid "
    pid="$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null || true)"
  done
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    case "$keep" in *" $pid "*) continue ;; esac
    if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$MARKER"; then
      echo "$pid"
    fi
  done
}

wait_gone() {  # wait_gone SECONDS PIDFILE...: until none of their processes is alive
  local deadline=$((SECONDS + $1)) f alive
  shift
  while :; do
    alive=0
    for f in "$@"; do pid_alive "$f" && alive=1; done
    [ "$alive" -eq 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

down() {
  [ -d "$STATE" ] || { log "not up ($STATE does not exist)"; return 0; }
  local pidfiles=("$STATE/run/slurmctld.pid")
  for node in "${NODES[@]}"; do pidfiles+=("$STATE/run/slurmd-$node.pid"); done
  if pid_alive "$STATE/run/slurmctld.pid"; then
    squeue -h -o %A 2>/dev/null | xargs -r scancel 2>/dev/null || true  # TERM, then KILL after KillWait
    local deadline=$((SECONDS + 30))
    while [ -n "$(squeue -h -o %A 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.5; done
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  wait_gone 15 "${pidfiles[@]}" || true
  for f in "${pidfiles[@]}"; do
    if pid_alive "$f"; then kill -KILL "$(cat "$f")" 2>/dev/null || true; fi
  done
  if pid_alive "$MUNGE_DIR/munged.pid"; then
    munged --stop --socket="$SOCKET" >/dev/null 2>&1 || kill "$(cat "$MUNGE_DIR/munged.pid")" 2>/dev/null || true
  fi
  wait_gone 5 "$MUNGE_DIR/munged.pid" || kill -KILL "$(cat "$MUNGE_DIR/munged.pid")" 2>/dev/null || true
  local left pid
  left="$(cluster_pids)"
  if [ -n "$left" ]; then
    log "killing what is left of the cluster: $(echo "$left" | tr '\n' ' ')"
    for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  if [ "${GEN_DIST_SLURM_KEEP:-0}" = 1 ]; then
    log "down; kept $STATE"
  else
    rm -rf "$STATE"
    log "down"
  fi
}

status() {
  local rc=0 f
  for f in "$MUNGE_DIR/munged.pid" "$STATE/run/slurmctld.pid" "$STATE/run/slurmd-n1.pid" "$STATE/run/slurmd-n2.pid"; do
    if pid_alive "$f"; then echo "running  $(basename "$f" .pid) (pid $(cat "$f"))"; else echo "stopped  $(basename "$f" .pid)"; rc=1; fi
  done
  [ "$rc" -eq 0 ] && { sinfo -N; squeue; }
  return "$rc"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) printf 'export SLURM_CONF=%q\nexport %q\n' "$CONF" "$MARKER" ;;
  *) echo "usage: $0 up|down|status|env   (folder: \$GEN_DIST_SLURM_DIR, default /tmp/gen_dist_slurm)" >&2; exit 2 ;;
esac
