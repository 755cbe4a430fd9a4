"""Synthesis benchmark: pipeline images/s vs bare generator forward, and driver memory at 1× and 10× input.

    python jobs/bench_synth.py --store ./fersnet-store --run demo --fold 0
    python jobs/bench_synth.py --store /tmp/st --run ck48-fersnet-e60 --gpus-per-actor 1 --batch-size 1024

Needs a trained run (fersnet train). See fersnet_ray/synth/bench.py for what is measured.
"""

import argparse
import json

from fersnet_ray.runtime import init_ray
from fersnet_ray.synth.bench import bench_synth


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="./fersnet-store")
    p.add_argument("--run", default="demo")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--times", type=int, default=10, help="input growth factor for the memory check")
    args = p.parse_args()
    init_ray()
    r = bench_synth(args.store, args.run, args.fold, args.batch_size, args.actors, args.gpus_per_actor, args.times)
    print(json.dumps(r, indent=2))
    big = r["pipeline"][f"{args.times}x"]
    print(
        f"pipeline/bare = {r['pipeline_over_bare']:.3f} on {r['device']}; driver peak RSS growth "
        f"1x {r['pipeline']['1x']['driver_peak_rss_growth_mb']:.0f} MB, {args.times}x "
        f"{big['driver_peak_rss_growth_mb']:.0f} MB ({r['rows_ratio']:.0f}x the rows)"
    )


if __name__ == "__main__":
    main()
