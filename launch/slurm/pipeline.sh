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
STAGE_NAMES=(contrastive generative sft)

die() { echo "pipeline.sh: $*" >&2; exit 2; }
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2; }

RUNS_ROOT="runs/pipeline-$(date -u +%Y%m%d-%H%M%S)"
STAGES=1,2,3
INIT_FROM=""
DRY_RUN=0
STAGE_OVERRIDES=("" "" "")
SBATCH_ARGS=()
COMMON=()

while (( $# )); do
  case $1 in
    --runs-root) RUNS_ROOT=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --init-from) INIT_FROM=$2; shift 2 ;;
    --stage1|--stage2|--stage3) STAGE_OVERRIDES[${1#--stage}-1]=$2; shift 2 ;;
    --partition|--nodes|--ntasks-per-node|--gpus-per-node|--time|--account)
      SBATCH_ARGS+=("$1=$2"); shift 2 ;;
    --sbatch-arg=*) SBATCH_ARGS+=("${1#--sbatch-arg=}"); shift ;;
    --sbatch-arg) SBATCH_ARGS+=("$2"); shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage ;;
    --) shift; COMMON=("$@"); break ;;
    *) die "unknown option '$1' (Hydra overrides go after --; see --help)" ;;
  esac
done
[[ $STAGES =~ ^[123](,[123])*$ ]] || die "--stages must list stage numbers 1,2,3 (got '$STAGES')"
(( DRY_RUN )) || command -v sbatch >/dev/null || die "sbatch not found: run on a SLURM login node (or see launch/slurm/cluster.sh)"

RUNS_ROOT=$(realpath -m "$RUNS_ROOT")
mkdir -p "$RUNS_ROOT/logs"
previous_job=""
init_from=$INIT_FROM
for k in 1 2 3; do
  [[ ,$STAGES, == *,$k,* ]] || continue
  name=${STAGE_NAMES[k-1]}
  run_dir=$RUNS_ROOT/$name
  overrides=("stage=$name" "run_dir=$run_dir")
  [[ -n $init_from ]] && overrides+=("init_from=$init_from")
  # shellcheck disable=SC2206  # per-stage overrides are a space-separated list by design
  overrides+=("${COMMON[@]}" ${STAGE_OVERRIDES[k-1]})
  cmd=(sbatch --parsable --job-name="ivl-$name" --output="$RUNS_ROOT/logs/%x-%j.out" "${SBATCH_ARGS[@]}")
  [[ -n $previous_job ]] && cmd+=(--dependency="afterok:$previous_job" --kill-on-invalid-dep=yes)
  cmd+=("$HERE/train.sbatch" "${overrides[@]}")
  if (( DRY_RUN )); then
    printf '%q ' "${cmd[@]}"; echo
    job=DRYRUN$k
  else
    job=$("${cmd[@]}")
    job=${job%%;*}
  fi
  echo "$name $job $run_dir"
  previous_job=$job
  init_from=$run_dir/export
done
