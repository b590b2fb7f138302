#!/usr/bin/env bash
# Train-step and inference throughput on a GPU at the papers' COCO size (1333x800,
# padded to 1344x800), bfloat16 compute, for jaxdet configs and torchvision's RetinaNet.
#
#   BATCH=8 bash benchmarks/gpu_suite.sh CONFIG[@FLAG...] ... [torchvision]
#
# A config may carry overrides after '@' (as in compare_configs.sh); the word
# `torchvision` times torchvision's retinanet_resnet50_fpn built as jaxdet's COCO config
# (--match_jaxdet) under bfloat16 autocast, with the python on PATH (torch must be
# installed there; it is not a jaxdet dependency). One JSON line per measurement on
# stdout; each run's stderr goes to $LOG (default /dev/null).
set -uo pipefail
cd "$(dirname "$0")/.."
batch=${BATCH:-8}; steps=${STEPS:-20}; log=${LOG:-/dev/null}
for spec in "$@"; do
  if [[ $spec == torchvision ]]; then
    for mode in "" --inference; do
      python benchmarks/torchvision_retinanet.py --device cuda --bf16 --size 1344 \
          --height 800 --batch "$batch" --warmup 3 --steps "$steps" --match_jaxdet \
          $mode 2>>"$log" | grep '^{'
    done
    continue
  fi
  IFS='@' read -r -a parts <<< "$spec"
  python benchmarks/speed.py --config="${parts[0]}" "${parts[@]:1}" \
      --config.model.dtype=bfloat16 --size=1344 --height=800 --batch="$batch" \
      --warmup=3 --steps="$steps" 2>>"$log" \
    | grep '^{' | sed "s|}\$|, \"config\": \"${parts[0]}\", \"flags\": \"${parts[*]:1}\"}|"
done
