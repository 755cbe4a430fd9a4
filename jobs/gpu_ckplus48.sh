#!/usr/bin/env bash
# The GPU measurements of training and synthesis, in one command meant to fit in 10 minutes on one
# H100/H200 (not yet run: lower EPOCHS if it does not): CK+48 with stratified subject-disjoint
# 10-fold splits, every fold side by side on one GPU; the original FERSNet against the single-task
# `fer_only` on the same folds; synthesis of every fold with the Table V accuracy; then the training
# and synthesis throughput benchmarks.
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
EPOCHS=${EPOCHS:-40}          # the paper trains 500; 40 keeps everything inside the time limit
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
SYNTH_GPUS=0.5; [ -n "${DRY:-}" ] && SYNTH_GPUS=0
fersnet synthesize --store "$STORE" --run "ck48-fersnet-e$EPOCHS" --folds "$FOLDS" --actors 2 \
  --gpus-per-actor "$SYNTH_GPUS" --batch-size 1024
fersnet verify --store "$STORE" --run "ck48-fersnet-e$EPOCHS"
python3 jobs/bench_synth.py --store "$STORE" --run "ck48-fersnet-e$EPOCHS" --gpus-per-actor "$SYNTH_GPUS" \
  --batch-size 1024
python3 jobs/bench_train.py --store "$STORE" --dataset ckplus48 --preset "$PRESET" --epochs 6 \
  --folds-sharing "$BENCH_FOLDS" --cpus-per-worker 1
for variant in fersnet fer_only; do fersnet evaluate --store "$STORE" --run "ck48-$variant-e$EPOCHS"; done
if [ -n "${OUT:-}" ]; then
  for r in "$STORE"/runs/ck48-*; do cp "$r/evaluation.json" "$OUT/$(basename "$r")-evaluation.json" || true; done
fi
