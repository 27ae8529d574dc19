#!/usr/bin/env bash
# Every GPU path of covidseg in <= 5 minutes on one GPU; writes $OUT/gpu_smoke.json (see scripts/gpu_smoke.py).
#   bash scripts/gpu_smoke.sh            # on a GPU machine
#   bash scripts/gpu_smoke.sh --cpu      # the same steps on the CPU, small (run by the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_smoke.py "$@"
