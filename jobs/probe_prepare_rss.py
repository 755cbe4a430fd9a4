"""Driver memory of one `prepare` of drawn demo faces: how the driver's RSS grows with the face count.

    python jobs/probe_prepare_rss.py --store /tmp/rss-3k --subjects 143     # ~3,000 faces
    python jobs/probe_prepare_rss.py --store /tmp/rss-30k --subjects 1430   # ~30,000 faces

One local Ray of 2 CPUs, `--align none`, 10 folds, into an empty store; prints the stage's wall time,
the driver's RSS at the start and at its peak, and the object store's peak (`scale.probe.StageProbe`).
The smaller, quicker companion of `jobs/bench_scale.py`'s prepare figures.
"""

from __future__ import annotations

import argparse

from fersnet_ray.prepare.job import PrepareConfig, prepare
from fersnet_ray.runtime import init_ray
from fersnet_ray.scale.probe import StageProbe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="an empty store (local folder or s3://)")
    p.add_argument("--subjects", type=int, default=143, help="drawn subjects, about 21 faces each")
    args = p.parse_args()
    init_ray(num_cpus=2)
    with StageProbe() as probe:
        card = prepare(
            PrepareConfig(dataset="demo", store=args.store, name="d", folds=10, options={"subjects": args.subjects})
        ).card
    r = probe.result()
    print(
        f"{card['num_faces']} faces: {r['wall_s']} s, driver RSS {r['driver_rss_start_mb']} → "
        f"{r['driver_peak_rss_mb']} MB, object store peak {r['object_store_peak_mb']} MB"
    )


if __name__ == "__main__":
    main()
