#!/usr/bin/env bash
# Runs a 2-process CPU DDP fit (the command of tests/test_ddp.py) N times, alternately with and
# without the progress bar, each in a fresh run folder, to catch an intermittent hang. A run that
# outlives LIMIT seconds gets `kill -USR1` (every process prints its threads' stacks to
# OUT/err.K, covidseg.model.ddp) and is then killed.
#   bash scripts/ddp_repeat.sh [N=20] [OUT=/tmp/ddp-repeat] [LIMIT=90]
set -uo pipefail
N=${1:-20}; OUT=${2:-/tmp/ddp-repeat}; LIMIT=${3:-90}
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PL_DISABLE_FORK=1
mkdir -p "$OUT"
python -c "from covidseg.data.synthetic import generate; generate('$OUT/data', cases=9, slices=3, size=64)" > /dev/null
hung=0
for i in $(seq 1 "$N"); do
  bar=$([[ $((i % 2)) == 1 ]] && echo true || echo false)
  rm -rf "$OUT/runs"
  setsid python -m covidseg.fit --data.root "$OUT/data" --data.val_fraction 0.1 --data.batch_size 1 --trainer.accelerator cpu \
    --trainer.devices 2 --trainer.strategy ddp --trainer.max_epochs 2 --trainer.logger.init_args.save_dir "$OUT/runs" \
    --model.encoder_depth 3 --model.decoder_channels "[32, 16, 8]" --data.image_size 64 --trainer.enable_progress_bar "$bar" \
    > "$OUT/out.$i" 2> "$OUT/err.$i" &
  pid=$!
  for _ in $(seq 1 "$LIMIT"); do sleep 1; kill -0 "$pid" 2> /dev/null || break; done
  if kill -0 "$pid" 2> /dev/null; then
    kill -USR1 -- -"$pid"; sleep 3; kill -9 -- -"$pid"; wait "$pid" 2> /dev/null
    hung=$((hung + 1)); echo "run $i (progress bar $bar): HUNG after ${LIMIT} s; stacks in $OUT/err.$i"
  else
    wait "$pid"; echo "run $i (progress bar $bar): exit $?"
  fi
done
echo "$hung of $N runs hung"
