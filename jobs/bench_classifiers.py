"""Benchmark: one classifier on real faces only against real + synthetic, same steps, every fold.

    python jobs/bench_classifiers.py --store .data/cpu-store --run ck48-cpu --classifier small-cnn --epochs 10

Needs a trained and synthesised run (the CK+48 protocol of jobs/cpu_ckplus48.sh, or `fersnet run` on the
demo set). Writes the two fine-tunings (runs/<run>/finetune-<classifier>-real/ and
runs/<run>/finetune-<classifier>/) into the store, prints the per-fold table, the paired difference and
the wall times, and keeps them as JSON (--out). Re-running skips finished folds: the benchmark resumes.
"""

import argparse
import json
import subprocess
import time

from fersnet_ray.finetune.bench import bench_classifier, bench_table
from fersnet_ray.runtime import init_ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=".data/cpu-store")
    p.add_argument("--run", default="ck48-cpu")
    p.add_argument("--classifier", default="small-cnn")
    p.add_argument("--folds", default="all", help="'all' (every synthesised fold) or a list, e.g. 0,3")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="JSON file for the result (default: bench-<classifier>-<run>.json)")
    args = p.parse_args()
    folds = None if args.folds == "all" else tuple(int(f) for f in args.folds.split(","))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    commit = commit.stdout.strip()
    init_ray()
    start = time.time()
    result = bench_classifier(
        args.store, args.run, args.classifier, folds, epochs=args.epochs, batch_size=args.batch_size
    )
    result.update(commit=commit, wall_total_s=time.time() - start)
    out = args.out or f"bench-{args.classifier.replace(':', '-').replace('/', '_')}-{args.run}.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(bench_table(result))
    print(f"commit {commit}, {args.epochs} epochs, total wall time {result['wall_total_s']:.0f} s; {out}")


if __name__ == "__main__":
    main()
