#!/usr/bin/env bash
# Trains the reference model on both real sources and tunes its inference settings.
#   bash scripts/reproduce.sh DATA_DIR        (DATA_DIR holds medseg50/ and zenodo20/)
# Budget: at most 30 minutes on a 2-core CPU (training stops at 25 minutes at the latest).
# The last line printed is the best checkpoint; it carries its tuned threshold and TTA
# setting, so `python -m covidseg.predict --ckpt` and `evaluate` use them by default.
set -euo pipefail
data=${1:?usage: bash scripts/reproduce.sh DATA_DIR}
data=$(cd "$data" && pwd)
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
start=$(date +%s)
# Validation = fold 0 of a 5-fold patient-level split, stratified by source; it is used for
# the checkpoint choice, the threshold and the TTA decision, never for training.
python -m covidseg.fit --config configs/reference.yaml --data.root "[$data/medseg50, $data/zenodo20]" \
  --data.num_folds 5 --data.fold 0 --data.test_fraction 0 --test false --trainer.enable_progress_bar false >&2
run=$(ls -d runs/reference/version_* | sort -V | tail -1)
ckpt="$run/checkpoints/best.ckpt"
python -m covidseg.evaluate --ckpt "$ckpt" --split val --threshold auto --no-tta --output "$run/val_plain" >&2
python -m covidseg.evaluate --ckpt "$ckpt" --split val --tta --output "$run/val_tta" >&2
python scripts/choose_tta.py "$ckpt" "$run/val_plain" "$run/val_tta" >&2
echo "reproduce: $(( ($(date +%s) - start) / 60 )) min; validation reports in $run/val_plain and $run/val_tta" >&2
echo "$ckpt"
