"""The `fersnet` command line: thin commands, each calling one library function.

    fersnet datasets                                   list the data set adapters
    fersnet prepare --dataset demo                     demo faces → ./fersnet-store/datasets/demo
    fersnet prepare --dataset ckplus48 --source DIR --store s3://bucket/fer

Errors the user can fix print one line (`error: …`) and exit 1, never a bare traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="fersnet",
    help="FERSNet on Ray: prepare face data, train, synthesize balanced data, fine-tune.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
StoreOpt = Annotated[
    str,
    typer.Option(help="Store: a local folder, file:// or s3://bucket/prefix.", envvar="FERSNET_STORE"),
]
AddressOpt = Annotated[
    Optional[str],
    typer.Option(help="Ray cluster to run on (default: RAY_ADDRESS, else a local Ray).", envvar="RAY_ADDRESS"),
]


# --- choices: checked while the options are parsed, so a typo fails before any stage runs -------------
# Each list comes from its registry, imported only when the option is given (the model registry
# imports torch: about a second; the rest are cheap).


def _presets() -> list[str]:
    from fersnet_ray.train.config import PRESETS

    return list(PRESETS)


def _variants() -> list[str]:
    from fersnet_ray.model.config import VARIANTS  # = the registry's names (a test holds them equal), no torch

    return list(VARIANTS)


def _gan_modes() -> list[str]:
    from fersnet_ray.model.config import GAN_MODES

    return list(GAN_MODES)


def _adapters() -> list[str]:
    from fersnet_ray.prepare.sources import ADAPTERS

    return sorted(ADAPTERS)


def _align_methods() -> list[str]:
    from fersnet_ray.prepare.job import ALIGN_METHODS

    return list(ALIGN_METHODS)


def _choice(option: str, known):
    """An option callback that accepts None or one of `known()`, else one `error:` line and exit 1."""

    def check(value):
        if value is not None and value not in known():
            _fail(f"{option} {value!r}: unknown; use one of {', '.join(known())}")
        return value

    return check


def _complete(known):
    return lambda incomplete: [c for c in known() if c.startswith(incomplete)]


def _choice_option(option: str, known, help: str) -> typer.models.OptionInfo:
    """`typer.Option` for a name from a registry: checked at parse time, completed by the shell."""
    return typer.Option(option, help=help, callback=_choice(option, known), autocompletion=_complete(known))


# --- options: each declared once, here. A stage command and `run`/`ablation` share the alias, so the help
# of an option reads the same in both. An alias without a name takes its parameter's: `batch_size:
# SynthBatchSizeOpt` is synthesize's --batch-size, `synth_batch_size: SynthBatchSizeOpt` run's
# --synth-batch-size (tests/test_cli.py checks that run covers the stages it chains).

# prepare
DatasetOpt = Annotated[str, _choice_option("--dataset", _adapters, "Adapter: see `fersnet datasets`.")]
SourceOpt = Annotated[Optional[str], typer.Option(help="Source root (path or s3://); not needed for demo.")]
NameOpt = Annotated[Optional[str], typer.Option(help="Data set name in the store (default: the adapter).")]
FoldCountOpt = Annotated[
    Optional[int], typer.Option(help="Number of subject-disjoint, stratified folds (default: 10; demo: 2).")
]
SeedOpt = Annotated[int, typer.Option(help="Seed for the folds (and the demo faces).")]
AlignOpt = Annotated[
    Optional[str],
    _choice_option("--align", _align_methods, "fan | none (default: none for ckplus48/demo, fan otherwise)."),
]
AlignedSizeOpt = Annotated[int, typer.Option(help="Side of the aligned square face, pixels.")]
RgbOpt = Annotated[bool, typer.Option("--rgb", help="Keep colour (default: greyscale, as the paper).")]
AlignWeightsOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Face-alignment weights for --align fan, staged for a cluster without internet: a folder (path or "
        "s3://) with 2DFAN4-11f355bf06.pth.tar and s3fd-619a316812.pth."
    ),
]
LoaderActorsOpt = Annotated[Optional[int], typer.Option(help="Max face-loader actors of prepare (default: autoscale).")]
LoaderGpusOpt = Annotated[Optional[float], typer.Option(help="GPUs per face-loader actor of prepare (default: auto).")]
SubjectRegexOpt = Annotated[
    Optional[str], typer.Option(help="folder: regex whose first group is the subject in a file name.")
]
ClassesOpt = Annotated[Optional[str], typer.Option(help="folder/manifest: class names in label order, a,b,c.")]
ManifestOpt = Annotated[Optional[str], typer.Option(help="mmi: manifest CSV relative to --source.")]
DemoSubjectsOpt = Annotated[Optional[int], typer.Option(help="demo: number of generated subjects (default: 16).")]

# train (the resources and --max-failures are fine-tuning's too)
TrainFoldsOpt = Annotated[
    str,
    typer.Option(
        help="Folds to train (run: and to synthesise and fine-tune): 'all', a list like 0,3,7, or final (one "
        "model on every subject, no held-out test split; 'all,final' adds it to the folds)."
    ),
]
VariantOpt = Annotated[
    str,
    _choice_option(
        "--variant", _variants, "fersnet | fersnet_hard | fer_only (run: one that synthesises, not fer_only)."
    ),
]
PresetOpt = Annotated[
    Optional[str],
    _choice_option("--preset", _presets, "paper | ck48 | cpu48 | tiny (run: tiny for the demo set, else paper)."),
]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Override the preset's training epochs.")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(help="Override the preset's training batch size.")]
CheckpointEveryOpt = Annotated[
    Optional[int],
    typer.Option(help="Epochs between training checkpoints (default: the preset's; the last is always kept)."),
]
MatchCapacityOpt = Annotated[
    Optional[bool],
    typer.Option(help="Enlarge ablations to the original's parameter count (ablation: yes by default)."),
]
GanModeOpt = Annotated[Optional[str], _choice_option("--gan-mode", _gan_modes, "vanilla (eq. 6) | lsgan.")]
SkipsOpt = Annotated[
    Optional[bool],
    typer.Option(
        help="U-Net skips from the FES encoder to the decoder (not in the paper; default: the preset's, "
        "on for cpu48 and tiny). They let the generator keep the face it translates (README, Results)."
    ),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Override one setting of the preset, model.KEY=VALUE or train.KEY=VALUE (repeatable), e.g. "
        "--set train.lambda_rec=10 --set model.disc_widths=16,32,64,128. Keys: ModelConfig and TrainConfig.",
    ),
]
IdentityOpt = Annotated[
    Optional[str], typer.Option(help="Identity net for L_idt: train | none | URI of Light CNN-9 weights.")
]
WorkersPerFoldOpt = Annotated[int, typer.Option(help="Ray Train workers per fold (DDP when > 1).")]
GpusPerFoldOpt = Annotated[
    float, typer.Option(help="GPUs per fold (training and fine-tuning); fractions let folds share a GPU.")
]
CpusPerWorkerOpt = Annotated[float, typer.Option(help="CPUs per training worker.")]
ParallelFoldsOpt = Annotated[
    Optional[int], typer.Option(help="Folds at once (default: as many as the cluster holds now).")
]
MaxFailuresOpt = Annotated[int, typer.Option(help="Worker-group restarts per fold before giving up.")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue an existing run with its stored config.")]
OverwriteRunOpt = Annotated[bool, typer.Option(help="Delete an existing run (every stage's output) and start again.")]

# synthesize
SynthActorsOpt = Annotated[int, typer.Option(help="Generator actors (each loads the fold's FES branch once).")]
SynthGpusOpt = Annotated[float, typer.Option(help="GPUs per generator actor (0 on CPU).")]
SynthBatchSizeOpt = Annotated[int, typer.Option(help="Faces per generator forward pass.")]
RowsPerShardOpt = Annotated[int, typer.Option(help="Synthetic faces per Parquet shard (about).")]
MinScoreOpt = Annotated[
    Optional[float],
    typer.Option(help="Keep synthetic rows whose recogniser probability of the target is ≥ this."),
]
QualityOpt = Annotated[
    bool, typer.Option(help="Train each fold's recogniser: Table V accuracy, row scores, contact sheet.")
]
RecognizerEpochsOpt = Annotated[int, typer.Option(help="Epochs of each fold's Table V recogniser.")]
MaxRowsOpt = Annotated[
    Optional[int], typer.Option(help="Refuse, before any work, a fold whose synthetic output would exceed this.")
]

# finetune
FinetuneEpochsOpt = Annotated[
    Optional[int], typer.Option(help="Fine-tuning epochs over real + synthetic faces (run: 3 on the demo set).")
]
FinetuneLrOpt = Annotated[
    Optional[float],
    typer.Option(
        help="Fine-tuning's Adam learning rate, cosine-annealed to the final one (default: fersnet 1e-4, others 1e-3)."
    ),
]
FinetuneLrMinOpt = Annotated[
    Optional[float], typer.Option(help="Fine-tuning's final learning rate (default: fersnet 1e-6, others 1e-5).")
]
FinetuneBatchSizeOpt = Annotated[int, typer.Option(help="Fine-tuning batch size per fold.")]
ShuffleBufferOpt = Annotated[int, typer.Option(help="Rows in Ray Data's local shuffle buffer per worker.")]
CacheOpt = Annotated[
    Optional[bool],
    typer.Option("--cache/--stream", help="Fine-tuning keeps decoded faces in Ray's object store (default: auto)."),
]

# report
CompareOpt = Annotated[str, typer.Option(help="Other runs to add as Table VI rows, e.g. r1,r2.")]


def _options(ctx: typer.Context) -> dict:
    """The command's options by name, as the library function it calls takes them (less --address)."""
    return {k: v for k, v in ctx.params.items() if k != "address"}


