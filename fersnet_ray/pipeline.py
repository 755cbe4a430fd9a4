"""The whole method in one command: prepare → train → synthesize → finetune → report.

    fersnet run                                   the demo set, local Ray, ./fersnet-store, tiny preset
    fersnet run --dataset ckplus48 --source DIR --preset ck48 --store s3://bucket/fer
    fersnet run --train-folds all,final           the folds, and the final model on every subject
    fersnet ablation --dataset ckplus48 ...       the paper's Table VI rows on the same folds

Resumable stage by stage: each stage skips what is finished (a prepared face table with the same
settings, trained folds, complete synthetic folds, fine-tuned folds) and says so, so a re-run after
a crash or Ctrl-C finishes the rest without redoing or duplicating anything. The stages are the
library functions the single-stage commands call; this module chains them, and builds each stage's
config from its command's options (`prepare_config`, `train_job`, … and `PipelineConfig.from_options`,
which nests them), so the CLI only parses and the rules (the demo's defaults, the experiment drawn from
the data set's card) live here once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from fersnet_ray.finetune.classifiers import default_schedule, parse_classifier
from fersnet_ray.finetune.job import FinetuneJob
from fersnet_ray.finetune.loop import FinetuneConfig
from fersnet_ray.foldkey import Fold, parse_folds
from fersnet_ray.prepare.job import PrepareConfig
from fersnet_ray.store import Store
from fersnet_ray.synth.job import SynthJob
from fersnet_ray.train.job import TrainJob

if TYPE_CHECKING:
    from fersnet_ray.train.config import Experiment

ABLATION_VARIANTS = ("fer_only", "fersnet_hard", "fersnet")  # Table VI, top to bottom
# The quick start (`fersnet run` with no options): 16 drawn subjects in 2 subject-disjoint folds, so each
# fold trains on 8 subjects and is tested on 8 others, and both folds train side by side on 2 cores.
DEMO_SUBJECTS, DEMO_FOLDS = 16, 2
DEFAULT_FOLDS = 10  # the paper's 10-fold cross-validation


class PipelineError(RuntimeError):
    """A pipeline that cannot go on; the message names the stage and the reason."""


# --- each stage's config, built from its command's options (the CLI passes them by name) ---------


def prepare_config(
    dataset: str = "demo",
    source: str | None = None,
    store: str = "./fersnet-store",
    name: str | None = None,
    folds: int | None = None,
    seed: int = 0,
    align: str | None = None,
    aligned_size: int = 110,
    rgb: bool = False,
    weights: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    subject_regex: str | None = None,
    classes: str | None = None,
    manifest: str | None = None,
    demo_subjects: int | None = None,
) -> PrepareConfig:
    """`fersnet prepare`'s options → PrepareConfig: the adapter's own options, the demo's 2 folds."""
    options = {
        "folder": {"subject_regex": subject_regex, "classes": classes},
        "manifest": {"classes": classes},
        "mmi": {"manifest": manifest},
        "demo": {"subjects": demo_subjects or DEMO_SUBJECTS, "seed": seed},
    }.get(dataset, {})
    return PrepareConfig(
        dataset=dataset,
        source=source,
        store=store,
        name=name,
        folds=folds or (DEMO_FOLDS if dataset == "demo" else DEFAULT_FOLDS),
        seed=seed,
        align=align,
        aligned_size=aligned_size,
        channels=3 if rgb else 1,
        weights=weights,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        options={k: v for k, v in options.items() if v is not None},
    )


@dataclass(frozen=True)
class ExperimentSpec:
    """What `train` and `run` are told about the experiment; the data set's card gives the rest."""

    preset: str = "paper"
    variant: str = "fersnet"
    match_capacity: bool = False
    gan_mode: str | None = None
    epochs: int | None = None  # None: the preset's
    batch_size: int | None = None
    identity: str | None = None
    skips: bool | None = None  # None: the preset's
    checkpoint_every: int | None = None  # None: the preset's
    overrides: tuple[str, ...] = ()  # --set model.KEY=VALUE / train.KEY=VALUE, applied last

    def build(self, card: dict) -> Experiment:
        """The Experiment for a prepared data set: its classes and channels, then the overrides
        (ValueError on an unknown name or a bad setting)."""
        from fersnet_ray.train.config import make_experiment, with_overrides

        exp = make_experiment(
            self.preset,
            self.variant,
            len(card["classes"]),
            card["alignment"]["channels"],
            self.match_capacity,
            self.gan_mode,
            self.skips,
            epochs=self.epochs,
            batch_size=self.batch_size,
            identity=self.identity,
            checkpoint_every=self.checkpoint_every,
        )
        return with_overrides(exp, self.overrides)


