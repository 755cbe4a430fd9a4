"""One Ray Train scaffold for every per-fold stage: training (`train/job.py`) and fine-tuning (`finetune/job.py`).

A stage gives it a worker function and its per-epoch pieces; the scaffold does the Ray Train part the same
way for both:

    worker side (inside the worker function)
        w = start_worker(cpus_per_worker)              rank, world size, device; torch threads
        ddp = w.wrap(model)                            DDP under several workers, else None
        run_epochs(state, epochs, fold=k, worker=w, one_epoch=..., test_accuracy=..., ...)
                                                       history, progress, metrics and checkpoints per epoch
                                                       (test_accuracy None: the final model, nothing held out)
        finish_fold(run, k, stage, history, result)    history.json, then evaluation.json (the fold is done)

    driver side
        trainer = fold_trainer(worker_fn, config, scaling, store, storage_path, fold)
                                                       one fold's TorchTrainer
        fit_folds("train", folds, run_fold, TrainError, parallel)     every fold at once, as many as fit
        summarize_folds(run, stage)                    fold-*/evaluation.json (+ final/) → evaluation.json

A fold is a fold key (`fersnet_ray.foldkey`): a fold number k, or "final" (every subject, no test split),
whose folders `Store.fold_name` names and whose messages `foldkey.label` words.

Ray is imported here and in the stages' worker functions only; the epochs themselves (`train.loop.train_epoch`,
`finetune.loop.finetune_epoch`) are plain PyTorch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from fersnet_ray import foldkey, progress
from fersnet_ray.checkpoint import report_epoch
from fersnet_ray.foldkey import FINAL, Fold
from fersnet_ray.runtime import root_cause
from fersnet_ray.store import Run, Store


@dataclass(frozen=True)
class Scaling:
    """Resources of one fold's worker group, and how many folds run at once."""

    workers_per_fold: int = 1
    gpus_per_fold: float = 0.0  # total GPUs of one fold, split over its workers (fractions share a GPU)
    cpus_per_worker: float = 1.0
    max_failures: int = 2  # worker-group restarts (from the newest checkpoint) before the fold fails
    parallel_folds: int | None = None  # None: as many as the cluster holds now (`folds_that_fit`)

    @classmethod
    def of(cls, job) -> "Scaling":
        """The scaling fields of a stage's job (TrainJob, FinetuneJob: they carry the same names)."""
        return cls(job.workers_per_fold, job.gpus_per_fold, job.cpus_per_worker, job.max_failures, job.parallel_folds)


# --- Ray marked place 1 of 2: the worker side ------------------------------------------------------


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: torch.device

    def wrap(self, module: torch.nn.Module | None, find_unused: bool = False) -> torch.nn.Module | None:
        """`module` wrapped for DDP when the fold has several workers; None with one (use the module itself).

        find_unused: some parameters get no gradient in a step (fine-tuning runs the recognition path, so
        FERSNet's synthesis head is idle); DDP then has to look for them or it stops at the first step.
        """
        if module is None or self.world == 1:
            return None
        import ray.train.torch

        kwargs = {"find_unused_parameters": True} if find_unused else None
        return ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy_kwargs=kwargs)


def start_worker(cpus_per_worker: float) -> Worker:
    """Inside a Ray Train worker: quiet logs, torch threads = the worker's CPUs, rank, world size and device."""
    import ray.train
    import ray.train.torch

    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs every report at INFO on a root-level logger
    torch.set_num_threads(max(1, int(cpus_per_worker)))
    ctx = ray.train.get_context()
    return Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())


def run_epochs(
    state,
    epochs: int,
    *,
    fold: Fold,
    worker: Worker,
    one_epoch: Callable[[], dict],
    test_accuracy: Callable[[], float] | None,
    eval_every: int,
    checkpoint_every: int,
    line: Callable[[dict], str],
    note: Callable[[dict], str],
) -> None:
    """Runs epochs until `state.epoch == epochs`, the loop every per-fold stage shares.

    Each epoch: `one_epoch()` (which advances `state.epoch`) returns its metrics; the held-out accuracy is added
    every `eval_every` epochs and at the last (never with `test_accuracy` None: the final model has no test
    faces, and its history holds no accuracy rather than a made-up one); the metrics go into `state.history`
    and to Ray Train, with a checkpoint of `state.state_dict()` every `checkpoint_every` epochs and at the
    last. Rank 0 prints `line(m)` and moves the driver's progress bar with `note(m)`.
    """
    while state.epoch < epochs:
        metrics = one_epoch()
        last = state.epoch == epochs
        if test_accuracy is not None and (last or (eval_every and state.epoch % eval_every == 0)):
            metrics["accuracy"] = test_accuracy()
        metrics["wall"] = time.time()  # epoch-end stamp: throughput including reports and checkpoints
        state.history.append(metrics)
        if worker.rank == 0:
            print(line(metrics), flush=True)
            progress.report(foldkey.label(fold), state.epoch, epochs, note(metrics))  # the driver's bar
        report_epoch(metrics, state, last or state.epoch % checkpoint_every == 0, worker.rank)


