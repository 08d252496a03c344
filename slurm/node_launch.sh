#!/usr/bin/env bash
# One node's share of a gen_dist Slurm job: `accelerate launch` of this node's processes, with the
# signals Slurm sends turned into a clean stop of the trainer processes. Called by the sbatch scripts
# (directly on one node, through `srun --ntasks-per-node=1` on many); not meant to be submitted.
#
#   slurm/node_launch.sh launch/train.py --config configs/x.yaml key=value ...
#
# Processes on this node: GEN_DIST_PROCS_PER_NODE if set, else the GPUs of the allocation on this node
# (SLURM_GPUS_ON_NODE, else the entries of CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`), else, on a
# node without GPUs, one CPU process per CPU of the task (SLURM_CPUS_PER_TASK, i.e. --cpus-per-task;
# 1 when unset) with ACCELERATE_USE_CPU=1 (gloo).
# Several nodes: GEN_DIST_NUM_MACHINES, GEN_DIST_MAIN_ADDR and GEN_DIST_MAIN_PORT (set by
# train_multinode.sbatch); this node's rank is SLURM_NODEID.
#
# Signals: the trainer processes handle SIGUSR1 and SIGTERM (stop together at a step boundary with a
# checkpoint and run.dir/PREEMPTED, exit 0). The launcher is started with USR1, USR2 and TERM ignored
# and without torchrun's own SIGTERM handler (PET_SIGNALS_TO_HANDLE), so a signal sent to every process
# of the step (Slurm's preemption, `scancel --signal=SIG JOB`, srun forwarding) reaches the trainers and
# leaves the launcher waiting for them. A signal sent to this script is forwarded to the trainers only
# (the launcher's children; the launcher would die of USR1): USR1 as USR1, TERM as TERM, and USR2 as
# TERM. train_multinode.sbatch relays a SIGTERM to all nodes as USR2 to the step, which every other
# process there ignores, so that W&B's service process (wandb-core, which exits on SIGTERM) keeps
# running while the trainers checkpoint.
set -uo pipefail

if [ "$#" -lt 1 ]; then
  echo "usage: $0 launch/train.py|launch/evaluate.py [args...]" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
script="$1"
shift

if [ -n "${GEN_DIST_VENV:-}" ]; then
  accelerate="$GEN_DIST_VENV/bin/accelerate"
elif [ -x "$REPO/.venv/bin/accelerate" ]; then
  accelerate="$REPO/.venv/bin/accelerate"
else
  accelerate="$(command -v accelerate || true)"
fi
if [ -z "$accelerate" ] || [ ! -x "$accelerate" ]; then
  echo "node_launch.sh: error: accelerate not found: make $REPO/.venv, or set GEN_DIST_VENV to the virtual environment" >&2
  exit 2
fi

count_gpus() {
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
    echo "$SLURM_GPUS_ON_NODE"
  elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "$CUDA_VISIBLE_DEVICES" != NoDevFiles ]; then
    tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .
  elif command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
  else
    echo 0
  fi
}

gpus="$(count_gpus)"
gpus="${gpus:-0}"
if [ "$gpus" -gt 0 ]; then
  per_node="${GEN_DIST_PROCS_PER_NODE:-$gpus}"
else
  export ACCELERATE_USE_CPU=1  # with --multi_gpu: N gloo processes (gen_dist refuses a mismatch)
  per_node="${GEN_DIST_PROCS_PER_NODE:-${SLURM_CPUS_PER_TASK:-1}}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # N processes x all-cores BLAS threads oversubscribe

machines="${GEN_DIST_NUM_MACHINES:-1}"
rank="${SLURM_NODEID:-0}"
total=$((per_node * machines))
launch=("$accelerate" launch --num_processes "$total" --num_machines "$machines")
[ "$total" -gt 1 ] && launch+=(--multi_gpu)  # accelerate refuses --multi_gpu with one process
if [ "$machines" -gt 1 ]; then
  launch+=(--machine_rank "$rank" --main_process_ip "${GEN_DIST_MAIN_ADDR:?}" --main_process_port "${GEN_DIST_MAIN_PORT:?}")
else
  launch+=(--main_process_port "${GEN_DIST_MAIN_PORT:-0}")  # 0: a free port (another job may share the node)
fi
echo "node_launch.sh: node ${SLURMD_NODENAME:-$(hostname)} rank $rank of $machines: $per_node processes" \
  "($([ "$gpus" -gt 0 ] && echo "$gpus GPUs" || echo "CPU, no GPU")), $script $*"

# USR1/USR2/TERM ignored in the launcher (the trainer installs its own handlers for USR1 and TERM, and
# keeps USR2 ignored); torchrun's --signals_to_handle (PET_SIGNALS_TO_HANDLE) without SIGTERM keeps it from
# installing its own SIGTERM handler, which would restart the trainers' shutdown with a 30 s deadline.
(
  trap '' USR1 USR2 TERM
  export PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT
  exec "${launch[@]}" "$script" "$@"
) &
launcher=$!

forward() {  # the trainer processes are the launcher's children
  echo "node_launch.sh: SIG$1 -> trainer processes on ${SLURMD_NODENAME:-$(hostname)}"
  pkill "-$1" -P "$launcher" || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward TERM' USR2  # train_multinode.sbatch's relay of a SIGTERM

while kill -0 "$launcher" 2>/dev/null; do
  wait "$launcher"  # returns early when a trapped signal arrives; then keep waiting
done
wait "$launcher"
