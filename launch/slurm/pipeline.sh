#!/usr/bin/env bash
# Submit InternVL's three stages as dependent SLURM jobs: contrastive -> generative -> sft.
#
#   launch/slurm/pipeline.sh [options] [-- Hydra overrides for every stage]
#
# Each stage is launch/slurm/train.sbatch with run_dir=<runs-root>/<stage>; stage k+1 waits for stage k
# (--dependency=afterok, cancelled if stage k fails) and starts from its export
# (init_from=<runs-root>/<previous stage>/export). A requeued (preempted) stage keeps its job id, so the
# chain simply waits for it. Prints one line per stage on stdout: `<stage> <job id> <run_dir>`.
#
# Options (sbatch options apply to every stage):
#   --runs-root DIR        default runs/pipeline-<UTC time>; SLURM output files go to DIR/logs/
#   --stages LIST          subset of 1,2,3 (default 1,2,3)
#   --init-from PATH       init_from= for the first submitted stage (e.g. when starting at stage 2)
#   --stage1|--stage2|--stage3 "OVERRIDES"   extra Hydra overrides for one stage (split on spaces)
#   --partition P  --nodes N  --ntasks-per-node T  --gpus-per-node G  --time T  --account A
#   --sbatch-arg ARG       any other sbatch option, repeatable (e.g. --sbatch-arg=--qos=high)
#   --dry-run              print the sbatch commands instead of submitting
# Environment: LAUNCHER, PYTHON, TRAIN_ENTRY, ... are exported to the jobs (see train.sbatch).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=pipeline.sh
# The stage chain shared with launch/local.sh: STAGE_NAMES, the shared options, die, usage, chain_run_stages.
# shellcheck source=launch/lib/chain.sh
source "$HERE/../lib/chain.sh" || { echo "$PROG: cannot read $HERE/../lib/chain.sh" >&2; exit 2; }

RUNS_ROOT="runs/pipeline-$(date -u +%Y%m%d-%H%M%S)"
DRY_RUN=0
SBATCH_ARGS=()

while (( $# )); do
  case $1 in
    --partition|--nodes|--ntasks-per-node|--gpus-per-node|--time|--account)
      SBATCH_ARGS+=("$1=$2"); shift 2 ;;
    --sbatch-arg=*) SBATCH_ARGS+=("${1#--sbatch-arg=}"); shift ;;
    --sbatch-arg) SBATCH_ARGS+=("$2"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) chain_option "$@"; shift "$CHAIN_SHIFT" ;;
  esac
done
chain_check_stages
(( DRY_RUN )) || command -v sbatch >/dev/null || die "sbatch not found: run on a SLURM login node (or see launch/slurm/cluster.sh)"

# One stage of the chain (chain_run_stages calls it with <k> <name> <run_dir> <overrides...>): submit it,
# after the stage submitted before it (afterok), and print `<stage> <job id> <run_dir>`.
submit_stage() {
  local k=$1 name=$2 run_dir=$3 cmd job
  shift 3
  cmd=(sbatch --parsable --job-name="ivl-$name" --output="$RUNS_ROOT/logs/%x-%j.out" "${SBATCH_ARGS[@]}")
  [[ -n $previous_job ]] && cmd+=(--dependency="afterok:$previous_job" --kill-on-invalid-dep=yes)
  cmd+=("$HERE/train.sbatch" "$@")
  if (( DRY_RUN )); then
    printf '%q ' "${cmd[@]}"; echo
    job=DRYRUN$k
  else
    job=$("${cmd[@]}")
    job=${job%%;*}
  fi
  echo "$name $job $run_dir"
  previous_job=$job
}

RUNS_ROOT=$(realpath -m "$RUNS_ROOT")
mkdir -p "$RUNS_ROOT/logs"
previous_job=""
chain_run_stages submit_stage
