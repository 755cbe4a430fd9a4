"""Scale benchmark: prepare → synthesize → verify → one streamed fine-tuning epoch, at N and N/10 faces.

    python jobs/bench_scale.py --faces 100000 --store both --out scale.json      # ~45 min on 2 cores (estimate)
    python jobs/bench_scale.py --faces 2100 --folds 5 --store both --out /tmp/scale-small.json

--store local writes under --local-store; s3 starts moto's S3 server on 127.0.0.1 in a child process
(needs `pip install 'moto[server]'`) before Ray, so Ray's workers reach it. Results go to --out after
each (store, size); the same command resumes. See fersnet_ray/scale/bench.py for what is measured.
"""

import argparse
import contextlib
import json

from fersnet_ray.runtime import init_ray
from fersnet_ray.scale.bench import STORES, ScaleConfig, bench_scale, scale_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=100_000, help="faces at the large size (the small one is /--shrink)")
    p.add_argument("--store", choices=[*STORES, "both"], default="both")
    p.add_argument("--out", default=None, help="results JSON (written after each store × size; resumes)")
    p.add_argument("--local-store", default="./scale-store")
    p.add_argument("--shrink", type=int, default=10)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--actors", type=int, default=1, help="generator actors")
    p.add_argument("--batch-size", type=int, default=256, help="generator batch")
    p.add_argument("--rows-per-shard", type=int, default=1200)
    p.add_argument("--max-rows", type=int, default=None, help="synthesize's guard")
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
    )
    with contextlib.ExitStack() as stack:
        s3_uri = None
        if "s3" in cfg.stores:
            from fersnet_ray.scale.s3 import moto_server

            s3_uri = stack.enter_context(moto_server())  # before Ray: workers inherit its endpoint
        init_ray()
        result = bench_scale(cfg, s3_uri, args.out)
    print(json.dumps(result, indent=2) if args.out is None else f"results: {args.out}")
    print(scale_table(result))


if __name__ == "__main__":
    main()
