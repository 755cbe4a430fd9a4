#!/usr/bin/env bash
# The GPU measurements of the training stage, in one command that fits in 10 minutes on one H100/H200:
# CK+48 with stratified subject-disjoint 10-fold splits, every fold side by side on one GPU;
# the original FERSNet against the single-task `fer_only` on the same folds; then the training
# throughput benchmark (plain PyTorch vs Ray Train vs folds sharing the GPU).
#
# Here, once:   ../shared/tools/device-wheels.sh && mkdir -p .data && cp -r ../shared/data/ckplus48 .data/
# Device run:   carry [".whl", ".data"], command: bash jobs/gpu_ckplus48.sh
# CPU dry run:  DRY=1 bash jobs/gpu_ckplus48.sh        (tiny preset, 2 folds, 2 epochs: plumbing only)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
fi
export PYTHONUNBUFFERED=1
SRC=${SRC:-.data/ckplus48}
STORE=${STORE:-/tmp/fersnet-gpu-store}
EPOCHS=${EPOCHS:-60}          # the paper trains 500; 60 keeps both variants inside the time limit
PRESET=${PRESET:-ck48}        # 48×48 native faces (resize 54, random crop 48)
GPUS=${GPUS:-0.1}             # ten folds share one GPU
FOLDS=${FOLDS:-all}
BENCH_FOLDS=${BENCH_FOLDS:-4}
if [ -n "${DRY:-}" ]; then EPOCHS=2; PRESET=tiny; GPUS=0; FOLDS=0,1; BENCH_FOLDS=2; fi
fersnet() { python3 -m fersnet_ray.cli "$@"; }

fersnet prepare --dataset ckplus48 --source "$SRC" --store "$STORE" --folds 10
for variant in fersnet fer_only; do
  time fersnet train --store "$STORE" --dataset ckplus48 --run "ck48-$variant-e$EPOCHS" --variant "$variant" \
    --preset "$PRESET" --epochs "$EPOCHS" --folds "$FOLDS" --gpus-per-fold "$GPUS" --cpus-per-worker 1 --overwrite
done
python3 jobs/bench_train.py --store "$STORE" --dataset ckplus48 --preset "$PRESET" --epochs 6 \
  --folds-sharing "$BENCH_FOLDS" --cpus-per-worker 1
for variant in fersnet fer_only; do fersnet evaluate --store "$STORE" --run "ck48-$variant-e$EPOCHS"; done
if [ -n "${OUT:-}" ]; then cp "$STORE"/runs/*/evaluation.json "$OUT"/ 2>/dev/null || true; fi
