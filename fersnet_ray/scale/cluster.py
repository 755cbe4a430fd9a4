"""A simulated cluster on one machine, what ran on which node, and what "the same output" means.

    with local_cluster(nodes=3, cpus_per_node=1) as names:  # a head (0 CPUs) + 3 worker nodes; Ray connected
        seen = Placement(names)
        synthesize(job)
        seen.result()        # {"tasks": {"worker-1": {"read_sources": 3, ...}, ...}, "actors": {...}, "nodes_used": 3}
    output_checksums(store, run, fold)   # {"shards": {file: sha256}, "files": {...}, "fold": sha256}

`ray.cluster_utils.Cluster` runs every node as its own raylet (and object store) on this machine, so Ray
schedules, transfers objects and loses nodes as it would on separate machines; only the CPUs are shared.
The head gets no CPUs, so every task and actor lands on a worker node and the driver's process stays apart.

Placement is read from Ray's task events and actor table in the GCS, without the dashboard: the public
`ray.util.state.list_tasks` asks the dashboard's state API, which costs a Ray start half a minute on a
small machine (the node-failure test avoids it for the same reason).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import time
from collections import Counter, defaultdict

import numpy as np

HEAD = "head"
# Ray Data's own bookkeeping actors (on the head, beside the driver): not the stages' work.
_RAY_OWN = ("_", "ActorLocationTracker")
# Classes whose method calls are bookkeeping of Ray Data and Ray Train (their actors are still counted).
_RAY_INTERNAL = (
    *_RAY_OWN,
    "DatasetManager",
    "SplitCoordinator",
    "PlacementGroupCleaner",
    "SynchronizationActor",
    "TrainController",
)


@contextlib.contextmanager
def local_cluster(
    nodes: int, cpus_per_node: int = 1, head_cpus: int = 0, object_store_mb: int = 512, gpus_per_node: float = 0
):
    """A head and `nodes` worker nodes on this machine, with this process connected as the driver.

    `gpus_per_node` declares logical GPUs on the worker nodes (no device behind them: the work runs on the
    CPU), so that stages which ask Ray for GPUs meet Ray's rules for GPU work on a machine without one.

    Yields {node id (hex): "head" | "worker-1" | ...}. The quiet environment of `init_ray` is set before
    the nodes start, so their workers inherit it. Each node's object store is capped at `object_store_mb`
    (Ray's default is 30% of the machine's memory per node: four nodes would ask for more than there is).
    """
    import ray
    from ray.cluster_utils import Cluster

    from fersnet_ray.runtime import init_ray, quiet_environment

    if nodes < 1:
        raise ValueError(f"--nodes {nodes}: a cluster needs at least one worker node")
    quiet_environment()
    store_bytes = object_store_mb << 20
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=head_cpus, include_dashboard=False, object_store_memory=store_bytes)
        workers = [
            cluster.add_node(
                num_cpus=cpus_per_node, num_gpus=gpus_per_node, object_store_memory=store_bytes, wait=False
            )
            for _ in range(nodes)
        ]
        init_ray(address=cluster.address)
        cluster.wait_for_nodes(timeout=180)
        names = {cluster.head_node.node_id: HEAD}
        names.update({w.node_id: f"worker-{i + 1}" for i, w in enumerate(workers)})
        yield names
    finally:
        ray.shutdown()
        cluster.shutdown()


def node_names() -> dict[str, str]:
    """{node id: name} of the Ray this process is connected to: the head node is "head", others "node-<i>"."""
    import ray

    names, i = {}, 0
    for n in sorted(ray.nodes(), key=lambda n: n["NodeID"]):
        if "node:__internal_head__" in n.get("Resources", {}):
            names[n["NodeID"]] = HEAD
        else:
            i += 1
            names[n["NodeID"]] = f"node-{i}"
    return names


def _task_kind(name: str) -> str | None:
    """A task's stage function, or None for Ray's own bookkeeping calls.

    "MapBatches(read_sources)" → "read_sources"; "ReadParquet->SplitBlocks(6)" → "ReadParquet" (a fused
    Ray Data task: its first operator); "MapWorker(MapBatches(Generator)).submit" → "Generator" (one call
    per block); "RayTrainWorker.poll_status", "execute.set_env_vars" → "RayTrainWorker" (the Ray Train
    worker's calls); "_StatsActor.record", "SplitCoordinator.get", "MapWorker(...).get_location" → None.
    """
    op = name.split("->")[0]
    if op.startswith(("RayTrainWorker.", "execute.")):
        return "RayTrainWorker"
    if op.startswith("MapWorker("):
        return _actor_kind(op.rsplit(".", 1)[0]) if op.endswith(".submit") else None
    if "." in op and op.split(".")[0].startswith(_RAY_INTERNAL):
        return None
    return _actor_kind(op) or op


def _actor_kind(cls: str) -> str | None:
    """ "MapWorker(MapBatches(Generator))" → "Generator"; Ray Data's own actors ("_StatsActor", ...) → None."""
    if cls.startswith(_RAY_OWN):
        return None
    words = [w for w in re.findall(r"[A-Za-z_]\w*", cls) if w not in ("MapBatches", "MapWorker", "submit")]
    return words[-1] if words else cls


class Placement:
    """Counts the tasks and actors that ran on each node between its creation and `result()`.

    Tasks: every attempt of a normal or actor task submitted in that window, with the node it ran on, from
    the GCS's task events. Each process sends its events in batches (every
    RAY_task_events_report_interval_ms, 1 s by default), the driver's (which name a task) apart from the
    worker's (its node, its end), and on a loaded machine a batch can come seconds late. So a task belongs to
    the window by its own submission time, not by when its events arrive (an earlier run's late events are
    not counted), and `result()` waits until every task of the window has its name, node and end and no new
    event has come for 1.5 report intervals. Actors: those created since, by class.
    """

    def __init__(self, names: dict[str, str] | None = None):
        self.names = names if names is not None else node_names()
        self._since_ns = time.time_ns()  # Ray stamps task states with the wall clock of the node (here: this machine)
        self._actors_before = set(self._actors())

    def _window(self) -> dict[tuple[bytes, int], list]:
        """{(task id, attempt): [name or None, node id or None, ended]} of every normal and actor task
        attempt whose first recorded state is in the window."""
        from ray._private.state import state
        from ray.core.generated.common_pb2 import TaskStatus, TaskType

        work = (TaskType.NORMAL_TASK, TaskType.ACTOR_TASK)  # not actor creation, not drivers
        ends = (TaskStatus.FINISHED, TaskStatus.FAILED)
        # Several events per task attempt (one per batch that saw it change): the name comes with the owner's,
        # the node and the end with the worker's.
        seen: dict[tuple[bytes, int], list] = defaultdict(lambda: [None, None, False, None])
        other: set = set()
        for ev in state._get_all_task_events():
            key = (ev.task_id, ev.attempt_number)
            if ev.HasField("task_info"):
                if ev.task_info.type not in work:
                    other.add(key)
                seen[key][0] = ev.task_info.name
            if ev.HasField("state_updates"):
                up, rec = ev.state_updates, seen[key]
                if up.HasField("node_id"):
                    rec[1] = up.node_id.hex()
                rec[2] = rec[2] or any(s in up.state_ts_ns for s in ends)
                stamps = [t for t in up.state_ts_ns.values() if t]
                if stamps:
                    rec[3] = min(stamps) if rec[3] is None else min(rec[3], *stamps)
        return {k: v[:3] for k, v in seen.items() if k not in other and v[3] is not None and v[3] >= self._since_ns}

    def _settled(self, timeout_s: float) -> dict[tuple[bytes, int], list]:
        """The window's tasks once each has a name, a node and an end and nothing new has come for 1.5 report
        intervals (a task whose events all are still on their way), or after timeout_s (an attempt cut short
        by a lost node never reports its end)."""
        quiet_s = 1.5 * int(os.environ.get("RAY_task_events_report_interval_ms", "1000")) / 1000
        start = time.monotonic()
        last, since = None, start
        while True:
            tasks = self._window()
            now = time.monotonic()
            if tasks != last:
                last, since = tasks, now
            complete = all(name and node and ended for name, node, ended in tasks.values())
            if (complete and now - since >= quiet_s) or now - start >= timeout_s:
                return tasks
            time.sleep(0.25)

    @staticmethod
    def _actors() -> dict[str, tuple[str, str]]:
        from ray._private.state import state

        return {
            a: (_actor_kind(info["ActorClassName"]), info["Address"]["NodeID"])
            for a, info in state.actor_table(None).items()
            if info["Address"]["NodeID"] and _actor_kind(info["ActorClassName"])
        }

    def result(self, timeout_s: float = 30.0) -> dict:
        """{"tasks": {node: {kind: n}}, "actors": {node: {class: n}}, "nodes_used": n}, every node named."""
        tasks: dict[str, Counter] = defaultdict(Counter)
        for name, node, _ in self._settled(timeout_s).values():
            kind = _task_kind(name) if name and node else None
            if kind:
                tasks[self.names.get(node, node[:8])][kind] += 1
        actors: dict[str, Counter] = defaultdict(Counter)
        for a, (cls, node) in self._actors().items():
            if a not in self._actors_before:
                actors[self.names.get(node, node[:8])][cls] += 1
        used = {n for n, c in tasks.items() if sum(c.values())} | {n for n, c in actors.items() if sum(c.values())}
        order = sorted(set(tasks) | set(actors), key=lambda n: (n != HEAD, n))
        return {
            "tasks": {n: dict(sorted(tasks[n].items())) for n in order if tasks[n]},
            "actors": {n: dict(sorted(actors[n].items())) for n in order if actors[n]},
            "nodes_used": len(used - {HEAD}) or len(used),
        }


# --- what "the same output" means --------------------------------------------------------------------

# The columns a synthetic row is compared on besides its pixels: everything in SYNTH_SCHEMA but `image`
# (its PNG bytes: the decoded pixels are compared instead, so a different zlib would not count).
_COMPARED = ("face_id", "source_face_id", "subject", "label", "label_name", "source_label", "fold", "checkpoint")


def _row_digests(table) -> list[tuple[tuple[str, int], bytes]]:
    """((source face, target), sha256 of the row's columns and decoded pixels) for each row."""
    from PIL import Image

    cols = {c: table[c].to_pylist() for c in (*_COMPARED, "score", "image")}
    out = []
    for i in range(table.num_rows):
        h = hashlib.sha256()
        for c in _COMPARED:
            h.update(f"{c}={cols[c][i]!r};".encode())
        score = cols["score"][i]
        h.update(b"score=none;" if score is None else np.float32(score).tobytes())
        pixels = np.asarray(Image.open(io.BytesIO(cols["image"][i])))
        h.update(f"{pixels.shape}{pixels.dtype}".encode())
        h.update(pixels.tobytes())
        out.append(((cols["source_face_id"][i], cols["label"][i]), h.digest()))
    return out


def output_checksums(store, run: str, fold) -> dict:
    """Checksums of a fold's synthetic output, listed by its manifest.

    The same output means: the same rows, keyed by (source face, target expression), each with equal
    columns (face_id, subject, labels, fold, generator checkpoint id, score) and equal decoded pixels.
    The order rows were written in and the PNG bytes do not count. "shards": per shard file, sha256 of
    its rows' digests in key order; "fold": the same over every row of the fold (independent of how rows
    were cut into shards); "files": the sidecar's sha256 of the file's bytes, for a stricter look.
    """
    import pyarrow.parquet as pq

    layout = store.run(run)
    manifest = store.read_json(layout.manifest(fold))
    shards, files, every = {}, {}, []
    for s in manifest["shards"]:
        table = pq.read_table(layout.synthetic_file(fold, s["file"]), filesystem=store.arrow_fs)
        rows = sorted(_row_digests(table))
        shards[s["file"]] = hashlib.sha256(b"".join(d for _, d in rows)).hexdigest()
        files[s["file"]] = s["sha256"]
        every += rows
    every.sort()
    return {
        "shards": shards,
        "files": files,
        "rows": len(every),
        "fold": hashlib.sha256(b"".join(d for _, d in every)).hexdigest(),
    }


def same_output(a: dict, b: dict) -> dict:
    """Compares two `output_checksums`: {"fold": bool, "shards": bool, "files": bool, "differ": [files]}."""
    differ = sorted(f for f in set(a["shards"]) | set(b["shards"]) if a["shards"].get(f) != b["shards"].get(f))
    return {
        "fold": a["fold"] == b["fold"],
        "shards": not differ,
        "files": a["files"] == b["files"],
        "differ": differ,
    }
