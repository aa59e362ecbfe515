#!/usr/bin/env bash
# Run InternVL's stages on this machine: contrastive -> generative -> sft, one after the other.
#
#   launch/local.sh [options] [-- Hydra overrides for every stage]
#
# Each stage writes run_dir=<runs-root>/<stage> and starts from the previous stage's export
# (init_from=<runs-root>/<previous stage>/export). With --nproc 1 a stage is a plain Python process; with
# N > 1 it runs under torchrun (one machine, N processes; gloo on CPU, NCCL on GPUs). Stops at the first
# failing stage. SIGTERM/SIGUSR1 sent to this script reach the trainer, which saves a checkpoint and exits
# 75; this script then exits 75 too: run the same command again to resume (resume=auto is the default).
#
# Options:
#   --nproc N              processes per stage (default 1)
#   --runs-root DIR        default runs/pipeline
#   --stages LIST          subset of 1,2,3 (default 1,2,3), e.g. --stages 1 for stage 1 only
#   --init-from PATH       init_from= for the first stage run (e.g. when starting at stage 2)
#   --stage1|--stage2|--stage3 "OVERRIDES"   extra Hydra overrides for one stage (split on spaces)
# Environment: PYTHON (default `python`), TRAIN_ENTRY (default `-m internvl_train`; what Python runs).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=local.sh
# The stage chain shared with slurm/pipeline.sh: STAGE_NAMES, the shared options, die, usage, chain_run_stages.
# shellcheck source=launch/lib/chain.sh
source "$HERE/lib/chain.sh" || { echo "$PROG: cannot read $HERE/lib/chain.sh" >&2; exit 2; }
EXIT_PREEMPTED=75
PYTHON=${PYTHON:-python}
TRAIN_ENTRY=${TRAIN_ENTRY:--m internvl_train}

NPROC=1
RUNS_ROOT=runs/pipeline
while (( $# )); do
  case $1 in
    --nproc) NPROC=$2; shift 2 ;;
    *) chain_option "$@"; shift "$CHAIN_SHIFT" ;;
  esac
done
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive integer (got '$NPROC')"
chain_check_stages

CHILD="" SIGNALLED=0
forward() { SIGNALLED=1; [[ -n $CHILD ]] && kill -"$1" "$CHILD" 2>/dev/null; }
trap 'forward TERM' TERM
trap 'forward USR1' USR1

# Run one stage in the background (so the traps above fire while it trains) and return its exit code.
run_stage() {
  local rc again
  if (( NPROC == 1 )); then
    # shellcheck disable=SC2086  # TRAIN_ENTRY is deliberately split into words
    $PYTHON $TRAIN_ENTRY "$@" &
  else
    # torchrun forwards SIGUSR1 to its workers too, and grants them time to checkpoint before SIGKILL.
    # shellcheck disable=SC2086
    PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCHRUN_SHUTDOWN_TIMEOUT_S:-600} \
      $PYTHON -m torch.distributed.run --standalone --nproc_per_node="$NPROC" $TRAIN_ENTRY "$@" &
  fi
  CHILD=$!
  while :; do
    wait "$CHILD"; rc=$?
    (( rc > 128 )) || break
    kill -0 "$CHILD" 2>/dev/null && continue
    wait "$CHILD" 2>/dev/null; again=$?
    (( again != 127 )) && rc=$again
    break
  done
  CHILD=""
  return "$rc"
}

# One stage of the chain (chain_run_stages calls it with <k> <name> <run_dir> <overrides...>); a stage that
# fails ends the script.
local_stage() {
  local k=$1 name=$2 rc
  shift 3
  echo "local.sh: stage $k ($name) with $NPROC process(es): $*" >&2
  run_stage "$@"; rc=$?
  if (( rc != 0 )); then
    # A plain process passes the trainer's 75 through; torchrun reports a signalled run as a failure.
    if (( rc == EXIT_PREEMPTED )) || { (( NPROC > 1 )) && (( SIGNALLED )); }; then
      echo "local.sh: stage $name stopped with a checkpoint; run the same command again to resume" >&2
      exit "$EXIT_PREEMPTED"
    fi
    echo "local.sh: stage $name failed with exit code $rc" >&2
    exit "$rc"
  fi
}

chain_run_stages local_stage
