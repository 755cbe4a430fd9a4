"""Training throughput benchmark: plain PyTorch vs Ray Train vs K folds sharing the device.

    python jobs/bench_train.py                                   # demo data, tiny preset, CPU or GPU
    python jobs/bench_train.py --store ./st --dataset ckplus48 --preset ck48 --epochs 8 --folds-sharing 4

Prints the three throughputs and the ratios ray/plain (target ≥ 0.9 on a GPU) and shared/one.
See fersnet_ray/train/bench.py for what is measured.
"""

import argparse
import json

from fersnet_ray.pipeline import ExperimentSpec
from fersnet_ray.runtime import init_ray
from fersnet_ray.store import Store
from fersnet_ray.table import read_card
from fersnet_ray.train.bench import bench_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="./fersnet-store")
    p.add_argument("--dataset", default="demo", help="a prepared data set (demo is prepared if missing)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--variant", default="fersnet")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--folds-sharing", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    args = p.parse_args()

    init_ray()
    store = Store.from_uri(args.store)
    if args.dataset == "demo" and not store.exists(store.path("datasets", "demo", "_card.json")):
        from fersnet_ray.prepare.job import PrepareConfig, prepare

        prepare(PrepareConfig(dataset="demo", store=args.store))
    card = read_card(store, args.dataset)
    # The experiment as `fersnet train` builds it from the data set's card (its classes and channels).
    spec = ExperimentSpec(
        preset=args.preset, variant=args.variant, epochs=args.epochs, batch_size=args.batch_size, identity="none"
    )
    exp = spec.build(card)
    result = bench_train(args.store, args.dataset, exp, k=args.folds_sharing, cpus=args.cpus_per_worker)
    print(json.dumps(result, indent=2))
    print(
        f"ray/plain = {result['ray_over_plain']:.3f}   "
        f"{args.folds_sharing} folds shared/one = {result['shared_over_one']:.3f}   on {result['device']}"
    )


if __name__ == "__main__":
    main()
