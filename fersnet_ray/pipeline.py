"""The whole method in one command: prepare → train → synthesize → finetune → report.

    fersnet run                                   the demo set, local Ray, ./fersnet-store, tiny preset
    fersnet run --dataset ckplus48 --source DIR --preset ck48 --store s3://bucket/fer
    fersnet run --train-folds all,final           the folds, and the final model on every subject
    fersnet ablation --dataset ckplus48 ...       the paper's Table VI rows on the same folds

Resumable stage by stage: each stage skips what is finished (a prepared face table with the same
settings, trained folds, complete synthetic folds, fine-tuned folds) and says so, so a re-run after
a crash or Ctrl-C finishes the rest without redoing or duplicating anything. The stages are the
library functions the single-stage commands call; this module only chains them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from fersnet_ray.finetune.classifiers import default_schedule
from fersnet_ray.finetune.loop import FinetuneConfig
from fersnet_ray.foldkey import Fold
from fersnet_ray.store import Store

ABLATION_VARIANTS = ("fer_only", "fersnet_hard", "fersnet")  # Table VI, top to bottom


class PipelineError(RuntimeError):
    """A pipeline that cannot go on; the message names the stage and the reason."""


@dataclass(frozen=True)
class PipelineConfig:
    """What `fersnet run` does; every field maps to one option of the stage that uses it."""

    store: str = "./fersnet-store"
    dataset: str = "demo"  # adapter (`fersnet datasets`)
    source: str | None = None
    name: str | None = None  # data set name in the store (default: the adapter)
    run: str | None = None  # run name (default: the data set name)
    folds: int = 10  # folds of the face table
    train_folds: tuple[Fold, ...] | None = None  # folds to train, synthesise, fine-tune (None: all); "final" too
    seed: int = 0
    align: str | None = None
    aligned_size: int = 110
    channels: int = 1
    prepare_options: dict = field(default_factory=dict)
    preset: str | None = None  # None: tiny for the demo, paper otherwise
    variant: str = "fersnet"
    epochs: int | None = None
    batch_size: int | None = None
    gan_mode: str | None = None
    identity: str | None = None
    match_capacity: bool = False
    workers_per_fold: int = 1
    gpus_per_fold: float = 0.0
    cpus_per_worker: float = 1.0
    parallel_folds: int | None = None  # None: as many as the cluster holds now
    actors: int = 1
    gpus_per_actor: float = 0.0
    rows_per_shard: int = 1200
    min_score: float | None = None
    quality: bool = True
    recognizer_epochs: int = 30
    finetune: dict = field(default_factory=lambda: asdict(FinetuneConfig()))
    finetune_min_score: float | None = None  # ablation: also an FES-DA row on the rows scored ≥ this
    classifiers: tuple[str, ...] = ()  # ablation: per classifier, real-only and real + synthetic rows

    @property
    def table_name(self) -> str:
        return self.name or self.dataset

    @property
    def run_name(self) -> str:
        return self.run or self.table_name

    @property
    def preset_name(self) -> str:
        return self.preset or ("tiny" if self.dataset == "demo" else "paper")


def _stage(name: str):
    print(f"== {name}", flush=True)
    return time.perf_counter()


def _done(name: str, start: float) -> None:
    print(f"== {name}: done in {time.perf_counter() - start:.0f} s", flush=True)


def prepare_stage(cfg: PipelineConfig) -> dict:
    """Prepares the face table unless one with the same settings is in the store; returns its card."""
    from fersnet_ray.prepare.job import PrepareConfig, prepare
    from fersnet_ray.table import CARD_NAME

    pcfg = PrepareConfig(
        dataset=cfg.dataset,
        source=cfg.source,
        store=cfg.store,
        name=cfg.name,
        folds=cfg.folds,
        seed=cfg.seed,
        align=cfg.align,
        aligned_size=cfg.aligned_size,
        channels=cfg.channels,
        options=cfg.prepare_options,
    )
    store = Store.from_uri(cfg.store)
    card_path = store.path("datasets", cfg.table_name, CARD_NAME)
    if store.exists(card_path):
        card = store.read_json(card_path)
        wanted = {
            "dataset": cfg.dataset,
            "folds": cfg.folds,
            "seed": cfg.seed,
            "alignment": {"method": pcfg.align_method, "size": cfg.aligned_size, "channels": cfg.channels},
        }
        have = {k: card.get(k) for k in wanted}
        if have != wanted:
            raise PipelineError(
                f"prepare: data set {cfg.table_name!r} in {store.uri} was prepared with other settings "
                f"({have} ≠ {wanted}); pass --name for a new data set, or run `fersnet prepare` to replace it"
            )
        print(f"prepare: data set {cfg.table_name!r} is prepared ({card['num_faces']} faces), skipped", flush=True)
        return card
    return prepare(pcfg).card


def train_stage(cfg: PipelineConfig, card: dict, variant: str | None = None, run: str | None = None) -> dict:
    from fersnet_ray.train.config import make_experiment
    from fersnet_ray.train.job import TrainJob, train

    variant = variant or cfg.variant
    exp = make_experiment(
        cfg.preset_name,
        variant,
        len(card["classes"]),
        card["alignment"]["channels"],
        cfg.match_capacity and variant != "fersnet",
        cfg.gan_mode,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        identity=cfg.identity,
    )
    job = TrainJob(
        store=cfg.store,
        dataset=cfg.table_name,
        run=run or cfg.run_name,
        experiment=exp.to_dict(),
        folds=cfg.train_folds if cfg.train_folds is not None else tuple(range(card["folds"])),
        workers_per_fold=cfg.workers_per_fold,
        gpus_per_fold=cfg.gpus_per_fold,
        cpus_per_worker=cfg.cpus_per_worker,
        parallel_folds=cfg.parallel_folds,
    )
    return train(job)


def synth_stage(cfg: PipelineConfig, card: dict) -> dict:
    from fersnet_ray.synth.job import SynthJob, synthesize

    return synthesize(
        SynthJob(
            store=cfg.store,
            run=cfg.run_name,
            folds=cfg.train_folds,
            actors=cfg.actors,
            gpus_per_actor=cfg.gpus_per_actor,
            rows_per_shard=cfg.rows_per_shard,
            min_score=cfg.min_score,
            quality=cfg.quality,
            recognizer_epochs=cfg.recognizer_epochs,
        )
    )


def finetune_stage(cfg: PipelineConfig, **changes) -> dict:
    """Fine-tunes the run's folds; `changes` alter the fine-tuning config (data="real": the control)."""
    from fersnet_ray.finetune.job import FinetuneJob, finetune

    return finetune(
        FinetuneJob(
            store=cfg.store,
            run=cfg.run_name,
            folds=cfg.train_folds,
            config=asdict(replace(FinetuneConfig(**cfg.finetune), **changes)),
            workers_per_fold=cfg.workers_per_fold,
            gpus_per_fold=cfg.gpus_per_fold,
            cpus_per_worker=cfg.cpus_per_worker,
            parallel_folds=cfg.parallel_folds,
        )
    )


