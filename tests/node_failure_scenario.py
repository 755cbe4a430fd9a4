"""Node failure on a real multi-node Ray cluster: kill the node under a training fold, then under synthesis.

    python tests/node_failure_scenario.py WORKDIR      # writes WORKDIR/result.json; run by test_reliability.py

Runs as its own process because `ray.cluster_utils.Cluster` needs a driver connected to it, and the
test session already holds a local Ray. The cluster: a head with no CPUs (driver, Ray Train's
controller, Ray Data's executor) and three worker nodes of 2 CPUs each, all on this machine. The store
is a local folder, which every node sees (on a real cluster it would be S3). WORKDIR/store may hold
the prepared demo set already; otherwise it is prepared here.

1. train: fold 0 of the demo set, tiny preset, 4 epochs (checkpoint every 2). As soon as the fold's
   epoch-2 checkpoint is in the store, the node running its Ray Train worker is removed (its processes
   killed); Ray Train restarts the worker group on the other node (FailureConfig(max_failures=2)) and
   `train_fold` resumes from the newest complete checkpoint.
2. synthesize: fold 0 on the two nodes left, in shards of 96 rows. Once the first shard is
   written, the node running the generator actor is removed. If the Ray Data job survives, the fold
   completes; if it fails, a re-run of `synthesize` writes the shards that are not done. `verify_run`
   is the judge either way.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback

QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DATA_LOG_LEVEL": "WARNING",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_DEDUP_LOGS": "0",
}


def log(msg: str) -> None:
    print(f"[scenario {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def alive_actor_nodes(cluster, class_part: str) -> set[str]:
    """Node ids (hex) of the live actors whose class name contains `class_part`.

    Read from the GCS actor table through the cluster's own accessor: `ray.util.state.list_actors`
    would need the dashboard, which costs this test half a minute of start-up on a small machine.
    """
    actors = cluster.global_state.actor_table(None, actor_state_name="ALIVE").values()
    return {a["Address"]["NodeID"] for a in actors if class_part in a["ActorClassName"]}


def wait_for(predicate, timeout: float, what: str, step: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill_node_of(cluster, node_id: str) -> None:
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)


def train_with_node_loss(cluster, uri: str, result: dict) -> None:
    from fersnet_ray.store import Store
    from fersnet_ray.train.config import make_experiment
    from fersnet_ray.checkpoint import META_FILE, latest_checkpoint, read_checkpoint
    from fersnet_ray.train.job import TrainJob, train

    store = Store.from_uri(uri)
    exp = make_experiment("tiny", epochs=4, checkpoint_every=2)
    job = TrainJob(store=uri, dataset="demo", run="r", experiment=exp.to_dict(), folds=(0,), max_failures=2)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = train(job)
        except BaseException as e:  # noqa: BLE001 - reported to the test, which fails on it
            outcome["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=run, daemon=True)
    t0 = time.time()
    thread.start()

    def checkpointed() -> int:
        path = latest_checkpoint(store, "r", 0)
        return json.loads(store.read_bytes(f"{path}/{META_FILE}"))["epoch"] if path else 0

    # Killed as soon as the checkpoint is in the store: usually before Ray Train's controller has
    # registered it (it polls its workers every 2 s), so the restart must find it in the store.
    at_kill = wait_for(lambda: checkpointed() >= 2 and checkpointed(), 240, "fold 0's first checkpoint", 0.2)
    nodes = wait_for(lambda: alive_actor_nodes(cluster, "RayTrainWorker"), 30, "the Ray Train worker")
    (victim,) = nodes
    kill_node_of(cluster, victim)
    killed_at = time.time()
    log(f"train: removed node {victim[:8]} at epoch {at_kill}")
    thread.join(timeout=300)
    state = read_checkpoint(store, latest_checkpoint(store, "r", 0))
    result["train"] = {
        "error": outcome.get("error"),
        "finished": not thread.is_alive() and "summary" in outcome,
        "killed_node": victim,
        "epoch_at_kill": at_kill,
        "final_epoch": state["epoch"],
        "history": [{"epoch": m["epoch"], "start_epoch": m["start_epoch"]} for m in state["history"]],
        "evaluated": store.exists(f"{store.run('r').fold(0)}/evaluation.json"),
        "wall_s": round(time.time() - t0, 1),
        "kill_after_s": round(killed_at - t0, 1),
    }


def synthesize_with_node_loss(cluster, uri: str, result: dict) -> None:
    from fersnet_ray.store import Store
    from fersnet_ray.synth.job import MANIFEST, SynthJob, synthesize
    from fersnet_ray.synth.verify import verify_run
    from fersnet_ray.table import read_faces

    store = Store.from_uri(uri)
    folder = store.run("r").synthetic(0)
    job = SynthJob(store=uri, run="r", folds=(0,), rows_per_shard=96, quality=False)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["manifest"] = synthesize(job)[0]
        except BaseException as e:  # noqa: BLE001 - a failed first attempt is allowed: the re-run must repair it
            outcome["error"] = f"{type(e).__name__}: {e}"

    def sidecars() -> list[str]:
        if not store.exists(folder):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False) if "/_part-" in p)

    thread = threading.Thread(target=run, daemon=True)
    t0 = time.time()
    thread.start()
    wait_for(sidecars, 120, "the first synthetic shard")
    nodes = wait_for(lambda: alive_actor_nodes(cluster, "MapWorker"), 30, "the generator actor")
    victim = sorted(nodes)[0]
    done_at_kill = len(sidecars())
    kill_node_of(cluster, victim)
    killed_at = time.time()
    log(f"synthesize: removed node {victim[:8]} with {done_at_kill} shard(s) written")
    thread.join(timeout=300)
    first = {
        "error": outcome.get("error"),
        "finished": not thread.is_alive() and "manifest" in outcome,
        "manifest_after_first": store.exists(f"{folder}/{MANIFEST}"),
    }
    if thread.is_alive():
        raise TimeoutError("synthesis still running 5 min after the node was lost")
    rerun = None
    if not first["finished"]:  # the Ray Data job failed on the node loss: the same call again completes it
        rerun = {"shards_done_before": len(sidecars())}
        synthesize(job)
    manifest = store.read_json(f"{folder}/{MANIFEST}")
    faces = read_faces(store, "demo", columns=["fold"])["fold"].to_pylist()
    result["synth"] = {
        "killed_node": victim,
        "generator_nodes": sorted(nodes),
        "shards_at_kill": done_at_kill,
        "shards": len(manifest["shards"]),
        "rows": manifest["rows"],
        "expected_rows": 6 * sum(f != 0 for f in faces),  # every other expression of every training face
        "first_attempt": first,
        "rerun": rerun,
        "verify": verify_run(store, "r", (0,)),
        "leftover_tmp": [n for n in store.fs.ls(folder, detail=False) if "_tmp-" in n],
        "wall_s": round(time.time() - t0, 1),
        "kill_after_s": round(killed_at - t0, 1),
    }


def main(workdir: str) -> dict:
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    import logging

    import ray
    from ray.cluster_utils import Cluster

    from fersnet_ray.prepare.job import PrepareConfig, prepare

    result: dict = {}
    t0 = time.time()
    cluster = Cluster()
    try:
        # The head: driver and controllers only, never a worker. A lost node is declared dead after
        # three missed 1-s health checks instead of Ray's default five 3-s ones, to keep the test short.
        health = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3}
        cluster.add_node(num_cpus=0, include_dashboard=False, _system_config=health)
        # Three worker nodes, started side by side: training loses one, synthesis another, and the
        # last one then holds the restarted generator actor (1 CPU) and the read/write tasks.
        for _ in range(3):
            cluster.add_node(wait=False, num_cpus=2)
        ray.init(
            address=cluster.address,
            logging_level=logging.WARNING,
            logging_config=ray.LoggingConfig(encoding="TEXT", log_level="ERROR"),
        )
        cluster.wait_for_nodes(timeout=120)
        result["cluster_start_s"] = round(time.time() - t0, 1)
        uri = os.path.join(workdir, "store")
        if not os.path.exists(os.path.join(uri, "datasets", "demo")):  # the test copies in a prepared one
            prepare(PrepareConfig(dataset="demo", store=uri, folds=3, options={"subjects": 6}))
        train_with_node_loss(cluster, uri, result)
        if result["train"]["finished"]:
            synthesize_with_node_loss(cluster, uri, result)
    except BaseException:  # noqa: BLE001 - the test reads the traceback from the JSON
        result["exception"] = traceback.format_exc()
    finally:
        ray.shutdown()
        cluster.shutdown()
    result["wall_s"] = round(time.time() - t0, 1)
    return result


if __name__ == "__main__":
    out = main(sys.argv[1])
    with open(os.path.join(sys.argv[1], "result.json"), "w") as f:
        json.dump(out, f)