def _run_names(text: str) -> tuple[str, ...]:
    """ "r1, r2" (--compare, --seeds) → ("r1", "r2"); as `fersnet run --compare` reads it (pipeline)."""
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _version(value: bool) -> None:
    if value:
        from fersnet_ray import __version__

        console.print(f"fersnet {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    """FERSNet on Ray: prepare face data, train, synthesize balanced data, fine-tune."""


def _fail(message: str) -> None:
    from rich.markup import escape

    from fersnet_ray.store import redact

    # escape: a message may hold brackets ("fersnet-ray[onnx]") that rich would take for markup and drop
    err_console.print(f"[bold red]error:[/] {escape(redact(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _run(fn, *args, **kwargs):
    """Calls a library function; user errors and unexpected failures end in one `error:` line."""
    try:
        return fn(*args, **kwargs)
    except _user_errors() as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence; FERSNET_DEBUG shows all
        if os.environ.get("FERSNET_DEBUG"):
            raise
        from fersnet_ray.runtime import root_cause

        _fail(f"{root_cause(e)} (set FERSNET_DEBUG=1 for the traceback)")


def _user_errors():
    """Exception types whose message is a complete, user-facing explanation."""
    from fersnet_ray.checkpoint import CheckpointError
    from fersnet_ray.jobs import JobsError
    from fersnet_ray.prepare.job import PrepareError
    from fersnet_ray.prepare.sources import SourceError
    from fersnet_ray.store import StoreError
    from fersnet_ray.synth.job import SynthError
    from fersnet_ray.train.job import TrainError
    from fersnet_ray.finetune.job import FinetuneError
    from fersnet_ray.pipeline import PipelineError
    from fersnet_ray.use.checkpoints import UseError

    return (
        CheckpointError,
        UseError,
        FinetuneError,
        PipelineError,
        PrepareError,
        SourceError,
        StoreError,
        TrainError,
        SynthError,
        JobsError,
        ValueError,
        FileNotFoundError,
        PermissionError,
    )


@app.command()
def datasets() -> None:
    """List the data set adapters `prepare --dataset` accepts."""
    from fersnet_ray.prepare.sources import ADAPTERS

    table = Table("adapter", "layout")
    for name, cls in sorted(ADAPTERS.items()):
        table.add_row(name, cls.description)
    console.print(table)


@app.command()
def prepare(
    ctx: typer.Context,
    dataset: DatasetOpt = "demo",
    source: SourceOpt = None,
    store: StoreOpt = "./fersnet-store",
    name: NameOpt = None,
    folds: FoldCountOpt = None,
    seed: SeedOpt = 0,
    align: AlignOpt = None,
    aligned_size: AlignedSizeOpt = 110,
    rgb: RgbOpt = False,
    weights: AlignWeightsOpt = None,
    actors: LoaderActorsOpt = None,
    gpus_per_actor: LoaderGpusOpt = None,
    subject_regex: SubjectRegexOpt = None,
    classes: ClassesOpt = None,
    manifest: ManifestOpt = None,
    demo_subjects: DemoSubjectsOpt = None,
    address: AddressOpt = None,
) -> None:
    """Read a face data set, align the faces and write the face table with folds to the store."""
    from fersnet_ray.pipeline import prepare_config
    from fersnet_ray.prepare.job import prepare as run_prepare
    from fersnet_ray.runtime import init_ray
    from fersnet_ray.store import Store

    cfg = _run(prepare_config, **_options(ctx))
    _run(init_ray, address)
    result = _run(run_prepare, cfg)
    print_card(result.card, Store.from_uri(result.store_uri).dataset(result.name).uri)


def _fold_key(value: str | None):
    """--fold: a fold number, or 'final' (the model trained on every subject); None stays None."""
    from fersnet_ray.foldkey import parse_fold

    return None if value is None else _run(parse_fold, value)


FoldOpt = Annotated[
    Optional[str],
    typer.Option(
        "--fold",
        help="k: fold k's model; final: the model trained on every subject (default: the final model when "
        "it has finished).",
        callback=_fold_key,
    ),
]


@app.command()
def train(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option(help="Prepared data set name in the store.")] = "demo",
    run: Annotated[str, typer.Option(help="Run name: runs/<run>/ in the store.")] = "demo",
    store: StoreOpt = "./fersnet-store",
    folds: TrainFoldsOpt = "all",
    variant: VariantOpt = "fersnet",
    preset: PresetOpt = "paper",
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    match_capacity: MatchCapacityOpt = False,
    gan_mode: GanModeOpt = None,
    identity: IdentityOpt = None,
    skips: SkipsOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    overrides: SetOpt = None,
    workers_per_fold: WorkersPerFoldOpt = 1,
    gpus_per_fold: GpusPerFoldOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    parallel_folds: ParallelFoldsOpt = None,
    max_failures: MaxFailuresOpt = 2,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
    address: AddressOpt = None,
) -> None:
    """Train FERSNet on every requested fold at once (Ray Train), checkpointing into the store."""
    from fersnet_ray.pipeline import train_job
    from fersnet_ray.runtime import init_ray
    from fersnet_ray.train.job import train as run_train

    options = _options(ctx)
    del options["resume"], options["overwrite"]
    job = _run(train_job, **options)  # reads the data set's card: its classes and channels
    _run(init_ray, address)
    print_evaluation(_run(run_train, job, resume, overwrite))


@app.command()
def evaluate(
    run: Annotated[str, typer.Option(help="Run name.")] = "demo",
    store: StoreOpt = "./fersnet-store",
) -> None:
    """Collect every fold's test accuracy of a run: per fold and mean ± std, into runs/<run>/evaluation.json."""
    from fersnet_ray.store import Store
    from fersnet_ray.train.job import evaluate_run

    print_evaluation(_run(evaluate_run, Store.from_uri(store), run))


@app.command()
def finetune(
    ctx: typer.Context,
    run: Annotated[str, typer.Option(help="Trained and synthesised run to fine-tune (FES-DA).")] = "demo",
    store: StoreOpt = "./fersnet-store",
    folds: Annotated[
        str, typer.Option(help="'all' (every synthesised fold, final included) or a list, e.g. 0,3 or final.")
    ] = "all",
    epochs: FinetuneEpochsOpt = 30,
    lr: FinetuneLrOpt = None,
    lr_min: FinetuneLrMinOpt = None,
    batch_size: FinetuneBatchSizeOpt = 64,
    shuffle_buffer: ShuffleBufferOpt = 2048,
    cache: CacheOpt = None,
    workers_per_fold: WorkersPerFoldOpt = 1,
    gpus_per_fold: GpusPerFoldOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    parallel_folds: ParallelFoldsOpt = None,
    max_failures: MaxFailuresOpt = 2,
    data: Annotated[
        str,
        typer.Option(
            help="real+synthetic (FES-DA) | real (the control: real faces only, same steps and schedule; "
            "written to runs/<run>/finetune-real/)."
        ),
    ] = "real+synthetic",
    min_score: Annotated[
        Optional[float],
        typer.Option(help="Use only synthetic rows the recogniser scored ≥ this (runs/<run>/finetune-fes-da@X/)."),
    ] = None,
    refill: Annotated[
        bool,
        typer.Option(
            help="With --min-score: draw the kept synthetic rows again in the dropped ones' places, so an epoch "
            "has FES-DA's rows and steps, as the control does; --no-refill: one pass over the kept rows."
        ),
    ] = True,
    synthetic_weight: Annotated[
        float,
        typer.Option(
            help="Loss weight of a synthetic face, a real one's being 1: below 1 the fakes still balance the "
            "classes but count less (runs/<run>/finetune-fes-da-wX/)."
        ),
    ] = 1.0,
    score_weighted: Annotated[
        bool,
        typer.Option(
            "--weight-by-score",
            help="Also weight each synthetic face by its recogniser score, a soft --min-score "
            "(runs/<run>/finetune-fes-da-wscore/).",
        ),
    ] = False,
    classifier: Annotated[
        str,
        typer.Option(
            help="fersnet (the fold's trained FERSNet) | small-cnn | resnet18 | resnet34 | timm:NAME | "
            "torchscript:URI (your scripted model, (N,C,S,S) in [-1,1] → (N,E) logits); written to "
            "runs/<run>/finetune-<classifier>[-real]/."
        ),
    ] = "fersnet",
    weights: Annotated[
        Optional[str], typer.Option(help="State dict (path or s3://) the classifier starts from (default: scratch).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Fine-tune again from the trained model.")] = False,
    address: AddressOpt = None,
) -> None:
    """Fine-tune a classifier per fold on its real + synthetic faces, streamed by Ray Data (FES-DA), or the control."""
    from fersnet_ray.finetune.job import finetune as run_finetune
    from fersnet_ray.pipeline import finetune_job
    from fersnet_ray.runtime import init_ray

    job = _run(finetune_job, **_options(ctx))
    _run(init_ray, address)
    print_evaluation(_run(run_finetune, job))


@app.command()
def report(
    run: Annotated[str, typer.Option(help="Run to report on.")] = "demo",
    store: StoreOpt = "./fersnet-store",
    compare: CompareOpt = "",
    seeds: Annotated[
        str,
        typer.Option(
            help="Seed replicates of --run (the same protocol with another train.seed), e.g. r-s1,r-s2: every "
            "row averaged per fold over the runs and compared on those means."
        ),
    ] = "",
) -> None:
    """Write the Markdown results report with PNG charts into the store (runs/<run>/report/)."""
    from fersnet_ray.report.job import write_report

    replicates = _run_names(seeds)
    uri = _run(write_report, store, run, _run_names(compare), seeds=replicates)
    print_results(store, run)
    console.print(f"report: {uri}", highlight=False, soft_wrap=True)


def _pipeline(
    ctx: typer.Context,
    # prepare
    store: StoreOpt = "./fersnet-store",
    dataset: DatasetOpt = "demo",
    source: SourceOpt = None,
    name: NameOpt = None,
    folds: FoldCountOpt = None,
    seed: SeedOpt = 0,
    align: AlignOpt = None,
    aligned_size: AlignedSizeOpt = 110,
    rgb: RgbOpt = False,
    weights: AlignWeightsOpt = None,
    prepare_actors: LoaderActorsOpt = None,
    prepare_gpus_per_actor: LoaderGpusOpt = None,
    demo_subjects: DemoSubjectsOpt = None,
    classes: ClassesOpt = None,
    subject_regex: SubjectRegexOpt = None,
    manifest: ManifestOpt = None,
    # train
    run: Annotated[Optional[str], typer.Option(help="Run name (default: the data set name).")] = None,
    train_folds: TrainFoldsOpt = "all",
    preset: PresetOpt = None,
    variant: VariantOpt = "fersnet",
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    gan_mode: GanModeOpt = None,
    identity: IdentityOpt = None,
    skips: SkipsOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    overrides: SetOpt = None,
    match_capacity: MatchCapacityOpt = None,
    workers_per_fold: WorkersPerFoldOpt = 1,
    gpus_per_fold: GpusPerFoldOpt = 0.0,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    parallel_folds: ParallelFoldsOpt = None,
    max_failures: MaxFailuresOpt = 2,
    resume: ResumeOpt = False,
    overwrite: OverwriteRunOpt = False,
    # synthesize
    actors: SynthActorsOpt = 1,
    gpus_per_actor: SynthGpusOpt = 0.0,
    synth_batch_size: SynthBatchSizeOpt = 256,
    rows_per_shard: RowsPerShardOpt = 1200,
    min_score: MinScoreOpt = None,
    quality: QualityOpt = True,
    recognizer_epochs: RecognizerEpochsOpt = 30,
    max_rows: MaxRowsOpt = None,
    # finetune
    finetune_epochs: FinetuneEpochsOpt = None,
    finetune_lr: FinetuneLrOpt = None,
    finetune_lr_min: FinetuneLrMinOpt = None,
    finetune_batch_size: FinetuneBatchSizeOpt = 64,
    shuffle_buffer: ShuffleBufferOpt = 2048,
    cache: CacheOpt = None,
    # report, ablation
    compare: CompareOpt = "",
    finetune_min_score: Annotated[
        Optional[float], typer.Option(help="ablation: add an FES-DA row on synthetic rows scored ≥ this.")
    ] = None,
    classifiers: Annotated[
        str,
        typer.Option(
            help="ablation: also fine-tune these classifiers (e.g. small-cnn,resnet18) on real faces only "
            "and on real + synthetic, paired in the report."
        ),
    ] = "",
    address: AddressOpt = None,
) -> None:
    from fersnet_ray.pipeline import PipelineConfig, run_ablation, run_pipeline
    from fersnet_ray.runtime import init_ray

    ablation = ctx.info_name == "ablation"
    cfg = _run(PipelineConfig.from_options, ablation, **_options(ctx))  # every stage's config, before Ray
    _run(init_ray, address)
    result = _run(run_ablation if ablation else run_pipeline, cfg)
    print_results(store, cfg.run_name)
    console.print(f"report: {result['report']}", highlight=False, soft_wrap=True)


app.command(
    "run",
    help="Run the whole pipeline: prepare → train → synthesize → finetune → report (resumable; "
    "with no options: the demo set on a local Ray, CPU-sized).",
)(_pipeline)
app.command(
    "ablation",
    help="The paper's Table VI on the same folds: fer_only, fersnet_hard, fersnet, and fersnet + FES-DA, "
    "then the report.",
)(_pipeline)


def print_results(store: str, run: str) -> None:
    """The finished report's Table VI rows as a console table (and averaged over the seed replicates it holds).

    Read from report.json, which `write_report` fills with everything it collected: the console shows what the
    report says, without reading every evaluation, history and manifest of the run a second time.
    """
    from fersnet_ray.report.job import mean_std
    from fersnet_ray.store import REPORT_JSON, Store

    st = Store.from_uri(store)
    data = st.read_json(st.run(run).report_file(REPORT_JSON))
    table = Table("model", "run", "folds", "mean ± std", "pooled", box=box.SIMPLE_HEAD, pad_edge=False)
    for r in data["rows"]:
        table.add_row(
            r["name"],
            r["run"],
            str(len(r["per_fold"])),
            f"{mean_std(r)}%",
            f"{100 * r['pooled']:.2f}%",
        )
    console.print(table)
    if data["table_v"]:
        import numpy as np

        console.print(
            f"synthetic faces, Table V accuracy: {100 * np.mean(list(data['table_v'].values())):.2f}% "
            f"over {len(data['table_v'])} fold(s)",
            highlight=False,
        )
    final = data["final"]
    if final is not None:
        done = [s for s, ok in (("trained", final["trained"]), ("synthesised", final["synthetic"])) if ok]
        done += [f"fine-tuned ({k})" for k in final["finetuned"]]
        where = "the folds above estimate it" if data["rows"] else "train folds for an estimate (--folds all)"
        console.print(
            f"final model (every subject): {', '.join(done) or 'started'}; no held-out accuracy, no subject was "
            f"left out to test it; {where}",
            highlight=False,
            soft_wrap=True,
        )
    if "seeds" in data:
        across = data["seeds"]
        table = Table(
            "model", "folds", "mean ± std", *(f"seed {s}" for s in across["runs"].values()), box=box.SIMPLE_HEAD
        )
        for r in across["rows"]:
            each = [f"{100 * r['per_run'][n]:.2f}%" if n in r["per_run"] else "–" for n in across["runs"]]
            table.add_row(r["name"], str(len(r["per_fold"])), f"{mean_std(r)}%", *each)
        console.print(f"averaged per fold over {len(across['runs'])} seeds ({', '.join(across['runs'])}):")
        console.print(table)
        for p in across["paired"]:
            console.print(
                f"{p['row']} − {p['baseline']}: {100 * p['mean_diff']:+.2f} ± {100 * p['std_diff']:.2f} points over "
                f"{p['folds']} folds, {p['improved']} / {p['tied']} / {p['worse']} better / tied / worse",
                highlight=False,
                soft_wrap=True,
            )


@app.command()
def synthesize(
    ctx: typer.Context,
    run: Annotated[str, typer.Option(help="Trained run whose FES branches synthesise.")] = "demo",
    store: StoreOpt = "./fersnet-store",
    folds: Annotated[
        str, typer.Option(help="'all' (every trained fold, final included) or a list, e.g. 0,3 or final.")
    ] = "all",
    actors: SynthActorsOpt = 1,
    gpus_per_actor: SynthGpusOpt = 0.0,
    batch_size: SynthBatchSizeOpt = 256,
    rows_per_shard: RowsPerShardOpt = 1200,
    overwrite: Annotated[bool, typer.Option(help="Redo folds whose output is complete.")] = False,
    min_score: MinScoreOpt = None,
    quality: QualityOpt = True,
    recognizer_epochs: RecognizerEpochsOpt = 30,
    max_rows: MaxRowsOpt = None,
    address: AddressOpt = None,
) -> None:
    """Write every missing expression of every training face as balanced Parquet shards, exactly once."""
    from fersnet_ray.pipeline import synth_job
    from fersnet_ray.runtime import init_ray
    from fersnet_ray.synth.job import synthesize as run_synth

    job = _run(synth_job, **_options(ctx))
    _run(init_ray, address)
    manifests = _run(run_synth, job)
    table = Table(
        "fold",
        "shards",
        "synthetic",
        "per class (real + synthetic)",
        "balanced",
        "Table V acc.",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for fold, m in manifests.items():
        per = sorted(set(m["total_per_class"].values()))
        q = m.get("quality")
        table.add_row(
            str(fold),
            str(len(m["shards"])),
            str(m["rows"]),
            ", ".join(map(str, per)),
            "yes" if m["balanced"] else "no",
            f"{100 * q['synthetic_test_accuracy']:.2f}%" if q and q["synthetic_test_accuracy"] is not None else "-",
        )
    console.print(table)


@app.command()
def verify(
    run: Annotated[str, typer.Option(help="Run whose synthetic shards to check.")] = "demo",
    store: StoreOpt = "./fersnet-store",
) -> None:
    """Re-check every fold's shards (and synthetic/final/): checksums, schema, duplicates, missing pairs, balance."""
    from fersnet_ray.store import Store
    from fersnet_ray.synth.verify import verify_run

    problems = _run(verify_run, Store.from_uri(store), run)
    bad = [p for ps in problems.values() for p in ps]
    for p in bad:
        err_console.print(f"[bold red]error:[/] {p}", highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(1)
    from fersnet_ray.foldkey import label

    console.print(
        f"{run}: {len(problems)} fold(s) verified ({', '.join(map(label, problems))}): checksums, schema, no "
        "duplicate, no missing pair, real + synthetic faces equal per class (or, after --min-score, as its "
        "manifest records)",
        highlight=False,
        soft_wrap=True,
    )


# --- using the trained classifier: predict and export (fersnet_ray/use/) ---

# Which classifier of the run: FERSNet (trained, or fine-tuned when that finished) or one that
# `fersnet finetune --classifier NAME [--data real]` made, in runs/<run>/finetune-<NAME>[-real]/.
UseClassifierOpt = Annotated[
    str,
    typer.Option(
        "--classifier",
        help="fersnet (the run's FERSNet) | a classifier fine-tuned with `fersnet finetune --classifier NAME`: "
        "small-cnn, resnet18, resnet34, timm:NAME, torchscript:URI.",
    ),
]
UseDataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Which fine-tuning: real+synthetic (runs/<run>/finetune[-NAME]/) | real (…-real/), as finetune's --data.",
    ),
]


@app.command()
def predict(
    source: Annotated[str, typer.Option(help="Images: a folder, or a manifest file with --dataset-adapter manifest.")],
    out: Annotated[
        str, typer.Option(help="Output FILE.parquet or FILE.csv (path or s3://); rejects: FILE.rejects.csv.")
    ],
    run: Annotated[str, typer.Option(help="Trained run whose classifier to use.")] = "demo",
    store: StoreOpt = "./fersnet-store",
    fold: FoldOpt = None,
    ensemble: Annotated[
        bool,
        typer.Option(help="Average the probabilities of every cross-validation fold (default without a final model)."),
    ] = False,
    checkpoint: Annotated[
        str, typer.Option(help="auto (fine-tuned when finished, else trained) | finetune | train.")
    ] = "auto",
    dataset_adapter: Annotated[
        str,
        typer.Option(help="images (any layout) | folder (<expression>/<file>: true labels) | manifest (path[,label])."),
    ] = "images",
    align: Annotated[
        Optional[str], typer.Option(help="fan | none (default: as the run's data set was prepared).")
    ] = None,
    weights: Annotated[Optional[str], typer.Option(help="Folder with the face-alignment weights (align fan).")] = None,
    actors: Annotated[int, typer.Option(help="Classifier actors (each builds the model once).")] = 1,
    gpus_per_actor: Annotated[
        Optional[float], typer.Option(help="GPUs per actor (default: 1 if the cluster has one).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per block and forward pass.")] = 256,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    classifier: UseClassifierOpt = "fersnet",
    data: UseDataOpt = "real+synthetic",
    address: AddressOpt = None,
) -> None:
    """Classify new images with a trained run (Ray Data batch inference): one row per image, every class's probability."""
    from fersnet_ray.runtime import init_ray
    from fersnet_ray.use.predict import PredictJob, predict as run_predict

    job = PredictJob(
        store=store,
        run=run,
        source=source,
        out=out,
        fold=fold,
        ensemble=ensemble,
        checkpoint=checkpoint,
        adapter=dataset_adapter,
        align=align,
        weights=weights,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        batch_size=batch_size,
        overwrite=overwrite,
        classifier=classifier,
        data=data,
    )
    _run(init_ray, address)
    print_prediction(_run(run_predict, job))


def print_prediction(result: dict) -> None:
    console.print(f"models: {result['models_used']}", highlight=False, soft_wrap=True)
    for line in result["checkpoints"]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    for note in result["notes"]:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    acc = result["accuracy"]
    if acc is not None:
        console.print(f"accuracy on {result['labelled_rows']} labelled images: {100 * acc:.2f}%", highlight=False)
    rejects = result["rejects"]
    console.print(f"{result['rows']} images classified, {len(rejects)} rejected", highlight=False)
    for r in rejects[:20]:
        console.print(f"  {r['path']}: {r['reason']}", highlight=False, soft_wrap=True)
    if len(rejects) > 20:
        console.print(f"  … {len(rejects) - 20} more in {result['rejects_out']}", highlight=False, soft_wrap=True)
    console.print(f"predictions: {result['out']}; rejects: {result['rejects_out']}", highlight=False, soft_wrap=True)


@app.command()
def export(
    out: Annotated[str, typer.Option(help="Output folder (path or s3://).")],
    run: Annotated[str, typer.Option(help="Trained run whose classifier to export.")] = "demo",
    store: StoreOpt = "./fersnet-store",
    fold: FoldOpt = None,
    format: Annotated[
        str, typer.Option("--format", help="torchscript | safetensors | onnx ([onnx] extra), comma-separated.")
    ] = "torchscript",
    checkpoint: Annotated[
        str, typer.Option(help="auto (fine-tuned when finished, else trained) | finetune | train.")
    ] = "auto",
    check_faces: Annotated[int, typer.Option(help="Face-table faces each exported file is checked on.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files in the output folder.")] = False,
    classifier: UseClassifierOpt = "fersnet",
    data: UseDataOpt = "real+synthetic",
) -> None:
    """Export the recognition path ((N, C, S, S) in [-1, 1] -> logits) with a JSON card; each file checked."""
    from fersnet_ray.use.export import ExportJob, export as run_export, parse_formats

    job = ExportJob(
        store=store,
        run=run,
        out=out,
        formats=_run(parse_formats, format),
        fold=fold,
        checkpoint=checkpoint,
        check_faces=check_faces,
        overwrite=overwrite,
        classifier=classifier,
        data=data,
    )
    card = _run(run_export, job)
    src, net = card["source"], card["backbone"]
    tuned = f"fine-tuned on {net['fine_tuned_on']}" if src["stage"] == "finetune" else "trained"
    console.print(
        f"{src['run']} {'final model' if src['fold'] == 'final' else 'fold ' + str(src['fold'])} "
        f"{net['classifier']} ({tuned}, "
        f"epoch {src['epoch']}, sha256 {src['sha256'][:16]}): input {card['input']}",
        highlight=False,
        soft_wrap=True,
    )
    for fmt, name in card["files"].items():
        c = card["checks"][fmt]
        console.print(
            f"  {name}: checked on {c['faces']} faces, max |Δlogit| {c['max_abs_logit_diff']:.2e} "
            f"(tolerance {c['tolerance']['atol']:g} + {c['tolerance']['rtol']:g}·|logit|), argmax agrees "
            f"{100 * c['same_argmax']:.0f}%",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"card: {card['out'].rstrip('/')}/fersnet-card.json", highlight=False, soft_wrap=True)


# --- cluster jobs: submit and jobs (fersnet_ray/jobs.py) ---

DashboardOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray dashboard (Jobs API) URL, http(s)://HEAD:8265 (default: RAY_ADDRESS).",
        envvar="RAY_ADDRESS",
    ),
]
HeaderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--header", help="'Name: value' HTTP header on every request, repeatable (default: RAY_JOB_HEADERS, JSON)."
    ),
]
jobs_app = typer.Typer(help="Ray jobs on the cluster: list, status, logs, stop.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def _headers(header: list[str] | None) -> dict | None:
    from fersnet_ray.jobs import parse_headers

    return _run(parse_headers, header) if header else None  # none given: RAY_JOB_HEADERS


def _print_logs(chunks) -> None:
    """Job output verbatim (no Rich markup or wrapping); call it through `_run`, which sees its errors."""
    for chunk in chunks:
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _end(info) -> None:
    """The job's final status on stderr; exit 1 unless it SUCCEEDED."""
    if info.status != "SUCCEEDED":
        _fail(f"job {info.submission_id} {info.status}: {info.message}")
    err_console.print(f"job {info.submission_id} SUCCEEDED", highlight=False, soft_wrap=True)


# allow_interspersed_args=False: everything after STAGE belongs to the stage, even options submit
# also has (--address); ignore_unknown_options + allow_extra_args collect them into ctx.args.
@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False}
)
def submit(
    ctx: typer.Context,
    stage: Annotated[
        str, typer.Argument(metavar="STAGE [STAGE_ARGS]...", help="prepare, train, … and the stage's own arguments.")
    ],
    address: DashboardOpt = None,
    header: HeaderOpt = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", help="KEY=VALUE in the job's environment, repeatable; no secrets.")
    ] = None,
    pip: Annotated[
        bool, typer.Option(help="Install the project's dependencies except torch and Ray in the job.")
    ] = True,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job to end; exit 1 unless it SUCCEEDED.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Stream the job's output until it ends; exit 1 unless it SUCCEEDED.")
    ] = False,
    submission_id: Annotated[str | None, typer.Option(help="Job id (default: fersnet-STAGE-<random>).")] = None,
) -> None:
    """Run a stage on a Ray cluster as a Ray job: `fersnet submit [OPTIONS] STAGE [STAGE ARGS]…`; prints its id."""
    from fersnet_ray import jobs

    if stage.startswith("-"):
        _fail(f"submit does not take {stage}; its options come before STAGE, see `fersnet submit --help`")
    headers = _headers(header)
    env_vars = _run(jobs.parse_env, env or [])
    commands = typer.main.get_command(app).commands  # the stages' own parsers check their arguments
    sid = _run(jobs.submit, stage, ctx.args, commands, address, headers, pip, env_vars, submission_id)
    print(sid)  # alone on stdout, for ID=$(fersnet submit …)
    if follow:
        _run(_print_logs, jobs.follow(sid, address, headers))
    if follow or wait:
        _end(_run(jobs.wait, sid, None, address, headers))
    else:
        err_console.print(f"follow it: fersnet jobs logs {sid} --follow", highlight=False, soft_wrap=True)


