#!/usr/bin/env bash
# The real-face protocol on a 2-core CPU machine, in one resumable command (no GPU): CK+48 with
# stratified subject-disjoint 10 folds; `fersnet ablation` with the `cpu48` preset trains fersnet,
# fer_only (both side by side, two folds at a time), synthesises every fold with its Table V
# recogniser, fine-tunes every fold three times from the same checkpoint for the same steps (FES-DA on
# real + synthetic faces, FES-DA on the synthetic rows its recogniser scored ≥ MIN_SCORE, and the
# control on real faces only), trains fersnet_hard last, and writes the report
# (runs/$RUN/report/report.md) with Table VI, the paired per-fold comparisons and Table V.
#
# Once:    mkdir -p .data && cp -r ../shared/data/ckplus48 .data/      (.data/ is git-ignored)
# Run:     . .venv/bin/activate && nohup bash jobs/cpu_ckplus48.sh > cpu_ckplus48.log 2>&1 &
# Resume:  the same command; every finished fold and stage is skipped.
# Knobs:   SRC, STORE, RUN, EPOCHS (default: the preset's), FT_EPOCHS, MIN_SCORE (default 0.5; empty:
#          no score-filtered row), FOLDS (default all; e.g. 0,1,2,3 for a first look in a third of the time),
#          SET (space-separated overrides of the preset, each passed as --set: SET="train.lambda_rec=10").
# Noise:   one run's accuracy on a fold of ~96 faces varies by ±3-4 points with the seed (or the CPU
#          type, README); to settle a difference of 1-2 points, repeat with RUN=<name>-s1
#          SET="train.seed=1" and so on, then report them together, averaged per fold:
#          fersnet report --store .data/cpu-store --run <name> --seeds <name>-s1
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
SRC=${SRC:-.data/ckplus48}
STORE=${STORE:-.data/cpu-store}
RUN=${RUN:-ck48-cpu}
FT_EPOCHS=${FT_EPOCHS:-2}
MIN_SCORE=${MIN_SCORE-0.5}
extra=()
if [ -n "${EPOCHS:-}" ]; then extra+=(--epochs "$EPOCHS"); fi
if [ -n "${FOLDS:-}" ]; then extra+=(--train-folds "$FOLDS"); fi
if [ -n "${MIN_SCORE:-}" ]; then extra+=(--finetune-min-score "$MIN_SCORE"); fi
for setting in ${SET:-}; do extra+=(--set "$setting"); done
echo "commit $(git rev-parse --short HEAD) $(git diff --quiet || echo '(with local changes)'), $(date -u +%FT%TZ)"
start=$(date +%s)
fersnet ablation --dataset ckplus48 --source "$SRC" --store "$STORE" --run "$RUN" --folds 10 \
  --preset cpu48 --cpus-per-worker 1 --finetune-epochs "$FT_EPOCHS" "${extra[@]}"
fersnet verify --store "$STORE" --run "$RUN"
echo "protocol wall time: $(( $(date +%s) - start )) s"
