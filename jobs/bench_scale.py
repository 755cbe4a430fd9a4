"""Scale benchmark: prepare → synthesize → verify → one streamed fine-tuning epoch, at N and N/10 faces.

    python jobs/bench_scale.py --faces 100000 --store both --out scale.json      # the issue's run (README: "At scale")
    python jobs/bench_scale.py --faces 2100 --folds 5 --store both --out /tmp/scale-small.json
    python jobs/bench_scale.py --faces 420 --folds 3 --shrink 1 --store local --nodes 3 --out /tmp/scale-nodes.json

--store local writes under --local-store; s3 starts moto's S3 server on 127.0.0.1 in a child process
(needs `pip install 'moto[s3]' flask flask-cors`, part of `.[test]`) before Ray, so Ray's workers reach it. Each store × size runs in
its own process; results go to --out after each, and the same command resumes. --nodes N runs each
again on a simulated cluster (a head with no CPUs and N worker nodes on this machine) and reports the
tasks per node of each stage and whether the synthetic output equals one node's. See
fersnet_ray/scale/bench.py for what is measured.
"""

import argparse

from fersnet_ray.scale.bench import STORES, ScaleConfig, bench_scale, scale_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=100_000, help="faces at the large size (the small one is /--shrink)")
    p.add_argument("--store", choices=[*STORES, "both"], default="both")
    p.add_argument("--out", default="scale-results.json", help="results JSON (written after each store × size)")
    p.add_argument("--local-store", default="./scale-store")
    p.add_argument("--shrink", type=int, default=10)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--actors", type=int, default=1, help="generator actors")
    p.add_argument("--batch-size", type=int, default=256, help="generator batch")
    p.add_argument("--rows-per-shard", type=int, default=1200)
    p.add_argument("--max-rows", type=int, default=None, help="synthesize's guard")
    p.add_argument(
        "--nodes", type=int, default=0, help="also run on a head + this many worker nodes (0: one node only)"
    )
    p.add_argument("--cpus-per-node", type=int, default=1, help="CPUs of each simulated worker node")
    p.add_argument("--finetune-workers", type=int, default=1, help="Ray Train workers of the fine-tuning fold")
    args = p.parse_args()
    cfg = ScaleConfig(
        faces=args.faces,
        stores=STORES if args.store == "both" else (args.store,),
        local_store=args.local_store,
        shrink=args.shrink,
        folds=args.folds,
        actors=args.actors,
        batch_size=args.batch_size,
        rows_per_shard=args.rows_per_shard,
        max_rows=args.max_rows,
        nodes=args.nodes,
        cpus_per_node=args.cpus_per_node,
        finetune_workers=args.finetune_workers,
    )
    result, failed = bench_scale(cfg, args.out)
    print(f"results: {args.out}")
    print(scale_table(result))
    if failed:
        raise SystemExit(f"error: {', '.join(failed)} failed (see above); the same command measures them again")


if __name__ == "__main__":
    main()
