"""Stage 2, train: one Ray Train `TorchTrainer` per fold, all requested folds at once.

    fersnet train --store URI --dataset NAME --run NAME [--folds all|0,3,7 --variant fersnet --preset paper]

Layout in the store:
    runs/<run>/config.json                    data set + experiment; a re-run must match it
    runs/<run>/fold-<k>/checkpoint-epoch-NNNN/ state.pt (+ meta.json): model, optimisers, schedulers, epoch
    runs/<run>/fold-<k>/evaluation.json        test accuracy and confusion matrix of the final model
    runs/<run>/final/                          `--folds final`: one model on every subject, no test split;
                                               its evaluation.json records no held-out accuracy (there is none)
    runs/<run>/evaluation.json                 all folds: per fold, mean ± std (and the final model's facts)

Ray is used at the marked places only: the worker loop (`train_fold`: prepare modules, report
metrics and checkpoints, read the checkpoint to resume) and the driver (`train`: one trainer per
fold). The epoch itself is `loop.train_epoch`, plain PyTorch.

Resuming: a failed worker group (a lost node) restarts from the newest complete checkpoint (FailureConfig); a
re-run of the same command finds each fold's newest complete checkpoint in the store and goes on
from the epoch after it, never from epoch 0.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch

from fersnet_ray import foldkey
from fersnet_ray.checkpoint import checkpoint_epoch, latest_checkpoint, report_epoch, resume_state
from fersnet_ray.foldkey import FINAL, Fold
from fersnet_ray.model import has_synthesis
from fersnet_ray.runtime import root_cause
from fersnet_ray.store import S3_RETRIES, Store, StoreError, report_retries
from fersnet_ray.train.config import Experiment, config_diff

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """A run that cannot start or resume; the message is one line, safe to print."""


@dataclass(frozen=True)
class TrainJob:
    store: str
    dataset: str
    run: str
    experiment: dict  # Experiment.to_dict()
    folds: tuple[Fold, ...]  # fold numbers and/or "final" (fersnet_ray.foldkey)
    workers_per_fold: int = 1
    gpus_per_fold: float = 0.0  # total GPUs of one fold, split over its workers (fractions share a GPU)
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    parallel_folds: int | None = None  # folds training at once; None: as many as the cluster holds now


# --- Ray marked place 1 of 2: the worker loop ------------------------------------------------------


def train_fold(config: dict) -> None:
    """Ray Train worker function for one fold (every worker of the fold runs it)."""
    import ray.train
    import ray.train.torch

    from fersnet_ray import progress
    from fersnet_ray.train import identity as ident
    from fersnet_ray.train.data import TargetSampler, load_fold, missing_classes
    from fersnet_ray.train.loop import FoldState, evaluate, progress_line, train_epoch

    logging.getLogger().setLevel(logging.WARNING)  # Ray Train logs every report at INFO on a root-level logger
    job = TrainJob(**config["job"])
    fold = config["fold"]
    exp = Experiment.from_dict(job.experiment)
    store = Store.from_uri(job.store)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))

    name = foldkey.label(fold)  # "fold 3" or "final", in every message
    train_set, test_set, card = load_fold(store, job.dataset, fold, exp.train.load_size)  # final: test_set empty
    held_out = len(test_set) > 0
    if rank == 0:
        for c in missing_classes(train_set, exp.model.num_classes):
            print(f"warning: {name}: training split has no '{card['classes'][c]}' face", flush=True)
    train_set, test_set = train_set.to(device), test_set.to(device)

    state_dict = resume_state(store, store.fold_dir(job.run, fold))

    seed = exp.train.seed + foldkey.seed_offset(fold)
    identity_net = None
    if exp.train.identity != "none" and exp.train.lambda_idt_end > 0 and has_synthesis(exp.model.variant):
        if state_dict is not None and "identity" in state_dict:
            identity_net = ident.LightCNN9(num_classes=state_dict["identity"]["fc2.weight"].shape[0])
            identity_net.load_state_dict(state_dict["identity"])
        elif exp.train.identity == "train":
            identity_net = ident.train_identity_net(train_set, exp.train.identity_epochs, device, seed=seed)
            if rank == 0:
                acc = ident.identity_accuracy(identity_net, train_set)
                print(
                    f"{name}: identity net trained on {len(set(train_set.subjects))} subjects, train acc {acc:.3f}",
                    flush=True,
                )
        else:
            identity_net = ident.load_identity_weights(exp.train.identity)
        identity_net = identity_net.to(device).eval().requires_grad_(False)

    from dataclasses import replace

    exp = Experiment(exp.model, replace(exp.train, seed=seed))
    state = FoldState.create(exp, device, identity_net)
    if state_dict is not None:
        state.load_state_dict(state_dict)
        if rank == 0:
            print(f"{name}: resuming at epoch {state.epoch + 1}/{exp.train.epochs}", flush=True)
    ddp_model = ddp_disc = None
    if world > 1:
        ddp_model = ray.train.torch.prepare_model(state.model, move_to_device=False)
        ddp_disc = ray.train.torch.prepare_model(state.disc, move_to_device=False) if state.disc else None
    shard = train_set.shard(rank, world) if world > 1 else train_set
    # Each worker draws targets among its own faces, with its own seed under DDP.
    sampler = TargetSampler(shard.labels, shard.subjects, seed * 1000 + rank if world > 1 else seed)

    t = exp.train
    start_epoch = state.epoch  # recorded with every epoch: shows where this attempt (re)started
    while state.epoch < t.epochs:
        metrics = train_epoch(state, shard, sampler, ddp_model, ddp_disc)
        metrics["start_epoch"] = start_epoch
        last = state.epoch == t.epochs
        # The final model has no test faces: its history holds no accuracy rather than a made-up one.
        if held_out and (last or (t.eval_every and state.epoch % t.eval_every == 0)):
            result = evaluate(state.model, test_set, t.crop_size, amp=t.amp)
            metrics.update(accuracy=result["accuracy"])
        metrics["lr"] = float(state.opt_g.param_groups[0]["lr"])
        metrics["wall"] = time.time()  # epoch-end stamp: throughput including reports and checkpoints
        state.history.append(metrics)
        if rank == 0:
            print(progress_line(name, metrics, t.epochs), flush=True)
            acc = next((f"test_acc {m['accuracy']:.3f}" for m in reversed(state.history) if "accuracy" in m), "")
            progress.report(name, state.epoch, t.epochs, acc)  # the driver's bar, on a terminal
        report_epoch(metrics, state, last or state.epoch % t.checkpoint_every == 0, rank)

    if rank == 0:
        if held_out:
            result = evaluate(state.model, test_set, t.crop_size, amp=t.amp)
        else:
            # Accuracy on the faces it trained on: a sanity check that it learned, never an estimate for new faces.
            seen = evaluate(state.model, train_set, t.crop_size, amp=t.amp)
            result = foldkey.final_evaluation(
                training_faces=len(train_set),
                training_subjects=len(set(train_set.subjects.tolist())),
                training_faces_accuracy=seen["accuracy"],
            )
        result.update(fold=fold, epochs=state.epoch, classes=card["classes"], variant=exp.model.variant)
        store.write_json(f"{store.fold_dir(job.run, fold)}/history.json", state.history)  # loss curves
        store.write_json(f"{store.fold_dir(job.run, fold)}/evaluation.json", result)  # written last: fold done
        retries = S3_RETRIES.take()  # this worker's checkpoint uploads and reads (workers log only errors)
        if retries:
            print(f"{name}: s3: retried {retries} request(s) (throttling, 5xx or dropped connections)", flush=True)


# --- Ray marked place 2 of 2: the driver, one TorchTrainer per fold ---------------------------------


def save_run_config(store: Store, job: TrainJob, resume: bool, overwrite: bool) -> TrainJob:
    """Writes runs/<run>/config.json, or checks a re-run against it (see `fersnet train --help`)."""
    path = f"{store.run_dir(job.run)}/config.json"
    wanted = {"dataset": job.dataset, "experiment": job.experiment}
    if overwrite:
        store.remove(store.run_dir(job.run))
    elif store.exists(path):
        stored = store.read_json(path)
        if stored != json.loads(json.dumps(wanted)):
            if not resume:
                diff = config_diff(stored, wanted)
                raise TrainError(
                    f"run {job.run!r} exists with a different config ({diff}); pass --resume to continue it with "
                    "its stored config, or --overwrite to start it again"
                )
            return TrainJob(**{**asdict(job), "dataset": stored["dataset"], "experiment": stored["experiment"]})
        return job
    store.write_json(path, wanted)
    return job


def _trainer(job: TrainJob, fold: int):
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    store = Store.from_uri(job.store)
    use_gpu = job.gpus_per_fold > 0
    per_worker = {"CPU": job.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = job.gpus_per_fold / job.workers_per_fold
    return TorchTrainer(
        train_fold,
        train_loop_config={"job": asdict(job), "fold": fold},
        scaling_config=ScalingConfig(
            num_workers=job.workers_per_fold, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=store.fold_name(fold),
            storage_path=store.run_dir(job.run),
            storage_filesystem=store.arrow_write_fs,
            failure_config=FailureConfig(max_failures=job.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def train(job: TrainJob, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains every requested fold at once on the current Ray cluster; returns the evaluation summary."""
    from dataclasses import replace

    from fersnet_ray.table import open_table_file, read_card, table_files

    store = Store.from_uri(job.store)
    store.check_writable()
    job = replace(job, store=store.uri)  # absolute: Ray Train workers run in their own directories

    card = read_card(store, job.dataset)
    for path in table_files(store, job.dataset):  # a foreign or corrupt table fails here once, not in every fold
        open_table_file(store, path)
    foldkey.check_folds(job.folds, card["folds"], job.dataset, TrainError)
    exp = Experiment.from_dict(job.experiment)
    if exp.model.num_classes != len(card["classes"]) or exp.model.in_channels != card["alignment"]["channels"]:
        raise TrainError(
            f"experiment expects {exp.model.num_classes} classes / {exp.model.in_channels} channels; "
            f"data set {job.dataset!r} has {len(card['classes'])} / {card['alignment']['channels']}"
        )
    job = save_run_config(store, job, resume, overwrite)
    epochs = Experiment.from_dict(job.experiment).train.epochs

    def run_fold(fold: int) -> None:
        resume_from = latest_checkpoint(store, job.run, fold)  # the workers look it up again at every start
        if resume_from is not None:
            done = checkpoint_epoch(store, resume_from)
            if done >= epochs and store.exists(f"{store.fold_dir(job.run, fold)}/evaluation.json"):
                print(f"{foldkey.label(fold)}: finished earlier ({done}/{epochs} epochs), skipped", flush=True)
                return
        try:
            _trainer(job, fold).fit()
        except Exception as e:  # noqa: BLE001 - Ray wraps the worker's error; keep its own message
            raise TrainError(f"{foldkey.label(fold)} failed: {root_cause(e)}") from None

    parallel = job.parallel_folds or folds_that_fit(job.workers_per_fold, job.cpus_per_worker, job.gpus_per_fold)
    from fersnet_ray.progress import Progress

    with Progress("train", board=True):  # bars of epochs per fold on a terminal; the workers' lines elsewhere
        run_folds(job.folds, run_fold, TrainError, parallel)
    report_retries("while training")
    return evaluate_run(store, job.run)


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