def train_job(
    store: str = "./fersnet-store",
    dataset: str = "demo",
    run: str = "demo",
    folds: str = "all",
    preset: str = "paper",
    variant: str = "fersnet",
    epochs: int | None = None,
    batch_size: int | None = None,
    match_capacity: bool = False,
    gan_mode: str | None = None,
    identity: str | None = None,
    skips: bool | None = None,
    checkpoint_every: int | None = None,
    overrides: Sequence[str] | None = None,
    workers_per_fold: int = 1,
    gpus_per_fold: float = 0.0,
    cpus_per_worker: float = 1.0,
    parallel_folds: int | None = None,
    max_failures: int = 2,
) -> TrainJob:
    """`fersnet train`'s options → TrainJob, its experiment built from the prepared data set's card."""
    from fersnet_ray.table import read_card

    card = read_card(Store.from_uri(store), dataset)
    spec = ExperimentSpec(
        preset=preset,
        variant=variant,
        match_capacity=match_capacity,
        gan_mode=gan_mode,
        epochs=epochs,
        batch_size=batch_size,
        identity=identity,
        skips=skips,
        checkpoint_every=checkpoint_every,
        overrides=tuple(overrides or ()),
    )
    return TrainJob(
        store=store,
        dataset=dataset,
        run=run,
        experiment=spec.build(card).to_dict(),
        folds=parse_folds(folds, card["folds"]),
        workers_per_fold=workers_per_fold,
        gpus_per_fold=gpus_per_fold,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        parallel_folds=parallel_folds,
    )


def _folds(folds: str | tuple[Fold, ...] | None) -> tuple[Fold, ...] | None:
    """A --folds text ('all': every trained fold, None) or folds already parsed."""
    return parse_folds(folds, None) if isinstance(folds, str) else folds


def synth_job(
    store: str = "./fersnet-store",
    run: str = "demo",
    folds: str | tuple[Fold, ...] | None = "all",
    **options,
) -> SynthJob:
    """`fersnet synthesize`'s options → SynthJob (the other options are SynthJob's fields)."""
    return SynthJob(store=store, run=run, folds=_folds(folds), **options)


def finetune_job(
    store: str = "./fersnet-store",
    run: str = "demo",
    folds: str | tuple[Fold, ...] | None = "all",
    classifier: str = "fersnet",
    workers_per_fold: int = 1,
    gpus_per_fold: float = 0.0,
    cpus_per_worker: float = 1.0,
    parallel_folds: int | None = None,
    max_failures: int = 2,
    overwrite: bool = False,
    **config,
) -> FinetuneJob:
    """`fersnet finetune`'s options → FinetuneJob; `config`: FinetuneConfig's fields (None: the classifier's
    default, so lr and lr_min follow the classifier)."""
    return FinetuneJob(
        store=store,
        run=run,
        folds=_folds(folds),
        config=asdict(FinetuneConfig.for_classifier(classifier, **config)),
        workers_per_fold=workers_per_fold,
        gpus_per_fold=gpus_per_fold,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        overwrite=overwrite,
        parallel_folds=parallel_folds,
    )


def classifier_list(names: str) -> tuple[str, ...]:
    """ "small-cnn,resnet18" → a tuple of checked names (an unknown one: ValueError listing the choices)."""
    out = tuple(n.strip() for n in names.split(",") if n.strip())
    for name in out:
        parse_classifier(name)
    return out


