"""Training throughput, measured side by side in one run on one device.

    python jobs/bench_train.py --store ./fersnet-store --dataset demo --preset tiny --epochs 6 --folds-sharing 2

Prints three numbers and two ratios:
    plain     images/s of one fold's loop in plain PyTorch (this process)
    ray       images/s of the same loop through Ray Train (one worker, the whole device)
    shared    aggregate images/s of K folds training at once, each with 1/K of the device
    ray / plain      (target ≥ 0.9 on a GPU: Ray's overhead per epoch is reports and checkpoints)
    shared / ray     (> 1 when one fold alone does not fill the device)

Throughput counts every epoch after the first (warm-up: cuDNN autotuning, allocator, Ray start),
from epoch-end wall-clock stamps, so checkpoint uploads and reports are inside the measurement.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from fersnet_ray.store import Store
from fersnet_ray.train.config import Experiment
from fersnet_ray.runtime import torch_threads
from fersnet_ray.train.data import TargetSampler, load_fold
from fersnet_ray.checkpoint import latest_checkpoint, read_checkpoint
from fersnet_ray.train.job import TrainJob, train
from fersnet_ray.train.loop import FoldState, train_epoch


def _rate(history: list[dict]) -> tuple[float, float, float]:
    """(images/s, window start, window end) over epochs 2..n from epoch-end stamps."""
    stamps = [m["wall"] for m in history]
    images = sum(m["images"] for m in history[1:])
    return images / max(stamps[-1] - stamps[0], 1e-9), stamps[0], stamps[-1]


def plain_rate(store: Store, dataset: str, exp: Experiment, device: str, threads: int) -> float:
    """Images/s of `train_epoch` on fold 0 in this process, no Ray, `threads` torch threads."""
    train_set, _, _ = load_fold(store, dataset, 0, exp.train.load_size)
    train_set = train_set.to(device)
    state = FoldState.create(exp, device)
    sampler = TargetSampler(train_set.labels, train_set.subjects, exp.train.seed)
    history = []
    with torch_threads(threads):
        for _ in range(exp.train.epochs):
            m = train_epoch(state, train_set, sampler)
            m["wall"] = time.time()
            history.append(m)
    return _rate(history)[0]


def ray_rates(store: Store, dataset: str, exp: Experiment, gpu: bool, k: int, cpus: float) -> tuple[float, float]:
    """(images/s of one fold alone through Ray Train, aggregate images/s of k folds sharing the device)."""
    run = f"bench-{int(time.time())}"
    base = dict(store=store.uri, dataset=dataset, experiment=exp.to_dict(), cpus_per_worker=cpus, max_failures=0)
    train(TrainJob(run=f"{run}-one", folds=(0,), gpus_per_fold=1.0 if gpu else 0.0, **base))
    one = _rate(read_checkpoint(store, latest_checkpoint(store, f"{run}-one", 0))["history"])[0]
    train(TrainJob(run=f"{run}-shared", folds=tuple(range(k)), gpus_per_fold=1.0 / k if gpu else 0.0, **base))
    rates = [_rate(read_checkpoint(store, latest_checkpoint(store, f"{run}-shared", f))["history"]) for f in range(k)]
    # Aggregate over the window where all k folds were training.
    start, end = max(r[1] for r in rates), min(r[2] for r in rates)
    shared = sum(r[0] for r in rates) if end <= start else sum(r[0] * (end - start) for r in rates) / (end - start)
    for suffix in ("one", "shared"):
        store.remove(store.run(f"{run}-{suffix}").dir)
    return one, shared


def bench_train(store_uri: str, dataset: str, exp: Experiment, k: int = 2, cpus: float = 1.0) -> dict:
    """Runs the three measurements on this machine's device (GPU if there is one) and returns them."""
    store = Store.from_uri(store_uri)
    gpu = torch.cuda.is_available()
    exp = Experiment(exp.model, replace(exp.train, checkpoint_every=max(1, exp.train.epochs // 2), eval_every=0))
    plain = plain_rate(store, dataset, exp, "cuda" if gpu else "cpu", max(1, int(cpus)))
    one, shared = ray_rates(store, dataset, exp, gpu, k, cpus)
    return {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "variant": exp.model.variant,
        "batch_size": exp.train.batch_size,
        "image_size": exp.model.image_size,
        "plain_images_per_s": plain,
        "ray_images_per_s": one,
        "shared_images_per_s": shared,
        "folds_sharing": k,
        "ray_over_plain": one / plain,
        "shared_over_one": shared / one,
    }
