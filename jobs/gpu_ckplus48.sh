#!/usr/bin/env bash
# The GPU measurements, in one command meant to fit in 10 minutes on one H100/H200 (not yet run on
# a GPU: lower EPOCHS if it does not fit): CK+48 with stratified subject-disjoint 10-fold splits, every fold
# side by side on one GPU; the paper's Table VI rows on the same folds (`fersnet ablation`: fer_only,
# fersnet_hard, fersnet, fersnet + FES-DA, and the control: the same checkpoints fine-tuned for the
# same steps on real faces only) with synthesis, its Table V accuracy, the paired per-fold
# comparisons and the report; then
# the training, synthesis and fine-tuning throughput benchmarks.
#
# Here, once:   ../shared/tools/device-wheels.sh && mkdir -p .data && cp -r ../shared/data/ckplus48 .data/
# Device run:   carry [".whl", ".data"], command: OUT=$OUT bash jobs/gpu_ckplus48.sh
# CPU dry run:  . .venv/bin/activate && DRY=1 bash jobs/gpu_ckplus48.sh
#               (tiny preset, 2 folds, 2 epochs: plumbing only; about 23 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
fi
export PYTHONUNBUFFERED=1
SRC=${SRC:-.data/ckplus48}
STORE=${STORE:-/tmp/fersnet-gpu-store}
EPOCHS=${EPOCHS:-15}          # the paper trains 500; 15 × 3 variants keeps everything inside 10 minutes
FT_EPOCHS=${FT_EPOCHS:-5}      # fine-tuning epochs over real + synthetic faces (FES-DA)
PRESET=${PRESET:-ck48}        # 48×48 native faces (resize 54, random crop 48)
GPUS=${GPUS:-0.1}             # ten folds share one GPU
FOLDS=${FOLDS:-all}
BENCH_FOLDS=${BENCH_FOLDS:-4}
SYNTH_GPUS=0.5
if [ -n "${DRY:-}" ]; then EPOCHS=2; FT_EPOCHS=1; PRESET=tiny; GPUS=0; FOLDS=0,1; BENCH_FOLDS=2; SYNTH_GPUS=0; fi
RUN="ck48-e$EPOCHS"
fersnet() { python3 -m fersnet_ray.cli "$@"; }

time fersnet ablation --dataset ckplus48 --source "$SRC" --store "$STORE" --run "$RUN" --folds 10 \
  --preset "$PRESET" --epochs "$EPOCHS" --train-folds "$FOLDS" --gpus-per-fold "$GPUS" --parallel-folds 10 \
  --actors 2 --gpus-per-actor "$SYNTH_GPUS" --finetune-epochs "$FT_EPOCHS"
fersnet verify --store "$STORE" --run "$RUN"
python3 jobs/bench_synth.py --store "$STORE" --run "$RUN" --gpus-per-actor "$SYNTH_GPUS" --batch-size 1024
python3 jobs/bench_finetune.py --store "$STORE" --run "$RUN"
python3 jobs/bench_train.py --store "$STORE" --dataset ckplus48 --preset "$PRESET" --epochs 6 \
  --folds-sharing "$BENCH_FOLDS" --cpus-per-worker 1
if [ -n "${OUT:-}" ]; then
  cp -r "$STORE/runs/$RUN/report" "$OUT/report" || true
  for r in "$STORE"/runs/ck48-*; do cp "$r/evaluation.json" "$OUT/$(basename "$r")-evaluation.json" || true; done
fi
