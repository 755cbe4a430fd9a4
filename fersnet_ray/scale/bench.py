"""The scale benchmark: every stage on a drawn data set of N faces, and again on N/10, local and s3://.

    python jobs/bench_scale.py --faces 100000 --store both --out scale.json

Per store and size, on the current Ray (the driver is this process):
    prepare      the demo data set, N/21 subjects × 7 expressions × 3 frames, `--align none`, 10 folds
    (stand-in)   a `tiny` FERSNet run whose fold checkpoint holds *untrained* (seeded) weights, marked as
                 one finished epoch: synthesis and fine-tuning cost the same per image trained or not,
                 and training 90,000 faces on 2 CPUs would take longer than everything else together
    synthesize   fold 0, every other expression of every training face (6 rows per face), no recogniser
    verify       fold 0's shards against the face table and the manifest
    finetune     one epoch of fold 0, streamed (Ray Data re-reads and decodes; nothing cached)

Each stage reports wall time, items/s, driver peak RSS, the peak of Ray's object store, bytes spilled,
and the Parquet files it wrote or read (files, MB, row groups, rows per group). Measured beside them,
in the same process: the demo generator alone (faces/s of what one prepare task does per face), the
generator's forward pass alone (`synth.bench.bare_rate`, the actor's thread count), and the plain
fine-tuning loop over faces already decoded in memory. On S3 it also reads the same files with
pyarrow's native S3 filesystem and with the fsspec wrapper, side by side (`s3.compare_arrow_s3`).

Each (store, size) runs in a fresh Python process with its own local Ray (and, for s3, its own moto
server), so every size's driver RSS starts from the same point. Results are written to `out` after
each; a re-run with the same settings skips the ones already there.

With `nodes` N > 0 each (store, size) runs twice: on one node (the local Ray, as above, with as many
CPUs as the cluster's worker nodes together) and on a
simulated cluster of a head with no CPUs and N worker nodes of `cpus_per_node` (`scale.cluster`). Each
stage then records the tasks and actors that ran on each node, and synthesis the checksums of its output
(`output_checksums`: the same rows with the same pixels per (source face, target)), so the table says
whether the cluster wrote what one node writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from fersnet_ray.runtime import torch_threads
from fersnet_ray.scale.probe import StageProbe, cpu_count, parquet_layout
from fersnet_ray.store import Store

FACES_PER_SUBJECT = 21  # the demo's 7 expressions × 3 frames
STORES = ("local", "s3")


@dataclass(frozen=True)
class ScaleConfig:
    faces: int = 100_000
    stores: tuple[str, ...] = STORES
    local_store: str = "./scale-store"  # the local store's folder (the s3 one lives on moto)
    shrink: int = 10  # also measured at faces // shrink, so growth shows
    folds: int = 10
    fold: int = 0
    actors: int = 1  # generator actors
    batch_size: int = 256  # generator batch
    rows_per_shard: int = 1200
    finetune_batch: int = 64
    plain_rows: int = 8192  # rows the plain fine-tuning loop runs over (a rate needs no more)
    max_rows: int | None = None  # synthesize --max-rows
    nodes: int = 0  # > 0: also on a head + this many worker nodes (ray.cluster_utils.Cluster), see the module doc
    cpus_per_node: int = 1  # each simulated worker node's CPUs
    finetune_workers: int = 1  # Ray Train workers of the fine-tuning fold

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.faces // self.shrink, self.faces) if self.shrink > 1 else (self.faces,)

    def keys(self, kind: str, faces: int) -> list[str]:
        """The runs of one store and size: "local/420" on one node, and "local/420/3-nodes" with `nodes`."""
        return [f"{kind}/{faces}"] + ([f"{kind}/{faces}/{self.nodes}-nodes"] if self.nodes else [])


def parse_key(key: str) -> tuple[str, int, int]:
    """ "local/420/3-nodes" → ("local", 420, 3); one node (the local Ray) is 0."""
    kind, faces, *rest = key.split("/")
    return kind, int(faces), int(rest[0].split("-")[0]) if rest else 0


def generator_rate(seconds: float = 3.0) -> dict:
    """Faces/s in this process of the demo generator: drawing alone, and what one prepare task does per
    face (draw, adapter PNG, decode, centre-crop, resize, PNG), one thread."""
    from fersnet_ray.prepare import demo
    from fersnet_ray.prepare.job import load_face
    from fersnet_ray.prepare.sources import Demo

    adapter = Demo(subjects=10_000)
    faces = adapter.list().faces

    def rate(fn) -> float:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn(faces[n % len(faces)])
            n += 1
        return n / (time.perf_counter() - start)

    return {
        "draw_faces_per_s": round(rate(lambda f: demo.render_face(0, int(f.subject[1:]), f.label, f.frame)), 1),
        "prepare_faces_per_s": round(rate(lambda f: load_face(adapter.read(f), "none", 110, 1)), 1),
    }


def stand_in_run(store: Store, dataset: str, run: str) -> None:
    """runs/<run>: the `tiny` preset, 1 epoch, and fold checkpoints of untrained weights (see the module doc)."""
    import tempfile

    from fersnet_ray.checkpoint import META_FILE, STATE_FILE, write_checkpoint_dir
    from fersnet_ray.table import read_card
    from fersnet_ray.train.config import make_experiment
    from fersnet_ray.train.loop import FoldState

    card = read_card(store, dataset)
    exp = make_experiment("tiny", num_classes=len(card["classes"]), in_channels=card["alignment"]["channels"], epochs=1)
    store.remove(store.run(run).dir)
    store.write_json(store.run(run).config(), {"dataset": dataset, "experiment": exp.to_dict()})
    state = FoldState.create(exp)
    state.epoch = 1
    folder = store.run(run).checkpoint(0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint_dir(state.state_dict(), tmp)
        for name in (STATE_FILE, META_FILE):
            with open(os.path.join(tmp, name), "rb") as f:
                store.write_bytes(f"{folder}/{name}", f.read())


def plain_finetune_rate(store: Store, run: str, fold: int, batch_size: int, rows: int) -> float:
    """Images/s of `finetune_epoch` over `rows` synthetic faces decoded in memory beforehand: no Ray, one thread."""
    import pyarrow.parquet as pq

    from fersnet_ray.checkpoint import latest_checkpoint, read_checkpoint
    from fersnet_ray.finetune.loop import FinetuneConfig, FinetuneState, decode_batch, finetune_epoch
    from fersnet_ray.train.config import Experiment

    state_dict = read_checkpoint(store, latest_checkpoint(store, run, fold))
    exp = Experiment.from_dict(state_dict["experiment"])
    layout = store.run(run)
    tables, have = [], 0
    for shard in store.read_json(layout.manifest(fold))["shards"]:
        if have >= rows:
            break
        path = layout.synthetic_file(fold, shard["file"])
        t = pq.read_table(path, filesystem=store.arrow_fs, columns=["image", "label"])
        tables.append(t)
        have += t.num_rows
    batches = []
    for t in tables:
        for b in t.to_batches(max_chunksize=batch_size):
            d = decode_batch({"image": b["image"].to_pylist(), "label": b["label"].to_numpy()}, exp.train.load_size)
            batches.append({"image": torch.from_numpy(d["image"]), "label": torch.from_numpy(d["label"])})
    cfg = FinetuneConfig(epochs=1, batch_size=batch_size)
    with torch_threads(1):  # the fine-tuning worker's share: cpus_per_worker=1
        state = FinetuneState.create(exp, cfg, state_dict["model"], "cpu")
        m = finetune_epoch(state, batches[: max(1, rows // batch_size)])
    return m["images_per_s"]


def run_size(uri: str, faces: int, cfg: ScaleConfig, names: dict[str, str] | None = None) -> dict:
    """The four stages on one store and size; a dict of per-stage figures.

    names: {node id: name} of the cluster (`local_cluster`); each stage's tasks and actors per node are
    counted under these names (one node: "head").
    """
    from fersnet_ray.finetune.job import FinetuneJob, finetune
    from fersnet_ray.finetune.loop import FinetuneConfig
    from fersnet_ray.prepare.job import PrepareConfig, prepare
    from fersnet_ray.scale.cluster import Placement, node_names, output_checksums
    from fersnet_ray.synth.bench import bare_rate
    from fersnet_ray.synth.job import SynthJob, synthesize
    from fersnet_ray.synth.verify import verify_run
    from fersnet_ray.table import table_files

    subjects = faces // FACES_PER_SUBJECT
    if subjects < 2 * cfg.folds:
        raise ValueError(
            f"{faces} faces are {subjects} demo subjects: too few for {cfg.folds} folds (--faces ≥ "
            f"{2 * cfg.folds * FACES_PER_SUBJECT * cfg.shrink} with --shrink {cfg.shrink}, or fewer --folds)"
        )
    store = Store.from_uri(uri)
    name = run = f"scale-{faces}"
    out: dict = {"store": store.protocol, "faces": subjects * FACES_PER_SUBJECT, "subjects": subjects}
    names = names or node_names()

    seen = Placement(names)
    with StageProbe() as probe:
        card = prepare(
            PrepareConfig(dataset="demo", store=uri, name=name, folds=cfg.folds, options={"subjects": subjects})
        ).card
    n = card["num_faces"]
    out["prepare"] = {**probe.result(), "items": n, "layout": parquet_layout(store, table_files(store, name))}
    out["prepare"]["placement"] = seen.result()

    stand_in_run(store, name, run)
    with torch_threads(1):  # a generator actor holds one CPU, so torch runs one thread there
        bare = bare_rate(store, run, cfg.fold, cfg.batch_size)
    job = SynthJob(
        store=uri,
        run=run,
        folds=(cfg.fold,),
        actors=cfg.actors,
        batch_size=cfg.batch_size,
        rows_per_shard=cfg.rows_per_shard,
        overwrite=True,
        quality=False,
        max_rows=cfg.max_rows,
    )
    seen = Placement(names)
    with StageProbe() as probe:
        manifest = synthesize(job)[cfg.fold]
    shards = [store.run(run).synthetic_file(cfg.fold, s["file"]) for s in manifest["shards"]]
    synth = {**probe.result(), "items": manifest["rows"], "layout": parquet_layout(store, shards)}
    synth["placement"] = seen.result()
    if cfg.nodes:  # one node's and the cluster's output, compared in the table (decodes every image: not timed)
        synth["output"] = output_checksums(store, run, cfg.fold)
    synth["bare_images_per_s"] = round(bare, 1)
    synth["pipeline_over_bare"] = round(manifest["rows"] / synth["wall_s"] / (bare * cfg.actors), 3)
    out["synthesize"] = synth

    with StageProbe() as probe:
        problems = verify_run(store, run, (cfg.fold,))[cfg.fold]
    out["verify"] = {**probe.result(), "items": manifest["rows"], "problems": problems[:3]}

    ft = FinetuneConfig(epochs=1, batch_size=cfg.finetune_batch, cache=False)
    tune_job = FinetuneJob(
        store=uri, run=run, folds=(cfg.fold,), config=asdict(ft), overwrite=True, workers_per_fold=cfg.finetune_workers
    )
    seen = Placement(names)
    with StageProbe() as probe:
        finetune(tune_job)
    history = store.read_json(store.run(run).history(cfg.fold, ft.folder))
    tune = {**probe.result(), "items": int(history[-1]["images"]), "placement": seen.result()}
    tune["streamed_images_per_s"] = round(history[-1]["images_per_s"], 1)
    tune["plain_images_per_s"] = round(plain_finetune_rate(store, run, cfg.fold, cfg.finetune_batch, cfg.plain_rows), 1)
    tune["streamed_over_plain"] = round(tune["streamed_images_per_s"] / tune["plain_images_per_s"], 3)
    out["finetune"] = tune

    for stage in ("prepare", "synthesize", "verify", "finetune"):
        s = out[stage]
        s["per_s"] = round(s["items"] / max(s["wall_s"], 1e-9), 1)
    if store.protocol == "s3":
        from fersnet_ray.scale.s3 import compare_arrow_s3

        out["arrow_s3"] = {
            "face_table": compare_arrow_s3(store, table_files(store, name)),
            "shards": compare_arrow_s3(store, shards[:20]),
        }
    return out


def _load(path: str | None, cfg: ScaleConfig) -> dict:
    """Earlier results of the same settings (resume), else a fresh record."""
    fresh = {"config": json.loads(json.dumps(asdict(cfg))), "runs": {}}
    if path and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("config") == fresh["config"]:
            return old
    return fresh


def _save(path: str | None, result: dict) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)  # a crash never leaves half a results file


def measure(cfg: ScaleConfig, key: str, out: str, s3_uri: str | None = None, names: dict | None = None) -> dict:
    """One (store, size), `key` = "local/10000" (or "local/10000/3-nodes"), on the current Ray; added to
    the results in `out`. names: the cluster's nodes (`local_cluster`)."""
    import ray

    from fersnet_ray import __version__

    kind, faces, nodes = parse_key(key)
    uri = s3_uri if kind == "s3" else os.path.abspath(cfg.local_store)
    if uri is None:
        raise ValueError("the s3 store needs a running server (see `moto_server`)")
    load_before = os.getloadavg()[0]
    run = run_size(uri, faces, cfg, names)
    run["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]  # other work on the machine
    run["nodes"], run["ray_cpus"] = nodes or 1, ray.cluster_resources().get("CPU", 0)
    result = _load(out, cfg)
    if "generator" not in result:  # measured once, after the stages, outside their probes
        result["generator"] = generator_rate()
    result.update(
        fersnet_version=__version__,
        ray_cpus=ray.cluster_resources().get("CPU", 0),
        machine_cpus=cpu_count(),
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    result["runs"][key] = run
    _save(out, result)
    return result


def _measure_in_child(cfg: ScaleConfig, key: str, out: str) -> bool:
    """`measure` in a fresh Python: each size's driver RSS starts from the same point (and a size that
    dies, e.g. with its Ray, leaves the others' results)."""
    import subprocess
    import sys

    config = json.dumps({**asdict(cfg), "stores": list(cfg.stores)})
    return subprocess.run([sys.executable, "-m", "fersnet_ray.scale.bench", config, key, out]).returncode == 0


def bench_scale(cfg: ScaleConfig, out: str) -> tuple[dict, list[str]]:
    """Every (store, size) not yet in `out`, each in its own process with its own Ray (and moto for s3).

    Returns the results and the keys whose process failed (their error is on stderr; the same call
    measures them again).
    """
    failed = []
    for kind in cfg.stores:
        for faces in cfg.sizes:
            for key in cfg.keys(kind, faces):
                if key in _load(out, cfg)["runs"]:
                    print(f"{key}: measured earlier, skipped", flush=True)
                    continue
                print(f"{key}: prepare, synthesize, verify, finetune ...", flush=True)
                if not _measure_in_child(cfg, key, out):
                    failed.append(key)
    return _load(out, cfg), failed


def _growth(result: dict, kind: str, stage: str, field: str, cfg: ScaleConfig) -> str:
    if len(cfg.sizes) < 2:
        return "–"
    small, big = (result["runs"].get(f"{kind}/{n}") for n in cfg.sizes)  # one node's
    if not small or not big:
        return "–"
    return f"{big[stage][field] / max(small[stage][field], 1e-9):.2f}×"


def _placed(p: dict) -> str:
    """ "worker-1: Generator ×1 actor, 9 tasks (Generator 7, ...); worker-2: ..." from a `Placement` result."""
    parts = []
    for node in sorted(set(p["tasks"]) | set(p["actors"]), key=lambda n: (n != "head", n)):
        tasks = p["tasks"].get(node, {})
        what = [f"{k} ×{v}" for k, v in tasks.items()]
        what += [f"{k} actor ×{v}" for k, v in p["actors"].get(node, {}).items()]
        parts.append(f"{node}: {', '.join(what)}")
    return "; ".join(parts) or "nothing recorded"


def placement_lines(result: dict, cfg: ScaleConfig) -> list[str]:
    """Tasks and actors per node of each stage of the cluster runs, and whether their output is one node's."""
    lines = []
    for key, r in result["runs"].items():
        if r.get("nodes", 1) < 2:
            continue
        for stage in ("prepare", "synthesize", "verify", "finetune"):
            if "placement" in r[stage]:
                p = r[stage]["placement"]
                lines.append(f"{key} {stage} on {p['nodes_used']} node(s): {_placed(p)}")
        kind, faces, _ = parse_key(key)
        one = result["runs"].get(f"{kind}/{faces}", {}).get("synthesize", {}).get("output")
        many = r["synthesize"].get("output")
        if one and many:
            from fersnet_ray.scale.cluster import same_output

            same = same_output(one, many)
            n = len(many["shards"])
            lines.append(
                f"{key} vs {kind}/{faces} (one node), synthetic output: fold checksum "
                f"{'equal' if same['fold'] else 'DIFFERENT'} ({many['fold'][:12]} over {many['rows']:,} rows), "
                f"{n - len(same['differ'])}/{n} shards equal, file bytes {'equal' if same['files'] else 'differ'}"
            )
    return lines


def scale_table(result: dict) -> str:
    """The results as one Markdown table (a row per store × size × stage), then the ratios."""
    cfg = ScaleConfig(**{**result["config"], "stores": tuple(result["config"]["stores"])})
    lines = [
        "| store | faces | stage | wall s | items | items/s | driver RSS MB start → peak | object store peak MB "
        "| spilled MB | files | MB | row groups | rows/group |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in result["runs"].items():
        nodes = f", {r['nodes']} nodes" if r.get("nodes", 1) > 1 else ""
        for stage in ("prepare", "synthesize", "verify", "finetune"):
            s = r[stage]
            lay = s.get("layout")
            files = "| | |"
            if lay:
                low, high = lay["rows_per_group"]
                files = f"{lay['files']} | {lay['mb']} | {lay['row_groups']} | {low}–{high}"
            lines.append(
                f"| {key.split('/')[0]}{nodes} | {r['faces']:,} | {stage} | {s['wall_s']:.2f} | {s['items']:,} | {s['per_s']:.0f} | "
                f"{s.get('driver_rss_start_mb', 0):.0f} → {s['driver_peak_rss_mb']:.0f} | "
                f"{s['object_store_peak_mb']:.0f} | {s['spilled_mb']:.0f} | {files} |"
            )
    g = result.get("generator", {"draw_faces_per_s": float("nan"), "prepare_faces_per_s": float("nan")})
    lines += [
        "",
        f"demo generator, one thread: {g['draw_faces_per_s']:.0f} faces/s drawn, "
        f"{g['prepare_faces_per_s']:.0f} faces/s drawn + prepared; Ray CPUs {result.get('ray_cpus', 0):.0f}",
    ]
    for key, r in result["runs"].items():
        if "load_average" in r:
            lines.append(f"{key}: load average {r['load_average'][0]} before, {r['load_average'][1]} after")
    for key, r in result["runs"].items():
        syn, tune = r["synthesize"], r["finetune"]
        lines.append(
            f"{key}: synthesis pipeline ÷ bare generator {syn['pipeline_over_bare']:.2f} "
            f"({syn['per_s']:.0f} ÷ {syn['bare_images_per_s']:.0f} img/s × {cfg.actors} actor(s)); "
            f"streamed fine-tuning ÷ plain loop {tune['streamed_over_plain']:.2f} "
            f"({tune['streamed_images_per_s']:.0f} ÷ {tune['plain_images_per_s']:.0f} img/s)"
        )
    lines += placement_lines(result, cfg)
    for kind in cfg.stores:
        rss = ", ".join(
            f"{stage} {_growth(result, kind, stage, 'driver_peak_rss_mb', cfg)}"
            for stage in ("prepare", "synthesize", "verify", "finetune")
        )
        lines.append(f"{kind}: driver peak RSS growth {cfg.sizes[0]:,} → {cfg.sizes[-1]:,} faces: {rss}")
    for key, r in result["runs"].items():
        for what, c in r.get("arrow_s3", {}).items():
            lines.append(
                f"{key} pyarrow S3, {what} ({c['files']} files, {c['mb']} MB), native vs fsspec s: whole "
                f"{c['native']['whole_s']} vs {c['fsspec']['whole_s']}, a row group each "
                f"{c['native']['row_group_s']} vs {c['fsspec']['row_group_s']}, one column "
                f"{c['native']['column_s']} vs {c['fsspec']['column_s']} → {c['faster']} faster"
            )
    return "\n".join(lines)


if (
    __name__ == "__main__"
):  # python -m fersnet_ray.scale.bench CONFIG_JSON KEY OUT: one `measure`, as bench_scale runs it
    import sys

    from fersnet_ray.runtime import init_ray
    from fersnet_ray.scale.cluster import local_cluster
    from fersnet_ray.scale.s3 import moto_server

    config, key, out = sys.argv[1:4]
    cfg = ScaleConfig(**{**json.loads(config), "stores": tuple(json.loads(config)["stores"])})
    nodes = parse_key(key)[2]
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(moto_server()) if key.startswith("s3/") else None  # before Ray: workers inherit it
        names = stack.enter_context(local_cluster(nodes, cfg.cpus_per_node)) if nodes else None
        if not nodes:  # beside a cluster run: one node with the cluster's CPUs, so only the spreading differs
            init_ray(num_cpus=cfg.nodes * cfg.cpus_per_node or None)
        measure(cfg, key, out, s3, names)
