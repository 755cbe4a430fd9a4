"""Synthesis of one fold on a simulated cluster: a head with no CPUs and N worker nodes, on this machine.

The worker nodes declare one logical GPU each and the generator actors ask for half of one, as on a GPU
cluster: Ray Data applies its rules for GPU stages (an explicit batch size, which synthesis once lacked
and failed on every real GPU), while the work itself runs on the CPU.

    python tests/multinode_scenario.py STORE RUN FOLD ROWS_PER_SHARD NODES OUT_JSON     # run by test_multinode.py

Runs as its own process because `ray.cluster_utils.Cluster` needs a driver connected to it, and the test
session already holds a local Ray. STORE holds the prepared data set and the run's checkpoint; the fold's
synthetic folder is written from scratch (--overwrite). OUT_JSON gets the tasks and actors per node
(`Placement`), the output's checksums (`output_checksums`), verify's problems and the wall times.
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def main(uri: str, run: str, fold: int, rows_per_shard: int, nodes: int) -> dict:
    from fersnet_ray.scale.cluster import Placement, local_cluster, output_checksums
    from fersnet_ray.store import Store
    from fersnet_ray.synth.job import SynthJob, synthesize
    from fersnet_ray.synth.verify import verify_fold

    result: dict = {}
    t0 = time.time()
    try:
        with local_cluster(nodes, cpus_per_node=1, object_store_mb=128, gpus_per_node=1) as names:
            result["cluster_start_s"] = round(time.time() - t0, 1)
            seen = Placement(names)
            t1 = time.time()
            synthesize(
                SynthJob(
                    store=uri,
                    run=run,
                    folds=(fold,),
                    quality=False,
                    rows_per_shard=rows_per_shard,
                    overwrite=True,
                    gpus_per_actor=0.5,
                )
            )
            result["synth_s"] = round(time.time() - t1, 1)
            result["placement"] = seen.result()
        store = Store.from_uri(uri)
        result["checksums"] = output_checksums(store, run, fold)
        result["verify"] = verify_fold(store, run, fold)
    except BaseException:  # noqa: BLE001 - the test reads the traceback from the JSON
        result["exception"] = traceback.format_exc()
    result["wall_s"] = round(time.time() - t0, 1)
    return result


if __name__ == "__main__":
    uri, run, fold, rows, nodes, out = sys.argv[1:7]
    with open(out, "w") as f:
        json.dump(main(uri, run, int(fold), int(rows), int(nodes)), f)
