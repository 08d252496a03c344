#!/usr/bin/env bash
# Submit the VAE-GAN study to Slurm: a job array of slurm/ablate.sbatch with one task per model of the
# study, and the report job, which runs once every task succeeded (--dependency=afterok).
#
#   slurm/ablate_submit.sh configs/ablation_mnist.yaml [key=value ...]
#   SBATCH_ARGS="--gpus-per-node=4 --time=8:00:00" slurm/ablate_submit.sh configs/ablation_mnist.yaml
#
# SBATCH_ARGS are given to both submissions (the report job also gets --time=02:00:00 unless SBATCH_ARGS
# sets a time). Prints the two job ids. Run from the repository root (or set GEN_DIST_REPO); uses the
# repo's .venv (or GEN_DIST_VENV) to list the models. Exit status 2 on a bad study file or override.
set -euo pipefail

REPO="${GEN_DIST_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
cd "$REPO"
if [ "$#" -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
fi
[ "$1" = --config ] && shift
study="$1"
shift
python="${GEN_DIST_VENV:-$REPO/.venv}/bin/python"
[ -x "$python" ] || python="$(command -v python3)"

models="$("$python" launch/ablate.py --config "$study" --list "$@")" || exit 2
n="$(grep -c . <<<"$models")"
read -r -a extra <<<"${SBATCH_ARGS:-}"
report_time=(--time=02:00:00)
[[ " ${SBATCH_ARGS:-} " == *" --time"* || " ${SBATCH_ARGS:-} " == *" -t "* ]] && report_time=()

array="$(sbatch --parsable "${extra[@]}" --array="0-$((n - 1))" slurm/ablate.sbatch "$study" "$@")"
array="${array%%;*}"  # --parsable prints id[;cluster]
report="$(sbatch --parsable "${extra[@]}" "${report_time[@]}" --array=0 --dependency="afterok:$array" \
  slurm/ablate.sbatch --report "$study" "$@")"
report="${report%%;*}"
echo "ablate_submit.sh: array job $array trains $n models:"
while IFS= read -r line; do echo "  $line"; done <<<"$models"
echo "ablate_submit.sh: report job $report writes the report when they all succeed"