@dataclass(frozen=True)
class PipelineConfig:
    """What `fersnet run` and `fersnet ablation` do: each stage's own config, nested, built once.

    `train.experiment` is filled from the data set's card once prepare has run (`experiment` says
    how), and `train.folds` None means every fold of the face table.
    """

    prepare: PrepareConfig
    experiment: ExperimentSpec
    train: TrainJob
    synth: SynthJob
    finetune: FinetuneJob
    resume: bool = False  # train: continue an existing run with its stored config
    overwrite: bool = False  # train: delete an existing run (and so every later stage's output) first
    compare: tuple[str, ...] = ()  # report: other runs as Table VI rows
    finetune_min_score: float | None = None  # ablation: also an FES-DA row on the rows scored ≥ this
    classifiers: tuple[str, ...] = ()  # ablation: per classifier, real-only and real + synthetic rows

    @property
    def store(self) -> str:
        return self.prepare.store

    @property
    def table_name(self) -> str:
        return self.prepare.table_name

    @property
    def run_name(self) -> str:
        return self.train.run

    @classmethod
    def from_options(
        cls,
        ablation: bool = False,
        *,
        # prepare
        store: str = "./fersnet-store",
        dataset: str = "demo",
        source: str | None = None,
        name: str | None = None,
        folds: int | None = None,
        seed: int = 0,
        align: str | None = None,
        aligned_size: int = 110,
        rgb: bool = False,
        weights: str | None = None,
        prepare_actors: int | None = None,
        prepare_gpus_per_actor: float | None = None,
        demo_subjects: int | None = None,
        classes: str | None = None,
        subject_regex: str | None = None,
        manifest: str | None = None,
        # train
        run: str | None = None,
        train_folds: str = "all",
        preset: str | None = None,
        variant: str = "fersnet",
        epochs: int | None = None,
        batch_size: int | None = None,
        gan_mode: str | None = None,
        identity: str | None = None,
        skips: bool | None = None,
        checkpoint_every: int | None = None,
        overrides: Sequence[str] | None = None,
        match_capacity: bool | None = None,
        workers_per_fold: int = 1,
        gpus_per_fold: float = 0.0,
        cpus_per_worker: float = 1.0,
        parallel_folds: int | None = None,
        max_failures: int = 2,
        resume: bool = False,
        overwrite: bool = False,
        # synthesize
        actors: int = 1,
        gpus_per_actor: float = 0.0,
        synth_batch_size: int = 256,
        rows_per_shard: int = 1200,
        min_score: float | None = None,
        quality: bool = True,
        recognizer_epochs: int = 30,
        max_rows: int | None = None,
        # finetune
        finetune_epochs: int | None = None,
        finetune_lr: float | None = None,
        finetune_lr_min: float | None = None,
        finetune_batch_size: int = 64,
        shuffle_buffer: int = 2048,
        cache: bool | None = None,
        # report, ablation
        compare: str = "",
        finetune_min_score: float | None = None,
        classifiers: str = "",
    ) -> PipelineConfig:
        """`fersnet run`/`ablation`'s options by name → the nested config; the demo's CPU-sized defaults.

        Raises ValueError for a bad --train-folds, classifier or fine-tuning schedule, before any stage.
        """
        demo = dataset == "demo"
        prep = prepare_config(
            dataset=dataset,
            source=source,
            store=store,
            name=name,
            folds=folds,
            seed=seed,
            align=align,
            aligned_size=aligned_size,
            rgb=rgb,
            weights=weights,
            actors=prepare_actors,
            gpus_per_actor=prepare_gpus_per_actor,
            subject_regex=subject_regex,
            classes=classes,
            manifest=manifest,
            demo_subjects=demo_subjects,
        )
        # None: every fold of the table ("all"), or, for synthesis and fine-tuning, every trained fold.
        fold_keys = None if train_folds == "all" else parse_folds(train_folds, prep.folds)
        run_name = run or prep.table_name
        spec = ExperimentSpec(
            preset=preset or ("tiny" if demo else "paper"),  # the whole demo pipeline in minutes on 2 cores
            variant=variant,
            match_capacity=ablation if match_capacity is None else match_capacity,
            gan_mode=gan_mode,
            epochs=epochs,
            batch_size=batch_size,
            identity=identity,
            skips=skips,
            checkpoint_every=checkpoint_every,
            overrides=tuple(overrides or ()),
        )
        if spec.overrides:  # a bad --set fails here, before prepare, as any other bad option does
            spec.build({"classes": [""] * 7, "alignment": {"channels": 3 if rgb else 1}})
        resources = {
            "workers_per_fold": workers_per_fold,
            "gpus_per_fold": gpus_per_fold,
            "cpus_per_worker": cpus_per_worker,
            "parallel_folds": parallel_folds,
            "max_failures": max_failures,
        }
        train = TrainJob(
            store=store, dataset=prep.table_name, run=run_name, experiment={}, folds=fold_keys, **resources
        )
        synth = synth_job(
            store,
            run_name,
            fold_keys,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            batch_size=synth_batch_size,
            rows_per_shard=rows_per_shard,
            min_score=min_score,
            quality=quality,
            recognizer_epochs=recognizer_epochs,
            max_rows=max_rows,
        )
        finetune = finetune_job(
            store,
            run_name,
            fold_keys,
            epochs=finetune_epochs or (3 if demo else 30),
            lr=finetune_lr,
            lr_min=finetune_lr_min,
            batch_size=finetune_batch_size,
            shuffle_buffer=shuffle_buffer,
            cache=cache,
            checkpoint_every=3 if demo else 5,
            **resources,
        )
        return cls(
            prepare=prep,
            experiment=spec,
            train=train,
            synth=synth,
            finetune=finetune,
            resume=resume,
            overwrite=overwrite,
            compare=tuple(r.strip() for r in compare.split(",") if r.strip()),
            finetune_min_score=finetune_min_score,
            classifiers=classifier_list(classifiers),
        )


