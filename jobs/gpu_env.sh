# Sourced by jobs/gpu_*.sh: the device call's set-up, shared. Before sourcing, a script sets BUDGET's default.
#   - from the repository root, with Ray and face-alignment installed from .whl/ where python3 lacks Ray
#     (a GPU machine with PyTorch but without Ray; ../shared/tools/device-wheels.sh builds .whl/);
#   - OUT (what comes back: log.txt, results.tgz), SRC (CK+48), STORE;
#   - left: seconds left of BUDGET; within N CMD...: CMD under the time left less N seconds;
#     log: a line with the seconds since the start; save_results: the store's JSON, Markdown and PNG
#     files (no checkpoints or shards) into $OUT/results.tgz.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
within() { local t=$(( $(left) - $1 )); [ "$t" -gt 10 ] && timeout --signal=INT --kill-after=15 "$t" "${@:2}"; }
log() { echo "[$(( $(date +%s) - start )) s] $*"; }
if [ -d .whl ] && ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fersnet-gpu-out}
mkdir -p "$OUT"
SRC=${SRC:-.data/ckplus48}
STORE=${STORE:-/tmp/fersnet-gpu-store}
save_results() {
  (cd "$STORE" 2>/dev/null && find runs \( -name '*.json' -o -name '*.md' -o -name '*.png' -o -name '*.csv' \) \
    -not -path '*/checkpoint-*' -print0 | tar czf "$OUT/results.tgz" --null -T -) || true
}
