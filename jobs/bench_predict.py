"""Predict benchmark: `fersnet predict` images/s vs the bare model forward on the same faces, in one run.

    python jobs/bench_predict.py --store ./fersnet-store --run demo --fold 0 --images 4000

Needs a trained run (fersnet train). See fersnet_ray/use/bench.py for what is measured.
"""

import argparse
import json

from fersnet_ray.runtime import init_ray
from fersnet_ray.use.bench import bench_predict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="./fersnet-store")
    p.add_argument("--run", default="demo")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--images", type=int, default=4000, help="image files to classify (the face table repeated)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--gpus-per-actor", type=float, default=None)
    args = p.parse_args()
    init_ray()
    r = bench_predict(args.store, args.run, args.fold, args.images, args.batch_size, args.actors, args.gpus_per_actor)
    print(json.dumps(r, indent=2))
    print(
        f"predict {r['pipeline_images_per_s']:.0f} img/s, bare forward {r['bare_images_per_s']:.0f} img/s "
        f"({r['bare_threads']} thread(s), as one actor) -> pipeline/bare = {r['pipeline_over_bare']:.3f} on "
        f"{r['device']}; bare on every core {r['bare_all_cores_images_per_s']:.0f} img/s "
        f"(pipeline/bare {r['pipeline_over_bare_all_cores']:.3f})"
    )


if __name__ == "__main__":
    main()