def _stage(name: str):
    print(f"== {name}", flush=True)
    return time.perf_counter()


def _done(name: str, start: float) -> None:
    print(f"== {name}: done in {time.perf_counter() - start:.0f} s", flush=True)


def prepare_stage(cfg: PipelineConfig) -> dict:
    """Prepares the face table unless one with the same settings is in the store; returns its card."""
    from fersnet_ray.prepare.job import prepare

    pcfg = cfg.prepare
    store = Store.from_uri(pcfg.store)
    card_path = store.dataset(pcfg.table_name).card
    if store.exists(card_path):
        card = store.read_json(card_path)
        wanted = {
            "dataset": pcfg.dataset,
            "folds": pcfg.folds,
            "seed": pcfg.seed,
            "alignment": {"method": pcfg.align_method, "size": pcfg.aligned_size, "channels": pcfg.channels},
        }
        have = {k: card.get(k) for k in wanted}
        if have != wanted:
            raise PipelineError(
                f"prepare: data set {pcfg.table_name!r} in {store.uri} was prepared with other settings "
                f"({have} ≠ {wanted}); pass --name for a new data set, or run `fersnet prepare` to replace it"
            )
        print(f"prepare: data set {pcfg.table_name!r} is prepared ({card['num_faces']} faces), skipped", flush=True)
        return card
    return prepare(pcfg).card


def train_stage(cfg: PipelineConfig, card: dict, variant: str | None = None, run: str | None = None) -> dict:
    """Trains `variant` (default: the configured one) under `run`; ablations match the original's capacity."""
    from fersnet_ray.train.job import train

    variant = variant or cfg.experiment.variant
    spec = replace(
        cfg.experiment, variant=variant, match_capacity=cfg.experiment.match_capacity and variant != "fersnet"
    )
    job = replace(
        cfg.train,
        run=run or cfg.run_name,
        experiment=spec.build(card).to_dict(),
        folds=cfg.train.folds if cfg.train.folds is not None else tuple(range(card["folds"])),
    )
    return train(job, cfg.resume, cfg.overwrite)


def synth_stage(cfg: PipelineConfig) -> dict:
    from fersnet_ray.synth.job import synthesize

    return synthesize(cfg.synth)


def finetune_stage(cfg: PipelineConfig, **changes) -> dict:
    """Fine-tunes the run's folds; `changes` alter the fine-tuning config (data="real": the control)."""
    from fersnet_ray.finetune.job import finetune

    config = asdict(replace(FinetuneConfig(**cfg.finetune.config), **changes))
    return finetune(replace(cfg.finetune, config=config))


def report_stage(cfg: PipelineConfig) -> str:
    from fersnet_ray.report.job import write_report

    uri = write_report(cfg.store, cfg.run_name, cfg.compare, if_changed=True)
    if uri is None:
        print("report: drawn from the stages' current output already, skipped", flush=True)
        store = Store.from_uri(cfg.store)
        uri = store.uri_of_path(store.run(cfg.run_name).report_file())
    return uri


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Runs every stage in order on the current Ray cluster; returns the report's URI and summaries."""
    from fersnet_ray.model import has_synthesis

    if not has_synthesis(cfg.experiment.variant):
        raise PipelineError(
            f"run: {cfg.experiment.variant} has no FES branch to synthesise with; use --variant fersnet"
        )
    Store.from_uri(cfg.store).check_writable()
    t = _stage("prepare")
    card = prepare_stage(cfg)
    _done("prepare", t)
    t = _stage("train")
    trained = train_stage(cfg, card)
    _done("train", t)
    t = _stage("synthesize")
    synth_stage(cfg)
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
    store.write_json(store.run(cfg.run_name).ablation, {"runs": runs})
    train_variant("fer_only")
    t = _stage("synthesize")
    synth_stage(cfg)
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