def report_stage(cfg: PipelineConfig) -> str:
    from fersnet_ray.report.job import REPORT, write_report

    uri = write_report(cfg.store, cfg.run_name, if_changed=True)
    if uri is None:
        print("report: drawn from the stages' current output already, skipped", flush=True)
        uri = Store.from_uri(cfg.store).uri_of("runs", cfg.run_name, "report", REPORT)
    return uri


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Runs every stage in order on the current Ray cluster; returns the report's URI and summaries."""
    from fersnet_ray.model import has_synthesis

    if not has_synthesis(cfg.variant):
        raise PipelineError(f"run: {cfg.variant} has no FES branch to synthesise with; use --variant fersnet")
    Store.from_uri(cfg.store).check_writable()
    t = _stage("prepare")
    card = prepare_stage(cfg)
    _done("prepare", t)
    t = _stage("train")
    trained = train_stage(cfg, card)
    _done("train", t)
    t = _stage("synthesize")
    synth_stage(cfg, card)
    _done("synthesize", t)
    t = _stage("finetune")
    tuned = finetune_stage(cfg)
    _done("finetune", t)
    t = _stage("report")
    uri = report_stage(cfg)
    _done("report", t)
    return {"report": uri, "train": trained, "finetune": tuned}


def run_ablation(cfg: PipelineConfig) -> dict:
    """Table VI on the same folds: fer_only, fersnet_hard, fersnet, fersnet + FES-DA, and the control.

    The original runs under the run name; the ablations under `<run>-fer_only` and `<run>-fersnet_hard`
    (enlarged to the original's capacity unless --no-match-capacity, as the paper does), listed in
    runs/<run>/ablation.json so the report puts them side by side. The control fine-tunes the same
    checkpoints for the same steps on real faces only (runs/<run>/finetune-real/): FES-DA is a gain
    only where it beats it. Order: what later stages need first (fersnet, then synthesis and both
    fine-tunings), the most expensive ablation (fersnet_hard) last, so an interrupted run has the
    key comparison first; every stage resumes.
    """
    store = Store.from_uri(cfg.store)
    store.check_writable()
    t = _stage("prepare")
    card = prepare_stage(cfg)
    _done("prepare", t)
    runs = {v: cfg.run_name if v == "fersnet" else f"{cfg.run_name}-{v}" for v in ABLATION_VARIANTS}
    summaries = {}

    def train_variant(variant: str) -> None:
        t = _stage(f"train {variant} ({runs[variant]})")
        summaries[variant] = train_stage(cfg, card, variant, runs[variant])
        _done(f"train {variant}", t)

    train_variant("fersnet")
    store.write_json(f"{store.run_dir(cfg.run_name)}/ablation.json", {"runs": runs})
    train_variant("fer_only")
    t = _stage("synthesize")
    synth_stage(cfg, card)
    _done("synthesize", t)
    fine_tunings = {"fersnet+fes-da": {}, "fersnet+real-only": {"data": "real"}}
    if cfg.finetune_min_score is not None:
        fine_tunings[f"fersnet+fes-da@{cfg.finetune_min_score:g}"] = {"min_score": cfg.finetune_min_score}
    for name in cfg.classifiers:  # the same classifier without and with the shards, the same steps
        own = {"classifier": name, **default_schedule(name)}
        fine_tunings.update({f"{name}+fes-da": own, f"{name}+real-only": {**own, "data": "real"}})
    for key, changes in fine_tunings.items():
        t = _stage(f"finetune {key}")
        summaries[key] = finetune_stage(cfg, **changes)
        _done(f"finetune {key}", t)
    train_variant("fersnet_hard")
    t = _stage("report")
    uri = report_stage(cfg)
    _done("report", t)
    return {"report": uri, **summaries}