@jobs_app.command("list")
def jobs_list(address: DashboardOpt = None, header: HeaderOpt = None) -> None:
    """Every job on the cluster, oldest first."""
    import time

    from fersnet_ray.jobs import list_jobs

    table = Table("submission id", "status", "stage", "started", "took", box=box.SIMPLE_HEAD, pad_edge=False)
    for j in _run(list_jobs, address, _headers(header)):
        started = time.strftime("%m-%d %H:%M", time.localtime(j.start_time)) if j.start_time else "-"
        took = f"{(j.end_time or time.time()) - j.start_time:.0f} s" if j.start_time else "-"
        table.add_row(j.submission_id, j.status, j.stage or "-", started, took)
    table.columns[0].no_wrap = True
    console.print(table)


@jobs_app.command("status")
def jobs_status(
    submission_id: Annotated[str, typer.Argument(help="Submission id.")],
    address: DashboardOpt = None,
    header: HeaderOpt = None,
) -> None:
    """A job's status and Ray's message about it."""
    from fersnet_ray.jobs import status

    info = _run(status, submission_id, address, _headers(header))
    console.print(f"{info.submission_id}: {info.status}  {info.message}", highlight=False, soft_wrap=True)


@jobs_app.command("logs")
def jobs_logs(
    submission_id: Annotated[str, typer.Argument(help="Submission id.")],
    follow: Annotated[bool, typer.Option("--follow", help="Keep streaming until the job ends.")] = False,
    address: DashboardOpt = None,
    header: HeaderOpt = None,
) -> None:
    """A job's output (its driver's stdout and stderr)."""
    from fersnet_ray import jobs

    headers = _headers(header)
    if follow:
        _run(_print_logs, jobs.follow(submission_id, address, headers))
    else:
        _print_logs([_run(jobs.logs, submission_id, address, headers)])


