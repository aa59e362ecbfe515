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

STAGE_NAMES=(contrastive generative sft)
EXIT_PREEMPTED=75
PYTHON=${PYTHON:-python}
TRAIN_ENTRY=${TRAIN_ENTRY:--m internvl_train}

die() { echo "local.sh: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2; }

NPROC=1
RUNS_ROOT=runs/pipeline
STAGES=1,2,3
INIT_FROM=""
STAGE_OVERRIDES=("" "" "")
COMMON=()
while (( $# )); do
  case $1 in
    --nproc) NPROC=$2; shift 2 ;;
    --runs-root) RUNS_ROOT=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --init-from) INIT_FROM=$2; shift 2 ;;
    --stage1|--stage2|--stage3) STAGE_OVERRIDES[${1#--stage}-1]=$2; shift 2 ;;
    -h|--help) usage ;;
    --) shift; COMMON=("$@"); break ;;
    *) die "unknown option '$1' (Hydra overrides go after --; see --help)" ;;
  esac
done
[[ $NPROC =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive integer (got '$NPROC')"
[[ $STAGES =~ ^[123](,[123])*$ ]] || die "--stages must list stage numbers 1,2,3 (got '$STAGES')"

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

init_from=$INIT_FROM
for k in 1 2 3; do
  [[ ,$STAGES, == *,$k,* ]] || continue
  name=${STAGE_NAMES[k-1]}
  run_dir=$RUNS_ROOT/$name
  overrides=("stage=$name" "run_dir=$run_dir")
  [[ -n $init_from ]] && overrides+=("init_from=$init_from")
  # shellcheck disable=SC2206  # per-stage overrides are a space-separated list by design
  overrides+=("${COMMON[@]}" ${STAGE_OVERRIDES[k-1]})
  echo "local.sh: stage $k ($name) with $NPROC process(es): ${overrides[*]}" >&2
  run_stage "${overrides[@]}"; rc=$?
  if (( rc != 0 )); then
    # A plain process passes the trainer's 75 through; torchrun reports a signalled run as a failure.
    if (( rc == EXIT_PREEMPTED )) || { (( NPROC > 1 )) && (( SIGNALLED )); }; then
      echo "local.sh: stage $name stopped with a checkpoint; run the same command again to resume" >&2
      exit "$EXIT_PREEMPTED"
    fi
    echo "local.sh: stage $name failed with exit code $rc" >&2
    exit "$rc"
  fi
  init_from=$run_dir/export
done
