"""Stage 4, fine-tune (FES-DA): each fold's classifier, fine-tuned on real + synthetic faces streamed by Ray Data.

    fersnet finetune --store URI --run NAME [--folds all --epochs 30 --lr 1e-4]
    fersnet finetune --store URI --run NAME --classifier small-cnn --data real     (finetune-small-cnn-real/)

For fold k the training data are the face table's training faces (fold ≠ k) and every synthetic
shard of runs/<run>/synthetic/fold-k/ (which must pass `fersnet verify`), read with Ray Data's
`read_parquet` straight from the store, decoded in Ray Data tasks, block order randomised each
epoch and rows mixed in a local shuffle buffer, then fed to the Ray Train workers as torch batches.
Training starts from the fold's final FERSNet checkpoint (`--classifier fersnet`, the default) or
builds another classifier of `classifiers.CLASSIFIERS` (from scratch, `--weights URI`, or a
TorchScript file) and is evaluated on the fold's real test faces, like training.

Layout in the store:
    runs/<run>/finetune/config.json                       data set, experiment and fine-tuning config
    runs/<run>/finetune/fold-<k>/checkpoint-epoch-NNNN/    state.pt (+ meta.json), resumable
    runs/<run>/finetune/fold-<k>/history.json             per-epoch loss, training and test accuracy
    runs/<run>/finetune/fold-<k>/evaluation.json          test accuracy and confusion (written last)
    runs/<run>/finetune/evaluation.json                   all folds: per fold, mean ± std
    runs/<run>/finetune/final/                            the final model (`--folds final`): real + synthetic
                                                          faces of every subject; no test faces, no held-out accuracy
    runs/<run>/<FinetuneConfig.folder>/...                  the same for each classifier × data setting

Ray is used at the marked places only: the worker loop (`finetune_fold`), the data pipeline
(`fold_dataset`) and the driver (`finetune`). The epoch is `loop.finetune_epoch`, plain PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from fersnet_ray import foldkey
from fersnet_ray.finetune.loop import FinetuneConfig
from fersnet_ray.foldkey import Fold, training_mask
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
from fersnet_ray.store import Store, StoreError
from fersnet_ray.train.config import Experiment, config_diff

log = logging.getLogger(__name__)


class FinetuneError(RuntimeError):
    """A fold that cannot be fine-tuned; the message names the fold and the reason."""


@dataclass(frozen=True)
class FinetuneJob:
    store: str
    run: str
    folds: tuple[Fold, ...] | None = None  # None: every trained fold (and the final model when trained)
    config: dict = field(default_factory=lambda: asdict(FinetuneConfig()))
    workers_per_fold: int = 1
    gpus_per_fold: float = 0.0
    cpus_per_worker: float = 1.0
    max_failures: int = 2
    overwrite: bool = False
    parallel_folds: int | None = None  # None: as many as fit beside Ray Data's tasks


# --- Ray marked place 1 of 3: the data pipeline ----------------------------------------------------


def _training_rows(batch, fold: Fold, weighted: bool = False):
    """Face table rows of the fold's training split (fold ≠ k; every row for the final model), image and
    label (and weight 1 when synthetic rows are weighted, so that both unite under one schema)."""
    import pyarrow as pa

    batch = batch.filter(pa.array(training_mask(batch["fold"].to_numpy(), fold))).select(["image", "label"])
    if weighted:
        batch = batch.append_column("weight", pa.array(np.ones(batch.num_rows, dtype=np.float32)))
    return batch


@contextlib.contextmanager
def _parquet_reader_v1():
    """Ray Data's V1 Parquet reader for the reads made inside, unless RAY_DATA_USE_DATASOURCE_V2 says otherwise.

    The V2 reader (Ray's default) starts 32 footer-reading actors for every read, and a streamed
    dataset re-reads every epoch: `python jobs/bench_finetune.py` on 2 CPUs measured streamed 0.43x
    and cached 0.86x the plain loop with V2, 0.76x and 1.00x with V1. The paths here are a known list
    of files, so V2's listing and footer statistics buy nothing.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.use_datasource_v2
    if "RAY_DATA_USE_DATASOURCE_V2" not in os.environ:
        ctx.use_datasource_v2 = False
    try:
        yield
    finally:
        ctx.use_datasource_v2 = before


@contextlib.contextmanager
def _without_cpu_alarm(cached: bool):
    """Drops Ray Data's "The Ray cluster currently does not have any available CPUs. The Dataset job will
    hang unless more CPUs are freed up" (logger `ray.data.dataset`, raised whenever a dataset starts while
    no CPU is free) for the block, when the folds' faces are cached. Then they are read side by side (one
    fold's read tasks may hold every CPU as the next fold's read starts: they finish), and are in the
    object store before any trainer starts, so the folds' workers may then hold every CPU with nothing
    left for Ray Data to do. The warning was a false alarm at every parallel fine-tuning (2 folds on 2
    cores). Streaming keeps it: there it can be true."""
    if not cached:
        yield
        return
    logger = logging.getLogger("ray.data.dataset")

    def alarm(record: logging.LogRecord) -> bool:
        return "does not have any available CPUs" not in record.getMessage()

    logger.addFilter(alarm)
    try:
        yield
    finally:
        logger.removeFilter(alarm)


def _scored_rows(batch, cfg: FinetuneConfig):
    """Synthetic rows whose score is at least `cfg.min_score` (all rows when None), image and label, and with
    `cfg.weighted` their loss weight: synthetic_weight (× the recogniser's score when score_weighted)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if cfg.min_score is not None:
        batch = batch.filter(pc.greater_equal(batch["score"], cfg.min_score))
    out = batch.select(["image", "label"])
    if cfg.weighted:
        weight = np.full(batch.num_rows, cfg.synthetic_weight, dtype=np.float32)
        if cfg.score_weighted:  # scores are present: fold_inputs refused a fold synthesised without them
            weight *= batch["score"].to_numpy(zero_copy_only=False).astype(np.float32)
        out = out.append_column("weight", pa.array(weight))
    return out


def real_repeats(manifest: dict | None) -> int:
    """How often the control repeats the real faces: (real + synthetic) / real rows, rounded; 1 without shards."""
    if manifest is None:
        return 1
    real = sum(manifest["real_per_class"].values())
    return max(1, round((real + manifest["rows"]) / max(real, 1)))


def kept_rows(store: Store, run: str, fold: Fold, manifest: dict, min_score: float) -> int:
    """The fold's synthetic rows scored at least `min_score`; reads only the shards' score column."""
    import pyarrow.dataset as pads

    files = [store.run(run).synthetic_file(fold, s["file"]) for s in manifest["shards"]]
    shards = pads.dataset(files, filesystem=store.arrow_fs, format="parquet")
    return shards.count_rows(filter=pads.field("score") >= min_score)


def fold_dataset(
    store: Store,
    dataset: str,
    run: str,
    fold: Fold,
    load_size: int,
    channels: int,
    manifest: dict | None,
    cache: bool = True,
    cfg: FinetuneConfig = FinetuneConfig(),
    kept: int | None = None,
):
    """Real training faces ∪ the fold's synthetic shards, as a Ray Dataset of decoded uint8 faces.

    With `cfg.data == "real"` (the control) the real faces alone, repeated `real_repeats` times so
    that an epoch has as many rows as real + synthetic would; with `cfg.min_score` only the
    synthetic rows scored at least that (`kept` of them, `kept_rows`), and with `cfg.refill` those
    drawn again to the manifest's synthetic rows, so that an epoch has as many rows as FES-DA's.

    Nothing is copied locally: both are read from the store by Ray Data's Parquet reader, and the
    PNG decoding runs in Ray Data tasks that stream ahead of the training workers.

    cache: keep the decoded faces in Ray's object store after one pass (see `use_cache`).
    Re-reading and re-decoding a few thousand small faces every epoch costs Ray Data more in task
    start-up than the epoch's training takes (`python jobs/bench_finetune.py` measures both);
    large data sets stream. The repeats of the control and of a refill are references to the same
    cached blocks, drawn anew every epoch.
    """
    import ray.data

    from fersnet_ray.finetune.loop import decode_batch
    from fersnet_ray.table import table_files

    def decoded(rows):
        out = rows.map_batches(decode_batch, fn_kwargs={"load_size": load_size}, batch_format="numpy", batch_size=256)
        return out.materialize() if cache else out

    def repeated(ds, times: int):
        return ds.union(*[ds] * (times - 1)) if times > 1 else ds

    with _parquet_reader_v1():
        real = ray.data.read_parquet(
            table_files(store, dataset), filesystem=store.arrow_fs, columns=["image", "label", "fold"]
        ).map_batches(
            _training_rows, fn_kwargs={"fold": fold, "weighted": cfg.weighted}, batch_format="pyarrow", batch_size=None
        )
        if cfg.data == "real":
            both = repeated(decoded(real), real_repeats(manifest))
        else:
            shards = [store.run(run).synthetic_file(fold, s["file"]) for s in manifest["shards"]]
            synthetic = ray.data.read_parquet(shards, filesystem=store.arrow_fs, columns=["image", "label", "score"])
            synthetic = synthetic.map_batches(
                _scored_rows, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", batch_size=None
            )
            if cfg.min_score is not None and cfg.refill and kept and kept < manifest["rows"]:
                # kept fakes → manifest["rows"] of them: ⌈rows / kept⌉ copies in a random block order each
                # epoch, cut to length; a fake appears about rows / kept times an epoch (blocks are cut
                # whole, so some once more or less, and FES-DA's real : synthetic ratio is kept exactly).
                copies = -(-manifest["rows"] // kept)
                synthetic = repeated(decoded(synthetic), copies).randomize_block_order().limit(manifest["rows"])
                both = decoded(real).union(synthetic)
            else:
                both = decoded(real.union(synthetic))  # one read and decode of both
    return both.randomize_block_order()  # a new block order every epoch (each epoch re-runs the plan)


# --- Ray marked place 2 of 3: the worker loop ------------------------------------------------------


def finetune_fold(config: dict) -> None:
    """Ray Train worker function for one fold (every worker of the fold runs it)."""
    import ray.train

    from fersnet_ray.checkpoint import resume_state
    from fersnet_ray.finetune.classifiers import TORCHSCRIPT, read_uri
    from fersnet_ray.finetune.loop import FinetuneState, finetune_epoch
    from fersnet_ray.train.data import load_test
    from fersnet_ray.train.loop import evaluate

    # Ray hands read-only Arrow buffers to torch; the batches are never written in place.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    job = FinetuneJob(**config["job"])
    fold, dataset = config["fold"], config["dataset"]
    exp = Experiment.from_dict(config["experiment"])
    cfg = FinetuneConfig(**job.config)
    cfg = replace(cfg, seed=cfg.seed + foldkey.seed_offset(fold))
    name = foldkey.label(fold)  # "fold 3" or "final"
    store = Store.from_uri(job.store)
    run = store.run(job.run)
    worker = start_worker(job.cpus_per_worker)
    rank, world, device = worker.rank, worker.world, worker.device
    test_set = load_test(store, dataset, fold, exp.train.load_size)  # None for the final model: no test faces
    test_set = test_set.to(device) if test_set is not None else None
    classes = len(config["classes"])

    # Resume from a fine-tuning checkpoint if there is one, else start from the trained FERSNet
    # (fersnet), the --weights state dict, or the classifier as built (seeded).
    resume = resume_state(store, run.fold(fold, cfg.folder))
    init = None if resume else _initial_weights(store, cfg, config["init_from"])
    source = read_uri(cfg.classifier[len(TORCHSCRIPT) :], "TorchScript model") if _is_script(cfg) else None
    torch.manual_seed(cfg.seed)
    state = FinetuneState.create(exp, cfg, init, device, source)
    if resume is not None:
        state.load_state_dict(resume)
        if rank == 0:
            print(f"finetune ({cfg.label}) {name}: resuming at epoch {state.epoch + 1}/{cfg.epochs}", flush=True)
    model = worker.wrap(state.model, find_unused=True)  # the FES head is idle in fine-tuning

    shard = ray.train.get_dataset_shard("train")
    per_worker = max(1, cfg.batch_size // world)

    def one_epoch() -> dict:
        batches = shard.iter_torch_batches(
            batch_size=per_worker,
            local_shuffle_buffer_size=cfg.shuffle_buffer,
            drop_last=config["rows"] // world >= 2 * per_worker,  # BN dislikes a ragged 1-row batch
        )
        return finetune_epoch(state, batches, model)

    def test_accuracy() -> float:
        return evaluate(state.model, test_set, exp.train.crop_size, exp.train.amp, classes)["accuracy"]

    def test_note(m: dict) -> str:
        return f" test_acc {m['accuracy']:.3f}" if "accuracy" in m else ""

    run_epochs(
        state,
        cfg.epochs,
        fold=fold,
        worker=worker,
        one_epoch=one_epoch,
        test_accuracy=test_accuracy if test_set is not None else None,  # the final model: nothing held out
        eval_every=cfg.checkpoint_every,
        checkpoint_every=cfg.checkpoint_every,
        line=lambda m: (
            f"finetune ({cfg.label}) {name} epoch {state.epoch}/{cfg.epochs} cls {m['cls']:.3f} "
            f"train_acc {m['train_accuracy']:.3f}{test_note(m)} ({m['images']} faces, {m['images_per_s']:.0f} img/s)"
        ),
        note=lambda m: f"train_acc {m['train_accuracy']:.3f}{test_note(m)}",
    )

    if rank == 0:
        if test_set is not None:
            result = evaluate(state.model, test_set, exp.train.crop_size, exp.train.amp, classes)
        else:  # the final model: nothing held out to measure (its history has the training batches' accuracy)
            result = foldkey.final_evaluation()
        result.update(
            fold=fold,
            epochs=state.epoch,
            classes=config["classes"],
            variant=cfg.report_key(exp.model.variant),
            classifier=cfg.classifier,
            data=cfg.data,
            min_score=cfg.min_score,
            synthetic_weight=cfg.synthetic_weight,
            score_weighted=cfg.score_weighted,
            refill=cfg.refill if cfg.min_score is not None else None,
            training_rows=config["rows"],  # per epoch
            synthetic_rows=config["synthetic_rows"],  # per epoch; with a refill, kept rows drawn again
            kept_synthetic_rows=config["kept_synthetic_rows"],  # distinct rows scored >= min_score
        )
        finish_fold(run, fold, cfg.folder, state.history, result)


def _is_script(cfg: FinetuneConfig) -> bool:
    from fersnet_ray.finetune.classifiers import TORCHSCRIPT

    return cfg.classifier.startswith(TORCHSCRIPT)


def _initial_weights(store: Store, cfg: FinetuneConfig, init_from: str | None) -> dict | None:
    """The state dict a fold starts from: the fold's FERSNet checkpoint, the --weights file, or None (as built)."""
    from fersnet_ray.checkpoint import load_weights, read_checkpoint
    from fersnet_ray.finetune.classifiers import ClassifierError, read_uri

    if cfg.from_fold_checkpoint:
        return read_checkpoint(store, init_from)["model"]
    if cfg.weights is None:
        return None
    state = load_weights(read_uri(cfg.weights, "--weights"), f"--weights {cfg.weights}", ClassifierError)
    if not isinstance(state, dict):
        raise ClassifierError(f"--weights {cfg.weights} holds a {type(state).__name__}, not a state dict")
    return state


def check_classifier_config(store: Store, cfg: FinetuneConfig, exp: Experiment) -> None:
    """Builds the classifier once on the driver, loads its --weights and runs a batch through it.

    Every mistake the user can make with --classifier and --weights (a file that is missing or not a
    TorchScript model, weights of another architecture, a model that returns something other than
    (N, E) logits or cannot take the faces' channels and size) ends here, before any fold starts.
    """
    from fersnet_ray.finetune.classifiers import check_classifier, create_classifier, load_weights_into

    if cfg.from_fold_checkpoint:
        return  # the run's own FERSNet, built by training
    model = create_classifier(cfg.classifier, cfg.classifier_input(exp))
    weights = _initial_weights(store, cfg, None)
    if weights is not None:
        load_weights_into(model, cfg.classifier, weights, where=f"--weights {cfg.weights}")
    check_classifier(model, cfg.classifier, cfg.classifier_input(exp))


def _absolute_uris(cfg: FinetuneConfig) -> FinetuneConfig:
    """Local paths of --weights and torchscript: made absolute (Ray Train workers run in their own directories)."""
    from fersnet_ray.finetune.classifiers import TORCHSCRIPT

    def absolute(uri: str) -> str:
        return uri if "://" in uri else os.path.abspath(uri)

    if _is_script(cfg):
        cfg = replace(cfg, classifier=TORCHSCRIPT + absolute(cfg.classifier[len(TORCHSCRIPT) :]))
    if cfg.weights is not None:
        cfg = replace(cfg, weights=absolute(cfg.weights))
    return cfg


# --- Ray marked place 3 of 3: the driver, one TorchTrainer per fold --------------------------------


def fold_inputs(
    store: Store,
    run: str,
    fold: Fold,
    train_epochs: int,
    data: str,
    needs_checkpoint: bool = True,
    needs_scores: bool = False,
) -> tuple[str | None, dict | None]:
    """The fold's final training checkpoint and its verified synthetic manifest, or a FinetuneError.

    The real-only control needs no shards; it reads the manifest where there is one, to match FES-DA's steps.
    A classifier that does not start from the fold's FERSNet (`needs_checkpoint` False) needs no checkpoint.
    `needs_scores` (--min-score, --weight-by-score): the shards must carry the recogniser's scores.
    """
    from fersnet_ray.checkpoint import checkpoint_epoch, latest_checkpoint
    from fersnet_ray.synth.verify import verify_fold

    ckpt = latest_checkpoint(store, run, fold) if needs_checkpoint else None
    done = checkpoint_epoch(store, ckpt) if ckpt else 0
    if needs_checkpoint and (ckpt is None or done < train_epochs):
        raise FinetuneError(
            f"{foldkey.label(fold)}: training has not finished ({done}/{train_epochs} epochs); "
            f"run `fersnet train --run {run} --folds {fold}` first"
        )
    layout = store.run(run)
    manifest = layout.manifest(fold)
    if data == "real":
        return ckpt, store.read_json(manifest) if store.exists(manifest) else None
    if not store.exists(manifest):
        raise FinetuneError(
            f"{foldkey.label(fold)} has no synthetic shards in {store.uri_of_path(layout.synthetic(fold))}; "
            f"run `fersnet synthesize --run {run} --folds {fold}` first"
        )
    problems = verify_fold(store, run, fold)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FinetuneError(
            f"{foldkey.label(fold)}: synthetic shards fail verify: {problems[0]}{more}; "
            "re-run `fersnet synthesize` to repair"
        )
    manifest = store.read_json(manifest)
    if needs_scores and not manifest.get("quality"):
        raise FinetuneError(
            f"{foldkey.label(fold)}: its synthetic rows carry no recogniser score (synthesised with --no-quality), "
            f"so --min-score and --weight-by-score have nothing to read; run `fersnet synthesize --run {run} "
            f"--folds {fold} --quality --overwrite` first"
        )
    return ckpt, manifest


def _save_config(store: Store, job: FinetuneJob, run_config: dict, folder: str) -> None:
    """runs/<run>/<folder>/config.json; a re-run with another fine-tuning config needs --overwrite."""
    run = store.run(job.run)
    path = run.config(folder)
    wanted = {**run_config, "finetune": job.config}
    if job.overwrite:
        store.remove(run.stage(folder))
    elif store.exists(path):
        stored = store.read_json(path)
        # Configs written before a field existed (classifier, weights) hold its default; refill
        # (session 22) was off before, which matters only with a min_score.
        before = stored.get("finetune", {})
        before.setdefault("refill", before.get("min_score") is None)
        stored["finetune"] = {**asdict(FinetuneConfig()), **before}
        if stored != json.loads(json.dumps(wanted)):
            raise FinetuneError(
                f"run {job.run!r} was fine-tuned with a different config ({config_diff(stored, wanted)}); "
                "pass --overwrite to fine-tune it again"
            )
        return
    store.write_json(path, wanted)


def epoch_rows(manifest: dict | None, cfg: FinetuneConfig, kept: int | None = None) -> tuple[int, int]:
    """(rows an epoch reads, synthetic rows among them) for a fold's manifest and this config; `kept`: the
    synthetic rows scored at least `cfg.min_score`."""
    if manifest is None:  # the control without shards: the real faces once (known to the worker)
        return 0, 0
    real = sum(manifest["real_per_class"].values())
    if cfg.data == "real":
        return real * real_repeats(manifest), 0
    synthetic = manifest["rows"] if cfg.min_score is None or cfg.refill else kept
    return real + synthetic, synthetic


def use_cache(cfg: FinetuneConfig, rows: int, channels: int, load_size: int, folds: int) -> bool:
    """cfg.cache, or when every fold's decoded faces together fit in a tenth of Ray's object store."""
    import ray

    if cfg.cache is not None:
        return cfg.cache
    return folds * rows * channels * load_size**2 < 0.1 * ray.cluster_resources().get("object_store_memory", 0)


def finetune(job: FinetuneJob) -> dict:
    """Fine-tunes every requested fold on the current Ray cluster; returns the evaluation summary."""
    from fersnet_ray.synth.job import trained_folds
    from fersnet_ray.table import read_card

    store = Store.from_uri(job.store)
    store.check_writable()
    job = replace(job, store=store.uri)  # absolute: Ray Train workers run in their own directories
    cfg = _absolute_uris(FinetuneConfig(**job.config))  # validates (an unknown classifier lists the choices)
    job = replace(job, config=asdict(cfg))  # every field stored, so configs compare whole
    run = store.run(job.run)
    if not run.exists():
        raise StoreError(f"no run {job.run!r} in {store.uri} (train it first)")
    run_config = store.read_json(run.config())
    exp = Experiment.from_dict(run_config["experiment"])
    if not has_synthesis(exp.model.variant) and cfg.data != "real":
        raise FinetuneError(
            f"run {job.run!r} is {exp.model.variant}: it has no FES branch, so no synthetic faces to use"
        )
    card = read_card(store, run_config["dataset"])
    folds = job.folds if job.folds is not None else tuple(trained_folds(store, job.run))
    if not folds:
        raise FinetuneError(f"run {job.run!r} has no trained fold")
    foldkey.check_folds(folds, card["folds"], run_config["dataset"], FinetuneError)
    inputs = {}
    for fold in folds:  # check every fold before anything runs: a bad fold fails the job at once
        if not job.overwrite and store.exists(run.evaluation(fold, cfg.folder)):
            continue
        inputs[fold] = fold_inputs(
            store, job.run, fold, exp.train.epochs, cfg.data, cfg.from_fold_checkpoint, cfg.needs_scores
        )
    kept = {}  # fold -> its synthetic rows scored >= min_score
    if cfg.min_score is not None:
        for fold, (_, manifest) in inputs.items():
            kept[fold] = kept_rows(store, job.run, fold, manifest, cfg.min_score)
            if kept[fold] == 0:
                raise FinetuneError(
                    f"{foldkey.label(fold)}: none of its {manifest['rows']} synthetic rows is scored >= "
                    f"{cfg.min_score:g}; lower --min-score"
                )
    if inputs:
        check_classifier_config(store, cfg, exp)
    _save_config(store, job, run_config, cfg.folder)
    rows = max((epoch_rows(m, cfg, kept.get(f))[0] for f, (_, m) in inputs.items()), default=0)
    cache = use_cache(cfg, rows, exp.model.in_channels, exp.train.load_size, len(inputs))
    # Streaming, Ray Data's read and decode tasks need a CPU beside the training workers (workers
    # holding every CPU would wait for data forever); cached, the data are read once before `fit`.
    parallel = job.parallel_folds or folds_that_fit(
        job.workers_per_fold, job.cpus_per_worker, job.gpus_per_fold, spare_cpus=0 if cache else 1
    )

    def dataset(fold: Fold):
        _, manifest = inputs[fold]
        return fold_dataset(
            store,
            run_config["dataset"],
            job.run,
            fold,
            exp.train.load_size,
            exp.model.in_channels,
            manifest,
            cache,
            cfg,
            kept.get(fold),
        )

    def run_fold(fold: Fold) -> None:
        if fold not in inputs:
            name = "" if cfg.classifier == "fersnet" else f" ({cfg.classifier}, {cfg.data})"
            print(f"finetune{name} {foldkey.label(fold)}: finished earlier, skipped", flush=True)
            return
        init_from, manifest = inputs[fold]
        rows, synthetic_rows = epoch_rows(manifest, cfg, kept.get(fold))
        config = {
            "job": asdict(job),
            "fold": fold,
            "dataset": run_config["dataset"],
            "experiment": run_config["experiment"],
            "classes": card["classes"],
            "init_from": init_from,
            "rows": rows,
            "synthetic_rows": synthetic_rows,
            "kept_synthetic_rows": kept.get(fold),
        }
        datasets = {"train": cached[fold] if cache else dataset(fold)}
        trainer = fold_trainer(finetune_fold, config, Scaling.of(job), store, run.stage(cfg.folder), fold, datasets)
        fit(trainer, FinetuneError, f"finetune {foldkey.label(fold)}")

    with _without_cpu_alarm(cache):
        # Cached: every fold's faces are read and decoded before any trainer starts, so no fold's Ray Data
        # read waits for CPUs that other folds' training workers hold.
        with ThreadPoolExecutor(max_workers=max(1, len(inputs))) as pool:
            cached = dict(zip(inputs, pool.map(dataset, inputs))) if cache else {}
        fit_folds("finetune", folds, run_fold, FinetuneError, parallel)
    summary = summarize_folds(run, cfg.folder)
    if summary is None:
        raise FinetuneError(f"run {job.run!r}: no fine-tuned fold")
    return summary