@jobs_app.command("stop")
def jobs_stop(
    submission_id: Annotated[str, typer.Argument(help="Submission id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it has stopped.")] = False,
    address: DashboardOpt = None,
    header: HeaderOpt = None,
) -> None:
    """Stop a job (SIGTERM to its driver, SIGKILL a few seconds later)."""
    from fersnet_ray import jobs

    headers = _headers(header)
    if not _run(jobs.stop, submission_id, address, headers):
        console.print(f"{submission_id} was not running", highlight=False)
    elif not wait:
        console.print(f"{submission_id}: stop requested", highlight=False)
    if wait:
        console.print(
            f"{submission_id}: {_run(jobs.wait, submission_id, None, address, headers).status}", highlight=False
        )


def print_evaluation(summary: dict) -> None:
    config = summary["config"]
    what = config["experiment"]["model"]["variant"]  # training: "fersnet"; a fine-tuning: its report row
    if "finetune" in config:
        from fersnet_ray.finetune.loop import FinetuneConfig

        what = FinetuneConfig(**config["finetune"]).report_key(what)  # "small-cnn+fes-da@0.5"
    if summary["folds"]:
        table = Table("fold", "accuracy", "correct / total", "epochs", box=box.SIMPLE_HEAD, pad_edge=False)
        for k, f in summary["folds"].items():
            table.add_row(k, f"{100 * f['accuracy']:.2f}%", f"{f['correct']} / {f['total']}", str(f["epochs"]))
        console.print(table)
        n = len(summary["folds"])
        spread = f" ± {100 * summary['std_accuracy']:.2f}% mean ± std over {n} folds" if n > 1 else "% on one fold"
        console.print(
            f"{summary['run']} ({what}): {100 * summary['mean_accuracy']:.2f}{spread}; "
            f"pooled {100 * summary['pooled_accuracy']:.2f}%",
            highlight=False,
        )
    if "final" in summary:
        print_final(summary["run"], summary["final"], bool(summary["folds"]))


