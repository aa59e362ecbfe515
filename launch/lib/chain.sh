# shellcheck shell=bash
# Stage chaining shared by launch/local.sh and launch/slurm/pipeline.sh. Sourced, not run: each script finds
# it next to itself (`source "$HERE/lib/chain.sh"`, HERE from BASH_SOURCE), so any cwd works. train.sbatch
# does not source it: sbatch runs a copy of that script from the slurmd spool dir, and it runs one stage.
#
# A chain runs InternVL's stages in order, stage k being STAGE_NAMES[k-1]. Stage k writes
# run_dir=<RUNS_ROOT>/<name> and the next selected stage starts from its export, <run_dir>/export: where the
# trainer writes it (internvl_train.engine.run_outputs.EXPORT_DIR, under the run_dir override). The first
# selected stage gets init_from=INIT_FROM when that is set.
#
# The sourcing script sets PROG (its name in messages) before sourcing and its RUNS_ROOT default after, then:
#   while (( $# )); do case $1 in <own options> ;; *) chain_option "$@"; shift "$CHAIN_SHIFT" ;; esac; done
#   chain_check_stages
#   chain_run_stages <callback>

STAGE_NAMES=(contrastive generative sft)
STAGE_EXPORT_DIR=export  # <run_dir>/export, as internvl_train.engine.run_outputs.EXPORT_DIR

# Set by the shared options (chain_option); RUNS_ROOT's default is the script's own.
STAGES=1,2,3
INIT_FROM=""
STAGE_OVERRIDES=("" "" "")
COMMON=()

die() { echo "$PROG: $*" >&2; exit 2; }
# The script's header comment (after the #! line) as its help.
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0" >&2; exit 2; }

# Parse the option at the front of "$@" when it is one the launchers share: --runs-root, --stages,
# --init-from, --stage1/2/3, -h/--help, and `--` (the rest are Hydra overrides for every stage, COMMON).
# Sets CHAIN_SHIFT to the number of words it took; anything else is an unknown option and ends the script.
chain_option() {
  CHAIN_SHIFT=2
  case $1 in
    --runs-root) RUNS_ROOT=$2 ;;
    --stages) STAGES=$2 ;;
    --init-from) INIT_FROM=$2 ;;
    --stage1|--stage2|--stage3) STAGE_OVERRIDES[${1#--stage}-1]=$2 ;;
    -h|--help) usage ;;
    --) COMMON=("${@:2}"); CHAIN_SHIFT=$# ;;
    *) die "unknown option '$1' (Hydra overrides go after --; see --help)" ;;
  esac
}

chain_check_stages() {
  [[ $STAGES =~ ^[123](,[123])*$ ]] || die "--stages must list stage numbers 1,2,3 (got '$STAGES')"
}

# Run the selected stages in order: `<callback> <k> <name> <run_dir> <overrides...>` for each, the overrides
# being stage=<name> run_dir=<run_dir> [init_from=<previous export or INIT_FROM>] COMMON... and the stage's
# --stage<k> words (split on spaces, so they come last and win). A callback that fails ends the chain with
# its status (under `set -e` it ends the script).
chain_run_stages() {
  local callback=$1 init_from=$INIT_FROM k name run_dir overrides rc
  for k in 1 2 3; do
    [[ ,$STAGES, == *,$k,* ]] || continue
    name=${STAGE_NAMES[k-1]}
    run_dir=$RUNS_ROOT/$name
    overrides=("stage=$name" "run_dir=$run_dir")
    [[ -n $init_from ]] && overrides+=("init_from=$init_from")
    # shellcheck disable=SC2206  # per-stage overrides are a space-separated list by design
    overrides+=("${COMMON[@]}" ${STAGE_OVERRIDES[k-1]})
    "$callback" "$k" "$name" "$run_dir" "${overrides[@]}"; rc=$?
    (( rc == 0 )) || return "$rc"
    init_from=$run_dir/$STAGE_EXPORT_DIR
  done
}
