"""Synthesis on a simulated cluster whose store fills up: one line, then a re-run that writes what one node writes.

    unshare --map-root-user --mount python tests/disk_full_scenario.py SOURCE WORKDIR ROOM    # run by test_scale.py
    python tests/disk_full_scenario.py SOURCE WORKDIR -1       # no room to fill: the cluster part alone

The cluster: a head with no CPUs and two worker nodes of 1 CPU, on this machine (`local_cluster`). The
worker nodes declare one logical GPU each and the generator actor asks for half of one, as on a GPU
cluster: Ray Data applies its rules for GPU stages (an explicit batch size, which synthesis once lacked
and failed on every real GPU), while the work itself runs on the CPU.

The store's disk: a real full disk, not a simulated error. In a private mount namespace (no root needed
where user namespaces are allowed, and nothing left mounted when the process ends) WORKDIR/disk becomes a
tmpfs, SOURCE's store (a prepared data set and a run with a checkpoint) is copied onto it, and the tmpfs
is shrunk to what it holds plus ROOM bytes. `fersnet synthesize` (the CLI's own command, its exit code
and its stderr) then runs out of space part-way through fold 0; the tmpfs is grown and the same command
runs again on the same cluster, as a user's second try would. The nodes are started inside the
namespace, so their workers write to the tmpfs too.

One process and one cluster for both checks: each costs the suite a Python start and a Ray cluster
start-up on 2 CPUs. Runs as its own process because `ray.cluster_utils.Cluster` needs a driver connected
to it, and the test session already holds a local Ray. WORKDIR/result.json (outside the tmpfs) gets both
exit codes and stderr, the files left after the failure, the tasks and actors per node of the second
run (`Placement`), verify's problems and the output's checksums.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback


def resize(disk: str, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", disk], check=True)


def synthesize(uri: str) -> dict:
    """`fersnet synthesize` through the CLI's own entry (typer's runner): its exit code and what it wrote to stderr."""
    from typer.testing import CliRunner

    from fersnet_ray.cli import app

    args = ["synthesize", "--store", uri, "--run", "r", "--folds", "0", "--no-quality", "--rows-per-shard", "60"]
    out = CliRunner().invoke(app, [*args, "--gpus-per-actor", "0.5"])
    return {"exit_code": out.exit_code, "stderr": out.stderr, "stdout": out.stdout}


def main(source: str, workdir: str, room: int) -> dict:
    from fersnet_ray.scale.cluster import Placement, local_cluster, output_checksums
    from fersnet_ray.store import Store
    from fersnet_ray.synth.verify import verify_run

    t0 = time.time()
    disk = os.path.join(workdir, "disk")
    os.makedirs(disk, exist_ok=True)
    if room >= 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", disk], check=True)
    uri = os.path.join(disk, "store")
    shutil.copytree(source, uri, ignore=shutil.ignore_patterns("synthetic"))
    store = Store.from_uri(uri)
    folder = store.run("r").synthetic(0)
    result: dict = {"room": room}
    with local_cluster(2, cpus_per_node=1, object_store_mb=128, gpus_per_node=1) as names:
        result["cluster_start_s"] = round(time.time() - t0, 1)
        if room >= 0:
            st = os.statvfs(disk)
            result["used"] = (st.f_blocks - st.f_bfree) * st.f_frsize
            resize(disk, result["used"] + room)
            first = Placement(names)
            result["first"] = synthesize(uri)
            # A write task in flight when the pipeline stopped can still end after the command returned (this
            # driver lives on; a CLI's exit would end it): wait until every task of the first run has ended,
            # so that the listing is what the re-run finds (CI once saw one more shard there than here).
            first.result()
            result["first"]["files"] = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            resize(disk, 64 << 20)
        seen = Placement(names)
        result["second"] = synthesize(uri)
        result["second"]["files"] = sorted(os.listdir(folder))
        result["placement"] = seen.result()
    result["verify"] = verify_run(store, "r", (0,))
    result["checksums"] = output_checksums(store, "r", 0)
    result["wall_s"] = round(time.time() - t0, 1)
    return result


if __name__ == "__main__":
    source, workdir, room = sys.argv[1:4]
    try:
        out = main(source, workdir, int(room))
    except BaseException:  # noqa: BLE001 - the test reads the traceback from the JSON
        out = {"exception": traceback.format_exc()}
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f)