def finish_fold(run: Run, fold: Fold, stage: str | None, history: list[dict], result: dict) -> None:
    """The fold's history.json, then its evaluation.json: written last, it marks the fold done."""
    run.store.write_json(run.history(fold, stage), history)
    run.store.write_json(run.evaluation(fold, stage), result)


# --- Ray marked place 2 of 2: the driver side ------------------------------------------------------


def fold_trainer(
    worker_fn: Callable[[dict], None],
    config: dict,
    scaling: Scaling,
    store: Store,
    storage_path: str,
    fold: Fold,
    datasets: dict | None = None,
):
    """One fold's `TorchTrainer`: its checkpoints in `<storage_path>/<fold-k or final>/`, restarts from the newest.

    Ray Train writes through `store.arrow_write_fs` (s3fs on S3: see `fersnet_ray.store.ARROW_S3`).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = scaling.gpus_per_fold > 0
    per_worker = {"CPU": scaling.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = scaling.gpus_per_fold / scaling.workers_per_fold
    return TorchTrainer(
        worker_fn,
        train_loop_config=config,
        datasets=datasets,
        scaling_config=ScalingConfig(
            num_workers=scaling.workers_per_fold, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=store.fold_name(fold),
            storage_path=storage_path,
            storage_filesystem=store.arrow_write_fs,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def fit(trainer, error: type[Exception], what: str) -> None:
    """`trainer.fit()`; a failure becomes `error("<what> failed: <the worker's own message>")`."""
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps the worker's error; keep its own message
        raise error(f"{what} failed: {root_cause(e)}") from None


def folds_that_fit(workers: int, cpus_per_worker: float, gpus_per_fold: float, spare_cpus: float = 0) -> int:
    """How many folds' worker groups fit in the cluster's resources now (at least 1).

    More would queue inside Ray Train and fail its worker-group start-up timeout while the first
    folds run. On an autoscaling cluster that should grow, pass the number wanted explicitly.
    """
    import ray

    total = ray.cluster_resources()
    n = int(max(total.get("CPU", 1) - spare_cpus, 0) // max(workers * cpus_per_worker, 1e-9))
    if gpus_per_fold > 0:
        n = min(n, int(total.get("GPU", 0) // gpus_per_fold))
    return max(1, n)


def run_folds(folds: Iterable[Fold], run_fold, error: type[Exception], parallel: int | None = None) -> None:
    """Runs `run_fold(k)` for every fold, `parallel` at once (default: all); raises `error` joining
    every fold's message.

    One thread per fold: each `fit()` blocks while its trainer runs on the cluster, so the folds
    train side by side, as many at once as the cluster's resources allow.
    """
    folds = list(folds)
    errors: list[str] = []
    lock = threading.Lock()

    def guarded(fold: Fold) -> None:
        try:
            run_fold(fold)
        except error as e:
            with lock:
                errors.append(str(e))

    with ThreadPoolExecutor(max_workers=max(1, min(parallel or len(folds), len(folds)))) as pool:
        list(pool.map(guarded, folds))
    if errors:
        raise error("; ".join(errors))


def fit_folds(stage: str, folds: Iterable[Fold], run_fold, error: type[Exception], parallel: int | None) -> None:
    """`run_folds` under the driver's progress board (bars of epochs per fold on a terminal)."""
    with progress.Progress(stage, board=True):
        run_folds(folds, run_fold, error, parallel)


def summarize_folds(run: Run, stage: str | None = None) -> dict | None:
    """A stage's `fold-*/evaluation.json` → its `evaluation.json` (None if no fold is evaluated).

    Serves training (runs/<run>/) and fine-tuning (runs/<run>/finetune*/) alike: same files, same summary.
    A finished final model (`final/`) is listed apart under "final", with no accuracy: it enters no mean,
    and the mean ± std of the folds is what estimates its accuracy on new subjects.
    """
    store = run.store
    folds = {}
    for k in run.folds(stage):
        path = run.evaluation(k, stage)
        if store.exists(path):
            result = store.read_json(path)
            folds[k] = {key: result[key] for key in ("accuracy", "correct", "total", "confusion", "epochs")}
    final_path = run.evaluation(FINAL, stage)
    final = store.read_json(final_path) if store.exists(final_path) else None
    if not folds and final is None:
        return None
    summary = {
        "run": run.name,
        "config": store.read_json(run.config(stage)),
        "folds": {str(k): v for k, v in sorted(folds.items())},
    }
    if folds:
        accs = np.array([f["accuracy"] for f in folds.values()])
        summary.update(
            mean_accuracy=float(accs.mean()),
            std_accuracy=float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
            pooled_accuracy=sum(f["correct"] for f in folds.values()) / sum(f["total"] for f in folds.values()),
        )
    if final is not None:
        summary["final"] = {k: v for k, v in final.items() if k not in ("predictions", "confusion", "classes")}
    path = run.evaluation(None, stage)
    # A re-run of finished folds leaves the summary untouched (same bytes, same modification time).
    if not store.exists(path) or store.read_json(path) != json.loads(json.dumps(summary)):
        store.write_json(path, summary)
    return summary
