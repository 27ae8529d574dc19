#!/usr/bin/env bash
# Patient-level K-fold cross-validation on the two real sources.
#   bash scripts/crossval.sh NAME DATA_DIR K "FOLDS" [extra fit flags ...]
# e.g. bash scripts/crossval.sh base ../shared/data 5 "0 1 2" --trainer.max_epochs 8
# Trains each listed fold with configs/reference.yaml plus the flags, scores its LAST checkpoint
# (no selection on the validation fold) on the fold's held-out patients at threshold 0.5, with and
# without flip TTA, and prints per-source mean per-image Dice over the folds trained by THIS call
# (a re-run of a fold makes a new version_N and only that one is counted). Any failure stops it.
set -euo pipefail
name=$1; data=$2; k=$3; folds=$4; shift 4
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
runs=()
for f in $folds; do
  start=$(date +%s)
  out=$(python -m covidseg fit --config configs/reference.yaml --data.root "[$data/medseg50, $data/zenodo20]" \
    --data.num_folds "$k" --data.fold "$f" --data.test_fraction 0 --test false \
    --trainer.enable_progress_bar false --trainer.logger.init_args.name "cv-$name-fold$f" "$@" | tee /dev/stderr)
  run=$(sed -n 's/^run directory: *//p' <<<"$out")
  [[ -n "$run" ]] || { echo "crossval: fold $f printed no run directory" >&2; exit 1; }
  echo $(( $(date +%s) - start )) > "$run/train_seconds.txt"
  python -m covidseg evaluate --ckpt "$run/checkpoints/last.ckpt" --split val --output "$run/cv_eval" --threshold 0.5 --tta false | tail -3
  python -m covidseg evaluate --ckpt "$run/checkpoints/last.ckpt" --split val --output "$run/cv_eval_tta" --threshold 0.5 --tta true | tail -3
  runs+=("$run")
done
python scripts/cv_summary.py "${runs[@]}"
