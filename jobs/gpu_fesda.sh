#!/usr/bin/env bash
# FES-DA at the paper's width on one GPU, in one device call of about 5 minutes: CK+48 folds 0 and 1
# (stratified subject-disjoint 10-fold splits), `fersnet run` with the `ck48` preset (full width,
# identity loss on, 40 epochs) trains FERSNet, synthesises every missing expression of every training
# face on GPU actors (Table V: a recogniser trained on real faces reads the synthetic test-subject
# faces), fine-tunes on real + synthetic faces (FES-DA), then the control fine-tunes the same
# checkpoints for the same steps on real faces only; then the synthesis benchmark with the time left.
# The companion of jobs/gpu_ckplus48.sh (all ten folds, Table VI's single-task ablation) when a device
# call has too little time for both.
#
# Here, once:   ../shared/tools/device-wheels.sh && mkdir -p .data && cp -r ../shared/data/ckplus48 .data/
# Device run:   carry [".whl", ".data/ckplus48"], timeout_s 400, command: BUDGET=330 bash jobs/gpu_fesda.sh
#               (session 7 ran EPOCHS=30 BUDGET=300: Table V 20.6%, README "Results"). The run that matters
#               next is a long one for the generator: EPOCHS=400 BUDGET=540 with timeout_s 600 (about 300 s
#               of training at the measured 1,100 img/s per fold, the rest as measured).
# CPU dry run:  . .venv/bin/activate && DRY=1 bash jobs/gpu_fesda.sh   (tiny preset, 2 epochs, no GPU)
# SKIPS=--skips (the default; SKIPS=--no-skips for the paper's decoder): session 8 found the paper's
#               decoder makes faces of no one at CPU budgets and U-Net skips fix it (README, quick start
#               and Results); a GPU run with --skips says whether that holds at full width.
set -uo pipefail
BUDGET=${BUDGET:-330}
source "$(dirname "$0")/gpu_env.sh"   # cd to the root, wheels, OUT, SRC, STORE, left, within, log, save_results
EPOCHS=${EPOCHS:-40}
FT_EPOCHS=${FT_EPOCHS:-3}
PRESET=${PRESET:-ck48}
SKIPS=${SKIPS:---skips}
FOLDS=${FOLDS:-0,1}
GPUS=0.5 SYNTH_GPUS=0.25
if [ -n "${DRY:-}" ]; then EPOCHS=2; FT_EPOCHS=1; PRESET=tiny; GPUS=0; SYNTH_GPUS=0; fi
RUN="ck48-fesda-e$EPOCHS-${SKIPS#--}"

{
  log "EPOCHS=$EPOCHS FT_EPOCHS=$FT_EPOCHS PRESET=$PRESET FOLDS=$FOLDS SKIPS=$SKIPS"
  nvidia-smi -L 2>/dev/null || true
  log "run: prepare, train, synthesize, FES-DA (time left $(left) s)"
  within 75 python3 -m fersnet_ray.cli run --dataset ckplus48 --source "$SRC" --store "$STORE" --run "$RUN" \
    --folds 10 --train-folds "$FOLDS" --preset "$PRESET" "$SKIPS" --epochs "$EPOCHS" --gpus-per-fold "$GPUS" \
    --actors 2 --gpus-per-actor "$SYNTH_GPUS" --synth-batch-size 1024 --finetune-epochs "$FT_EPOCHS"
  log "run exit $?"
  log "control: real faces only, same steps (time left $(left) s)"
  within 30 python3 -m fersnet_ray.cli finetune --store "$STORE" --run "$RUN" --data real \
    --epochs "$FT_EPOCHS" --gpus-per-fold "$GPUS"
  log "control exit $?"
  within 5 python3 -m fersnet_ray.cli report --store "$STORE" --run "$RUN" || log "report exit $?"
  cat "$STORE/runs/$RUN/report/report.md" 2>/dev/null | sed '/^## Configurations/,$d'
  if [ "$(left)" -gt 50 ]; then
    log "synthesis benchmark (time left $(left) s)"
    within 5 python3 jobs/bench_synth.py --store "$STORE" --run "$RUN" --gpus-per-actor "$SYNTH_GPUS" \
      --batch-size 1024 || log "bench_synth exit $?"
  fi
  log "done"
} 2>&1 | tee "$OUT/log.txt"
save_results
