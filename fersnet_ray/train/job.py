"""Stage 2, train: one Ray Train `TorchTrainer` per fold, all requested folds at once.

    fersnet train --store URI --dataset NAME --run NAME [--folds all|0,3,7 --variant fersnet --preset paper]

Layout in the store:
    runs/<run>/config.json                    data set + experiment; a re-run must match it
    runs/<run>/fold-<k>/checkpoint-epoch-NNNN/ state.pt (+ meta.json): model, optimisers, schedulers, epoch
    runs/<run>/fold-<k>/evaluation.json        test accuracy and confusion matrix of the final model
    runs/<run>/final/                          `--folds final`: one model on every subject, no test split;
                                               its evaluation.json records no held-out accuracy (there is none)
    runs/<run>/evaluation.json                 all folds: per fold, mean ± std (and the final model's facts)

Ray is used at the marked places only, through `fersnet_ray.scaffold` (the Ray Train part every per-fold
stage shares): the worker function (`train_fold`: what a fold trains and evaluates) and the driver
(`train`: one trainer per fold). The epoch itself is `loop.train_epoch`, plain PyTorch.

Resuming: a failed worker group (a lost node) restarts from the newest complete checkpoint (FailureConfig); a
re-run of the same command finds each fold's newest complete checkpoint in the store and goes on
from the epoch after it, never from epoch 0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from fersnet_ray import foldkey
from fersnet_ray.checkpoint import checkpoint_epoch, latest_checkpoint, resume_state
from fersnet_ray.foldkey import Fold
from fersnet_ray.model import has_synthesis
from fersnet_ray.scaffold import (
    Scaling,
    finish_fold,
    fit,
    fit_folds,
    fold_trainer,
    folds_that_fit,
    run_epochs,
    start_worker,
    summarize_folds,
)
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


# --- Ray marked place 1 of 2: the worker function (the Ray Train part is `scaffold`'s) -------------


def train_fold(config: dict) -> None:
    """Ray Train worker function for one fold (every worker of the fold runs it)."""
    from dataclasses import replace

    from fersnet_ray.train import identity as ident
    from fersnet_ray.train.data import TargetSampler, load_fold, missing_classes
    from fersnet_ray.train.loop import FoldState, evaluate, progress_line, train_epoch

    job = TrainJob(**config["job"])
    fold = config["fold"]
    exp = Experiment.from_dict(job.experiment)
    store = Store.from_uri(job.store)
    run = store.run(job.run)
    worker = start_worker(job.cpus_per_worker)
    rank, world, device = worker.rank, worker.world, worker.device

    name = foldkey.label(fold)  # "fold 3" or "final", in every message
    train_set, test_set, card = load_fold(store, job.dataset, fold, exp.train.load_size)  # final: test_set empty
    held_out = len(test_set) > 0
    if rank == 0:
        for c in missing_classes(train_set, exp.model.num_classes):
            print(f"warning: {name}: training split has no '{card['classes'][c]}' face", flush=True)
    train_set, test_set = train_set.to(device), test_set.to(device)

    state_dict = resume_state(store, run.fold(fold))

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

    exp = Experiment(exp.model, replace(exp.train, seed=seed))
    state = FoldState.create(exp, device, identity_net)
    if state_dict is not None:
        state.load_state_dict(state_dict)
        if rank == 0:
            print(f"{name}: resuming at epoch {state.epoch + 1}/{exp.train.epochs}", flush=True)
    ddp_model, ddp_disc = worker.wrap(state.model), worker.wrap(state.disc)
    shard = train_set.shard(rank, world) if world > 1 else train_set
    # Each worker draws targets among its own faces, with its own seed under DDP.
    sampler = TargetSampler(shard.labels, shard.subjects, seed * 1000 + rank if world > 1 else seed)

    t = exp.train
    start_epoch = state.epoch  # recorded with every epoch: shows where this attempt (re)started

    def one_epoch() -> dict:
        metrics = train_epoch(state, shard, sampler, ddp_model, ddp_disc)
        return {**metrics, "start_epoch": start_epoch, "lr": float(state.opt_g.param_groups[0]["lr"])}

    def test_accuracy() -> float:
        return evaluate(state.model, test_set, t.crop_size, amp=t.amp)["accuracy"]

    def last_accuracy(_: dict) -> str:
        return next((f"test_acc {m['accuracy']:.3f}" for m in reversed(state.history) if "accuracy" in m), "")

    run_epochs(
        state,
        t.epochs,
        fold=fold,
        worker=worker,
        one_epoch=one_epoch,
        # The final model has no test faces: its history holds no accuracy rather than a made-up one.
        test_accuracy=test_accuracy if held_out else None,
        eval_every=t.eval_every,
        checkpoint_every=t.checkpoint_every,
        line=lambda m: progress_line(name, m, t.epochs),
        note=last_accuracy,
    )

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
        finish_fold(run, fold, None, state.history, result)
        retries = S3_RETRIES.take()  # this worker's checkpoint uploads and reads (workers log only errors)
        if retries:
            print(f"{name}: s3: retried {retries} request(s) (throttling, 5xx or dropped connections)", flush=True)


# --- Ray marked place 2 of 2: the driver, one TorchTrainer per fold (`scaffold.fold_trainer`) --------


def save_run_config(store: Store, job: TrainJob, resume: bool, overwrite: bool) -> TrainJob:
    """Writes runs/<run>/config.json, or checks a re-run against it (see `fersnet train --help`)."""
    run = store.run(job.run)
    path = run.config()
    wanted = {"dataset": job.dataset, "experiment": job.experiment}
    if overwrite:
        store.remove(run.dir)
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
    run, scaling = store.run(job.run), Scaling.of(job)

    def run_fold(fold: Fold) -> None:
        resume_from = latest_checkpoint(store, job.run, fold)  # the workers look it up again at every start
        if resume_from is not None:
            done = checkpoint_epoch(store, resume_from)
            if done >= epochs and store.exists(run.evaluation(fold)):
                print(f"{foldkey.label(fold)}: finished earlier ({done}/{epochs} epochs), skipped", flush=True)
                return
        config = {"job": asdict(job), "fold": fold}
        fit(fold_trainer(train_fold, config, scaling, store, run.dir, fold), TrainError, foldkey.label(fold))

    parallel = job.parallel_folds or folds_that_fit(job.workers_per_fold, job.cpus_per_worker, job.gpus_per_fold)
    fit_folds("train", job.folds, run_fold, TrainError, parallel)  # the workers' lines go to logs
    report_retries("while training")
    return evaluate_run(store, job.run)


def evaluate_run(store: Store, run: str) -> dict:
    """Collects every fold's evaluation.json into runs/<run>/evaluation.json (per fold, mean ± std; the final
    model's facts apart)."""
    layout = store.run(run)
    if not layout.exists():
        raise StoreError(f"no run {run!r} in {store.uri}")
    summary = summarize_folds(layout)
    if summary is None:
        raise TrainError(f"run {run!r} has no evaluated fold yet")
    return summary
