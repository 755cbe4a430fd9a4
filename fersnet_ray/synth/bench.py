"""Synthesis throughput and driver memory, measured side by side in one run on one device.

    python jobs/bench_synth.py --store ./fersnet-store --run demo --fold 0

    bare      images/s of the generator forward alone (same batch size and precision, data on device)
    pipeline  images/s of `synthesize` end to end (read → decode → generate → encode → write Parquet)
    pipeline / bare   target ≥ 0.8 on a GPU
    driver peak RSS growth while synthesising 1× and 10× the input (the training faces repeated):
              flat when the pipeline streams (nothing materialised on the driver)

The 10× input is a copy of the fold's face table with every training face repeated under new
face_ids, written to a scratch data set in the same store and removed afterwards.
"""

from __future__ import annotations

import resource
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from fersnet_ray.store import Store
from fersnet_ray.synth.job import SynthJob, synthesize
from fersnet_ray.table import read_card, read_faces


def bare_rate(store: Store, run: str, fold: int, batch_size: int, repeats: int = 20) -> float:
    """Generator forward images/s on random inputs already on the device, bf16 on GPU."""
    from fersnet_ray.model import create_model
    from fersnet_ray.train.config import Experiment
    from fersnet_ray.checkpoint import latest_checkpoint, read_checkpoint
    from fersnet_ray.train.loop import autocast

    state = read_checkpoint(store, latest_checkpoint(store, run, fold))
    exp = Experiment.from_dict(state["experiment"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(exp.model).to(device).eval()
    model.load_state_dict(state["model"])
    x = torch.rand(batch_size, exp.model.in_channels, exp.train.crop_size, exp.train.crop_size, device=device) * 2 - 1
    y = torch.randint(exp.model.num_classes, (batch_size,), device=device)
    with torch.no_grad(), autocast(device, exp.train.amp):
        model.synthesize(x, y)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model.synthesize(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch_size * repeats / (time.perf_counter() - start)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tenfold_copy(store: Store, dataset: str, fold: int, name: str, times: int) -> None:
    """A scratch data set: the fold's test faces once, its training faces `times` times (new ids)."""
    card = read_card(store, dataset)
    table = read_faces(store, dataset)
    is_train = pc.not_equal(table["fold"], fold)
    parts = [table.filter(pc.invert(is_train))]
    train = table.filter(is_train)
    for i in range(times):
        ids = pa.array([f"{f}-x{i}" for f in train["face_id"].to_pylist()])
        parts.append(train.set_column(0, "face_id", ids))
    out = store.dataset(name)
    store.remove(out.dir)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.concat_tables(parts), buf, row_group_size=512)
    store.write_bytes(out.part(0), buf.getvalue().to_pybytes())
    store.write_json(out.card, {**card, "name": name})


def bench_synth(
    store_uri: str,
    run: str,
    fold: int = 0,
    batch_size: int = 256,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    times: int = 10,
) -> dict:
    store = Store.from_uri(store_uri)
    bare = bare_rate(store, run, fold, batch_size)
    config = store.run(run).read_config()
    results = {}
    for label, factor in (("1x", 1), (f"{times}x", times)):
        # A scratch run sharing the trained checkpoint: its config points at the scratch data set.
        scratch = f"{run}-bench-{label}"
        name = f"{config['dataset']}-bench-{label}"
        _tenfold_copy(store, config["dataset"], fold, name, factor)
        store.remove(store.run(scratch).dir)
        store.write_json(store.run(scratch).config(), {**config, "dataset": name})
        src = store.run(run).fold(fold)
        for path in store.fs.find(src):
            if "/checkpoint-epoch-" in path:
                store.write_bytes(store.run(scratch).fold(fold) + path[len(src) :], store.read_bytes(path))
        before = _peak_rss_mb()
        start = time.perf_counter()
        manifest = synthesize(
            SynthJob(
                store=store_uri,
                run=scratch,
                folds=(fold,),
                actors=actors,
                gpus_per_actor=gpus_per_actor,
                batch_size=batch_size,
                quality=False,
            )
        )[fold]
        seconds = time.perf_counter() - start
        results[label] = {
            "rows": manifest["rows"],
            "seconds": seconds,
            "images_per_s": manifest["rows"] / seconds,
            "driver_peak_rss_growth_mb": _peak_rss_mb() - before,
        }
        store.remove(store.run(scratch).dir)
        store.remove(store.dataset(name).dir)
    big = results[f"{times}x"]
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "batch_size": batch_size,
        "bare_images_per_s": bare,
        "pipeline": results,
        "pipeline_over_bare": big["images_per_s"] / bare,
        "driver_peak_rss_mb": _peak_rss_mb(),
        "rows_ratio": big["rows"] / max(results["1x"]["rows"], 1),
    }
