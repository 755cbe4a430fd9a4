"""Fine-tuning benchmark: Ray Data streamed and cached epochs vs a plain in-memory loop, side by side.

    python jobs/bench_finetune.py --store ./fersnet-store --run demo --fold 0

Needs a synthesised run (`fersnet run`). See fersnet_ray/finetune/bench.py for what is measured.
"""

import argparse
import json

from fersnet_ray.finetune.bench import bench_finetune
from fersnet_ray.runtime import init_ray


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="./fersnet-store")
    p.add_argument("--run", default="demo")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2, help="epochs per path; the best is reported")
    args = p.parse_args()
    init_ray()
    r = bench_finetune(args.store, args.run, args.fold, args.batch_size, args.epochs)
    print(json.dumps(r, indent=2))
    print(
        f"{r['rows']} faces on {r['device']}: bare {r['bare']:.0f} img/s, streamed {r['streamed']:.0f} "
        f"({r['streamed_over_bare']:.2f}x), cached {r['cached']:.0f} ({r['cached_over_bare']:.2f}x)"
    )


if __name__ == "__main__":
    main()
