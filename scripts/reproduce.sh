#!/usr/bin/env bash
# Trains the reference model on both real sources and tunes its inference settings.
#   bash scripts/reproduce.sh DATA_DIR        (DATA_DIR holds medseg50/ and zenodo20/)
# Budget: at most 30 minutes on a 2-core CPU. The last line printed is the best checkpoint,
# which carries its tuned threshold and TTA setting: `covidseg.predict --ckpt` uses them.
set -euo pipefail
data=${1:?usage: bash scripts/reproduce.sh DATA_DIR}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
start=$(date +%s)
# Validation = fold 0 of a 5-fold patient-level split (checkpoint choice and threshold only).
python -m covidseg.fit --config configs/reference.yaml --data.root "[$data/medseg50, $data/zenodo20]" \
  --data.num_folds 5 --data.fold 0 --data.test_fraction 0 --test false --trainer.enable_progress_bar false >&2
run=$(ls -d runs/reference/version_* | sort -V | tail -1)
ckpt="$run/checkpoints/best.ckpt"
# Dice-best threshold on the validation patients, stored in the checkpoint.
python -m covidseg.evaluate --ckpt "$ckpt" --split val --threshold auto --output "$run/report_val" >&2
echo "reproduce: $(( ($(date +%s) - start) / 60 )) min; report in $run/report_val" >&2
echo "$ckpt"
