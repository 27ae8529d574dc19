#!/usr/bin/env bash
# Patient-level K-fold cross-validation on the two real sources, completed in pieces.
#   bash scripts/crossval.sh NAME DATA_DIR K "FOLDS" [extra fit flags ...]
# e.g. bash scripts/crossval.sh reference ../shared/data 5 "0 1"
#      bash scripts/crossval.sh p256-lungs ../shared/data 5 "0 1 2 3 4" --data.image_size 256 ...
# Each listed fold whose result file RESULTS/NAME/fold-K.json does not exist yet is trained with
# configs/reference.yaml plus the flags (validation off: nothing selects a checkpoint), then its
# LAST checkpoint (the final epoch) is scored on the fold's held-out patients by
# scripts/cv_fold.py, which writes that small file; folds whose file exists are skipped, so a
# comparison can run a few folds at a time and be finished later. RESULTS is
# $CV_RESULTS, else docs/experiments of this checkout. Commit the files; checkpoints and
# TensorBoard runs stay in runs/ (ignored by git). Any failure stops it.
# Then: python scripts/cv_summary.py NAME [REFERENCE_NAME]
set -euo pipefail
name=$1; data=$2; k=$3; folds=$4; shift 4
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
results=${CV_RESULTS:-docs/experiments}/$name
mkdir -p "$results"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]] || commit="$commit+dirty"
for f in $folds; do
  result=$results/fold-$f.json
  if [[ -f "$result" ]]; then echo "crossval: $result exists, fold $f skipped"; continue; fi
  start=$(date +%s)
  out=$(python -m covidseg fit --config configs/reference.yaml --data.root "[$data/medseg50, $data/zenodo20]" \
    --data.num_folds "$k" --data.fold "$f" --data.test_fraction 0 --test false --trainer.limit_val_batches 0 \
    --trainer.enable_progress_bar false --trainer.logger.init_args.name "cv-$name-fold$f" "$@" | tee /dev/stderr)
  run=$(sed -n 's/^run directory: *//p' <<<"$out")
  [[ -n "$run" ]] || { echo "crossval: fold $f printed no run directory" >&2; exit 1; }
  python scripts/cv_fold.py "$run" --name "$name" --fold "$f" --num_folds "$k" --commit "$commit" \
    --train_seconds $(( $(date +%s) - start )) --command "bash scripts/crossval.sh $name DATA_DIR $k $f $(printf '%q ' "$@")" --output "$result"
done