def run_folds(folds, run_fold, error: type[Exception], parallel: int | None = None) -> None:
    """Runs `run_fold(k)` for every fold, `parallel` at once (default: all); raises `error` joining
    every fold's message.

    One thread per fold: each `fit()` blocks while its trainer runs on the cluster, so the folds
    train side by side, as many at once as the cluster's resources allow.
    """
    errors: list[str] = []
    lock = threading.Lock()

    def guarded(fold: int) -> None:
        try:
            run_fold(fold)
        except error as e:
            with lock:
                errors.append(str(e))

    with ThreadPoolExecutor(max_workers=max(1, min(parallel or len(folds), len(folds)))) as pool:
        list(pool.map(guarded, folds))
    if errors:
        raise error("; ".join(errors))


def evaluate_run(store: Store, run: str) -> dict:
    """Collects every fold's evaluation.json into runs/<run>/evaluation.json (per fold, mean ± std)."""
    run_dir = store.run_dir(run)
    if not store.exists(f"{run_dir}/config.json"):
        raise StoreError(f"no run {run!r} in {store.uri}")
    summary = summarize_folds(store, run_dir, run)
    if summary is None:
        raise TrainError(f"run {run!r} has no evaluated fold yet")
    return summary


def summarize_folds(store: Store, run_dir: str, run: str) -> dict | None:
    """`<run_dir>/fold-*/evaluation.json` → `<run_dir>/evaluation.json` (None if no fold is evaluated).

    Serves training (runs/<run>/) and fine-tuning (runs/<run>/finetune/) alike: same files, same summary.
    A finished final model (`<run_dir>/final/`) is listed apart under "final", with no accuracy: it
    enters no mean, and the mean ± std of the folds is what estimates its accuracy on new subjects.
    """
    folds = {}
    for path in sorted(store.fs.ls(run_dir, detail=False)):
        name = path.rsplit("/", 1)[-1]
        if name.startswith("fold-") and store.exists(f"{path}/evaluation.json"):
            result = store.read_json(f"{path}/evaluation.json")
            folds[int(name[5:])] = {k: result[k] for k in ("accuracy", "correct", "total", "confusion", "epochs")}
    final_path = f"{run_dir}/{store.fold_name(FINAL)}/evaluation.json"
    final = store.read_json(final_path) if store.exists(final_path) else None
    if not folds and final is None:
        return None
    summary = {
        "run": run,
        "config": store.read_json(f"{run_dir}/config.json"),
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
    path = f"{run_dir}/evaluation.json"
    # A re-run of finished folds leaves the summary untouched (same bytes, same modification time).
    if not store.exists(path) or store.read_json(path) != json.loads(json.dumps(summary)):
        store.write_json(path, summary)
    return summary
