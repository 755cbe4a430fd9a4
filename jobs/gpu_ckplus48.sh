#!/usr/bin/env bash
# The real-face protocol on one H100/H200, in one command that fits a 10-minute device call (measured in
# session 7 at commit 50e0b6e: README, "Results"): CK+48 with
# stratified subject-disjoint 10 folds, every fold side by side on the GPU; `fersnet ablation` with the
# `ck48` preset (the paper's network at full width on 48×48 faces, identity loss on) trains fersnet and
# fer_only, synthesises every fold with its Table V recogniser, fine-tunes each fold twice from the same
# checkpoint for the same steps (FES-DA on real + synthetic faces, and the control on real faces only),
# trains fersnet_hard last and writes the report; then, with the time left, the synthesis benchmark.
#
# Every stage runs under the time left of BUDGET seconds, so the call returns what was measured even
# when the GPU is slower than planned; the report is then written from the stages that finished.
# What comes back under $OUT: log.txt (every stage's wall time, per-fold accuracies) and results.tgz
# (every JSON, Markdown and PNG of the store's runs: evaluation.json, history.json per fold, the
# report, the contact sheets; no checkpoints or shards).
#
# Here, once:   ../shared/tools/device-wheels.sh && mkdir -p .data && cp -r ../shared/data/ckplus48 .data/
# Device run:   carry [".whl", ".data/ckplus48"], timeout_s 600, command: bash jobs/gpu_ckplus48.sh
# CPU dry run:  . .venv/bin/activate && DRY=1 bash jobs/gpu_ckplus48.sh
#               (tiny preset, 2 folds, 2 epochs, no GPU: the plumbing only)
set -uo pipefail
BUDGET=${BUDGET:-540}         # seconds for the whole command (a device call may run 600)
source "$(dirname "$0")/gpu_env.sh"   # cd to the root, wheels, OUT, SRC, STORE, left, within, log, save_results
EPOCHS=${EPOCHS:-40}          # the paper trains 500; 40 × (fersnet + fersnet_hard) fits the budget
FT_EPOCHS=${FT_EPOCHS:-3}     # fine-tuning epochs over real + synthetic faces (FES-DA) and the control
PRESET=${PRESET:-ck48}        # 48×48 native faces (resize 54, random crop 48), full width, identity on
GPUS=${GPUS:-0.1}             # ten folds share one GPU
FOLDS=${FOLDS:-all}
SYNTH_GPUS=0.2            # five recognisers or generator actors share the GPU at once
if [ -n "${DRY:-}" ]; then EPOCHS=2; FT_EPOCHS=1; PRESET=tiny; GPUS=0; FOLDS=0,1; SYNTH_GPUS=0; fi
RUN="ck48-e$EPOCHS"

{
  log "commit $(git rev-parse --short HEAD 2>/dev/null) EPOCHS=$EPOCHS FT_EPOCHS=$FT_EPOCHS PRESET=$PRESET"
  nvidia-smi -L 2>/dev/null || true
  python3 -c "import torch, ray, pyarrow; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ray', ray.__version__, 'pyarrow', pyarrow.__version__)"
  log "ablation (time left $(left) s)"
  timeout --signal=INT --kill-after=20 $(( $(left) - 60 )) python3 -m fersnet_ray.cli ablation --dataset ckplus48 \
    --source "$SRC" --store "$STORE" --run "$RUN" --folds 10 --preset "$PRESET" --epochs "$EPOCHS" \
    --train-folds "$FOLDS" --gpus-per-fold "$GPUS" --parallel-folds 10 --actors 2 \
    --gpus-per-actor "$SYNTH_GPUS" --synth-batch-size 1024 --finetune-epochs "$FT_EPOCHS"
  log "ablation exit $?"
  if [ ! -f "$STORE/runs/$RUN/report/report.md" ]; then
    log "report from the stages that finished"
    timeout 45 python3 -m fersnet_ray.cli report --store "$STORE" --run "$RUN" || log "report exit $?"
  fi
  for f in "$STORE"/runs/ck48-*/evaluation.json; do log "$f"; cat "$f"; echo; done
  cat "$STORE/runs/$RUN/report/report.md" 2>/dev/null
  if [ "$(left)" -gt 70 ]; then
    log "synthesis benchmark (time left $(left) s)"
    timeout $(( $(left) - 25 )) python3 jobs/bench_synth.py --store "$STORE" --run "$RUN" \
      --gpus-per-actor "$SYNTH_GPUS" --batch-size 1024 || log "bench_synth exit $?"
  fi
  log "done"
} 2>&1 | tee "$OUT/log.txt"
save_results
