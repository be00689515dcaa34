#!/usr/bin/env bash
# K-fold training as a Slurm array job, one fold per task, then a merge job that waits for every fold.
#
#   docs/examples/slurm_folds.sh DATA RUN FOLDS [fetalhead train flags...]   # on the login node: submits both
#
# Array task I runs `fetalhead train DATA --out RUN/fold_I --folds FOLDS --fold I FLAGS`. The merge job runs
# `fetalhead train merge RUN/fold_* --out RUN/merged`, then `fetalhead train DATA --out RUN/merged FLAGS`, which
# finds every fold done and writes the bundle RUN/merged/model.fhb (training a final model first only with
# --bundle-heads final). RUN must be on a filesystem every node sees. FETALHEAD names the command when it is
# not on PATH (e.g. a venv's bin/fetalhead).
# Adapt the #SBATCH lines (partition, account, GPUs) to your cluster; they apply to both jobs.
#SBATCH --job-name=fetalhead-folds
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 DATA RUN FOLDS [fetalhead train flags...]" >&2
    exit 2
fi
data=$1 run=$2 folds=$3
shift 3
fetalhead=${FETALHEAD:-fetalhead}

if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    fold=$SLURM_ARRAY_TASK_ID
    exec "$fetalhead" train "$data" --out "$run/fold_$fold" --folds "$folds" --fold "$fold" --no-progress "$@"
elif [ "${FETALHEAD_MERGE:-}" = 1 ]; then
    folders=()
    for ((i = 0; i < folds; i++)); do folders+=("$run/fold_$i"); done
    "$fetalhead" train merge "${folders[@]}" --out "$run/merged"
    exec "$fetalhead" train "$data" --out "$run/merged" --folds "$folds" --no-progress "$@"
else
    script=$(realpath "$0")
    array=$(sbatch --parsable --array="0-$((folds - 1))" "$script" "$data" "$run" "$folds" "$@")
    merge=$(sbatch --parsable --dependency="afterok:${array%%;*}" --export=ALL,FETALHEAD_MERGE=1 \
        "$script" "$data" "$run" "$folds" "$@")
    echo "submitted folds as array job $array, merge and bundle as job $merge (runs after every fold)"
fi
