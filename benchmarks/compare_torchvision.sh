#!/usr/bin/env bash
# jaxdet vs torchvision RetinaNet-R50-FPN train step, back to back, on this machine.
#
#   bash benchmarks/compare_torchvision.sh [TORCH_PYTHON] [SIZE] [BATCH] [ROUNDS]
#
# TORCH_PYTHON: a Python with torch + torchvision (not a jaxdet dependency), e.g. a venv
# made with `python -m venv /work/torchenv && /work/torchenv/bin/pip install torch
# torchvision`. The two alternate ROUNDS times so that drifts in machine load hit both.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_python=${1:-/work/torchenv/bin/python}
size=${2:-512}
batch=${3:-2}
rounds=${4:-2}
for round in $(seq "$rounds"); do
  python benchmarks/speed.py --config=configs/retinanet_coco.py --size="$size" \
      --batch="$batch" --warmup=2 --steps=5 --noinference 2>/dev/null | grep '^{'
  "$torch_python" benchmarks/torchvision_retinanet.py --size "$size" --batch "$batch" \
      --threads "$(nproc)" --warmup 2 --steps 5 --match_jaxdet | grep '^{'
  "$torch_python" benchmarks/torchvision_retinanet.py --size "$size" --batch "$batch" \
      --threads "$(nproc)" --warmup 2 --steps 5 | grep '^{'
done
