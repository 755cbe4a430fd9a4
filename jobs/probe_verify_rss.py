"""Driver memory of `verify` on one fold: peak RSS of this process before and after `verify_fold`.

    python jobs/probe_verify_rss.py --store ./scale-store --run scale-100000     # after jobs/bench_scale.py

Run it in a fresh process per measurement (the peak is the process's high-water mark). No Ray.
"""

from __future__ import annotations

import argparse
import resource
import time

from fersnet_ray.store import Store
from fersnet_ray.synth.verify import verify_fold


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--fold", type=int, default=0)
    args = p.parse_args()
    store = Store.from_uri(args.store)
    before, start = _peak_mb(), time.time()
    problems = verify_fold(store, args.run, args.fold)
    print(f"{len(problems)} problem(s) in {time.time() - start:.1f} s; peak RSS {before:.0f} → {_peak_mb():.0f} MB")
    for line in problems:
        print(line)


if __name__ == "__main__":
    main()