def print_final(run: str, final: dict, have_folds: bool) -> None:
    """The final model's lines: what it trained on, and that it has no held-out accuracy (plainly)."""
    facts = [f"{final['epochs']} epochs"]
    if final.get("training_faces") is not None:
        facts.append(f"{final['training_faces']} faces of {final['training_subjects']} subjects")
    if final.get("training_rows") is not None:
        facts.append(f"{final['training_rows']} real + synthetic faces")
    where = (
        "the fold accuracies above estimate it"
        if have_folds
        else f"train cross-validation folds for an estimate: fersnet train --run {run} --folds all"
    )
    console.print(
        f"{run} final model (every subject; {', '.join(facts)}): no held-out accuracy, no subject was "
        f"left out to test it; {where}",
        highlight=False,
        soft_wrap=True,
    )


def print_card(card: dict, where: str) -> None:
    """Faces per class and fold, then the rejects, as the end of `prepare` shows them."""
    counts = card["counts"]
    console.print(
        f"{card['name']}: {card['num_faces']} faces of {card['num_subjects']} subjects; faces per class and fold:",
        highlight=False,
        soft_wrap=True,
    )
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("class")
    for f in counts["per_fold"]:
        table.add_column(f, justify="right")
    table.add_column("total", justify="right", style="bold")
    for c in card["classes"]:
        table.add_row(
            c, *(str(counts["per_fold_class"][f][c]) for f in counts["per_fold"]), str(counts["per_class"][c])
        )
    table.add_row("all", *(str(n) for n in counts["per_fold"].values()), str(card["num_faces"]), style="bold")
    console.print(table)
    rejects = card["rejects"]
    console.print(f"rejects: {len(rejects)}", highlight=False)
    for r in rejects[:20]:
        console.print(f"  {r['source']}: {r['reason']}", highlight=False, soft_wrap=True)
    if len(rejects) > 20:
        console.print(f"  … {len(rejects) - 20} more in _card.json", highlight=False)
    for note in card.get("notes", []):
        console.print(f"note: {note}", highlight=False)
    console.print(f"face table: {where}", highlight=False, soft_wrap=True)


def main() -> None:  # console-script entry point
    sys.exit(app())


if __name__ == "__main__":
    main()
