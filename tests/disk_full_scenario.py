"""A store on a disk that fills up during synthesis, then gets room: one line, then a complete re-run.

    unshare --map-root-user --mount python tests/disk_full_scenario.py SOURCE WORKDIR ROOM    # run by test_scale.py

A real full disk, not a simulated error: in a private mount namespace (no root needed where user
namespaces are allowed, and nothing left mounted when the process ends) WORKDIR/disk becomes a tmpfs,
SOURCE's store (a prepared data set and a run with a checkpoint) is copied onto it, and the tmpfs is
shrunk to what it holds plus ROOM bytes. `fersnet synthesize` (the CLI's own command, its exit code and
its stderr, on this process's local Ray) then runs out of space part-way through fold 0; the tmpfs is
grown and the same command runs again on the same Ray, as a user's second try would on a cluster (one
Ray start-up instead of two: about 10 s of the suite on 2 CPUs). WORKDIR/result.json
(outside the tmpfs) gets both exit codes and stderr, the files left after the failure, verify's
problems and the output's checksums.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback


def resize(disk: str, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", disk], check=True)


def synthesize(uri: str) -> dict:
    """`fersnet synthesize` through the CLI's own entry (typer's runner): its exit code and what it wrote to stderr."""
    from typer.testing import CliRunner

    from fersnet_ray.cli import app

    args = ["synthesize", "--store", uri, "--run", "r", "--folds", "0", "--no-quality", "--rows-per-shard", "60"]
    out = CliRunner().invoke(app, args)
    return {"exit_code": out.exit_code, "stderr": out.stderr}


def main(source: str, workdir: str, room: int) -> dict:
    from fersnet_ray.runtime import init_ray
    from fersnet_ray.scale.cluster import output_checksums
    from fersnet_ray.store import Store
    from fersnet_ray.synth.verify import verify_run

    disk = os.path.join(workdir, "disk")
    os.makedirs(disk, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", disk], check=True)
    uri = os.path.join(disk, "store")
    shutil.copytree(source, uri, ignore=shutil.ignore_patterns("synthetic"))
    st = os.statvfs(disk)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    resize(disk, used + room)
    store = Store.from_uri(uri)
    folder = store.run("r").synthetic(0)
    init_ray()  # a local Ray started in this mount namespace: its workers write to the tmpfs too
    result: dict = {"used": used, "room": room, "first": synthesize(uri)}
    result["first"]["files"] = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    resize(disk, 64 << 20)
    result["second"] = synthesize(uri)
    result["second"]["files"] = sorted(os.listdir(folder))
    result["verify"] = verify_run(store, "r", (0,))
    result["checksums"] = output_checksums(store, "r", 0)
    return result


if __name__ == "__main__":
    source, workdir, room = sys.argv[1:4]
    try:
        out = main(source, workdir, int(room))
    except BaseException:  # noqa: BLE001 - the test reads the traceback from the JSON
        out = {"exception": traceback.format_exc()}
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f)
