"""`fersnet predict` throughput against the bare model forward on the same faces, side by side in one run.

    python jobs/bench_predict.py --store ./fersnet-store --run demo --fold 0 --images 4000

    bare      images/s of the Recognizer's forward alone on the already-preprocessed faces (centre crop,
              [-1, 1], on the device; same batch size and precision), with as many threads as one
              classifier actor gets (its CPUs) and, for reference, with every core
    pipeline  images/s of `predict` end to end: list the folder, read each file, decode, convert, align,
              resize (load tasks), classify (actor), write the Parquet file; start-up included
    pipeline / bare   the issue's goal is >= 0.7

The images are the face table's faces written as PNG files (repeated to `images`), into a scratch
folder that is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import torch

from fersnet_ray.runtime import torch_threads
from fersnet_ray.store import Store
from fersnet_ray.table import read_faces
from fersnet_ray.train.data import decode_faces
from fersnet_ray.use.checkpoints import resolve
from fersnet_ray.use.predict import PredictJob, classify, predict
from fersnet_ray.use.recognizer import load_recognizer


def bare_rate(store: Store, run: str, fold: int, pngs: list[bytes], batch_size: int, threads: int) -> float:
    """Recognizer forward images/s over `pngs`, preprocessed beforehand (not timed), `threads` torch threads."""
    rec, prep, exp = load_recognizer(store, resolve(store, run, fold))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rec = rec.to(device)
    faces = decode_faces(pngs, prep.load_size).to(device)  # (N, C, L, L) uint8 on the device
    with torch_threads(threads):
        classify([rec], faces[:batch_size], prep, exp.train.amp, batch_size)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        classify([rec], faces, prep, exp.train.amp, batch_size)  # crop, scale, forward, softmax
        if device.type == "cuda":
            torch.cuda.synchronize()
        return len(faces) / (time.perf_counter() - start)


def bench_predict(
    store_uri: str,
    run: str,
    fold: int = 0,
    images: int = 4000,
    batch_size: int = 256,
    actors: int = 1,
    gpus_per_actor: float | None = None,
) -> dict:
    store = Store.from_uri(store_uri)
    config = store.run(run).read_config()
    table = read_faces(store, config["dataset"], columns=["image"])["image"].to_pylist()
    pngs = [table[i % len(table)] for i in range(images)]
    scratch = tempfile.mkdtemp(prefix="fersnet-bench-predict-")
    try:
        src = os.path.join(scratch, "images")
        os.makedirs(src)
        for i, png in enumerate(pngs):
            with open(os.path.join(src, f"{i:07d}.png"), "wb") as f:
                f.write(png)
        start = time.perf_counter()
        result = predict(
            PredictJob(
                store=store_uri,
                run=run,
                source=src,
                out=os.path.join(scratch, "predictions.parquet"),
                fold=fold,
                actors=actors,
                gpus_per_actor=gpus_per_actor,
                batch_size=batch_size,
            )
        )
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    actor_threads = 1 if not torch.cuda.is_available() else torch.get_num_threads()  # an actor holds 1 CPU
    bare = bare_rate(store, run, fold, pngs, batch_size, actor_threads)
    bare_all = bare_rate(store, run, fold, pngs, batch_size, os.cpu_count() or 1)
    pipeline = result["rows"] / seconds
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "images": images,
        "classified": result["rows"],
        "batch_size": batch_size,
        "actors": actors,
        "pipeline_seconds": seconds,
        "pipeline_images_per_s": pipeline,
        "bare_images_per_s": bare,
        "bare_threads": actor_threads,
        "bare_all_cores_images_per_s": bare_all,
        "pipeline_over_bare": pipeline / bare,
        "pipeline_over_bare_all_cores": pipeline / bare_all,
    }
