"""Which checkpoint of a run a user gets: the fold's fine-tuned model when it finished, else the trained one.

    ref = resolve(store, "demo", fold=0)            # ModelRef(stage="finetune" | "train", path, sha256, ...)
    ref = resolve(store, "demo", fold="final")      # the final model (every subject), or a UseError
    final = final_model(store, "demo")              # the final model when it finished, else None
    refs = resolve_folds(store, "demo", None)       # every cross-validation fold, for an ensemble
    ref = resolve(store, "demo", 0, classifier="small-cnn", data="real")   # runs/demo/finetune-small-cnn-real/

A fold "finished" a stage when its `evaluation.json` is there (each stage writes it last) and its
newest complete checkpoint (checksum matching `meta.json`) holds the stage's last epoch. Anything
else is a `UseError` that names what is missing and the command that makes it.

`classifier` and `data` pick the fine-tuning folder as `fersnet finetune --classifier --data` named it
(`FinetuneConfig.folder`). FERSNet falls back to its trained checkpoint; another classifier exists
only as fine-tuned, so its folder must hold the finished fold.
"""

from __future__ import annotations

from dataclasses import dataclass

from fersnet_ray.foldkey import FINAL, Fold, is_final
from fersnet_ray.store import TRAIN, Run, Store, StoreError

STAGES = ("auto", "finetune", "train")
DATA = ("real+synthetic", "real")  # finetune.loop.FINETUNE_DATA: which fine-tuning of the classifier


class UseError(RuntimeError):
    """A run, fold, checkpoint, input or output that cannot be used; the message is one line, safe to print."""


@dataclass(frozen=True)
class ModelRef:
    """One finished checkpoint: what `predict` and `export` load, by path (actors load it themselves)."""

    run: str
    fold: Fold  # a fold number, or "final"
    stage: str  # "finetune" (FES-DA) or "train"
    path: str  # checkpoint folder in the store (store.path form)
    uri: str  # the same, as a URI for messages and cards
    sha256: str  # of state.pt, from meta.json
    epoch: int
    classifier: str = "fersnet"  # as fine-tuned (finetune config.json): torchscript:URI with its absolute URI
    data: str = "real+synthetic"  # the fine-tuning's --data (meaningless for stage "train")

    @property
    def id(self) -> str:
        """Short identity for outputs and logs, like the synthetic shards' `checkpoint` column."""
        return f"{self.uri}@sha256:{self.sha256[:16]}"

    @property
    def fersnet(self) -> bool:
        return self.classifier == "fersnet"

    def describe(self) -> str:
        if self.stage == "train":
            what = "trained (no fine-tuning)"
        elif self.fersnet:
            what = "fine-tuned (FES-DA)" if self.data == "real+synthetic" else "fine-tuned on real faces only"
        else:
            on = "real + synthetic faces" if self.data == "real+synthetic" else "real faces only"
            what = f"{self.classifier} fine-tuned on {on}"
        if is_final(self.fold):
            return f"final model (every subject, no held-out accuracy): {what}, epoch {self.epoch}, {self.uri}"
        return f"fold {self.fold}: {what}, epoch {self.epoch}, {self.uri}"


def run_config(store: Store, run: str) -> dict:
    """runs/<run>/config.json (data set + experiment), or a UseError naming the missing file."""
    try:
        return store.run(run).read_config()
    except StoreError as e:
        raise UseError(str(e)) from None


def _finished(layout: Run, fold: Fold, stage: str | None, epochs: int) -> tuple[str, dict] | None:
    """(checkpoint folder, its meta) when the fold finished the stage: evaluation.json + last epoch."""
    from fersnet_ray.checkpoint import checkpoint_meta, latest_checkpoint_in

    if not layout.store.exists(layout.evaluation(fold, stage)):
        return None
    ckpt = latest_checkpoint_in(layout.store, layout.fold(fold, stage))
    if ckpt is None:
        return None
    meta = checkpoint_meta(layout.store, ckpt)
    return (ckpt, meta) if meta["epoch"] >= epochs else None


def _check_fold(store: Store, run: str, config: dict, fold: Fold) -> None:
    from fersnet_ray.table import read_card

    card = read_card(store, config["dataset"])
    if is_final(fold):
        return  # every face table has a final model's split: all of it
    if not 0 <= fold < card["folds"]:
        raise UseError(
            f"run {run!r}: face table {config['dataset']!r} has folds 0..{card['folds'] - 1}; no fold {fold}"
        )


def finetune_folder(classifier: str, data: str) -> str:
    """The folder of runs/<run>/ that `fersnet finetune --classifier C --data D` writes (e.g. finetune-small-cnn-real)."""
    from fersnet_ray.finetune.loop import FinetuneConfig

    if data not in DATA:
        raise UseError(f"--data {data!r}: use one of {', '.join(DATA)}")
    return FinetuneConfig.for_classifier(classifier, data=data).folder  # an unknown classifier lists the choices


def _finetune_command(run: str, classifier: str, data: str, fold: Fold | None = None) -> str:
    folds = f" --folds {fold}" if fold is not None else ""
    parts = [f"fersnet finetune --run {run}{folds}"]
    parts += [f"--classifier {classifier}"] if classifier != "fersnet" else []
    parts += ["--data real"] if data == "real" else []
    return " ".join(parts)


def resolve(
    store: Store, run: str, fold: Fold, stage: str = "auto", classifier: str = "fersnet", data: str = "real+synthetic"
) -> ModelRef:
    """The checkpoint of `fold` ("final" included) to use: fine-tuned if finished (stage "auto" or "finetune"),
    else trained.

    classifier, data: which fine-tuning (`fersnet finetune --classifier --data`); only FERSNet has a
    trained checkpoint to fall back to.
    """
    from fersnet_ray.train.config import Experiment

    if stage not in STAGES:
        raise UseError(f"--checkpoint {stage!r}: use one of {', '.join(STAGES)}")
    folder = finetune_folder(classifier, data)
    layout = store.run(run)
    if classifier != "fersnet" and stage == "train":
        raise UseError(
            f"--checkpoint train: classifier {classifier} has no training stage (only FERSNet is trained by "
            "`fersnet train`); it exists as fine-tuned only: use --checkpoint auto"
        )
    config = run_config(store, run)
    _check_fold(store, run, config, fold)
    train_dir, ft_dir = layout.fold(fold), layout.fold(fold, folder)
    rel = lambda path: store.uri_of_path(path) + "/"
    who = f"the final model of run {run!r}" if is_final(fold) else f"run {run!r} fold {fold}"
    if classifier != "fersnet":
        _require_folder(layout, classifier, data, folder)

    found, used, tuned = None, None, classifier
    if stage in ("auto", "finetune") and store.exists(layout.config(folder)):
        ft_config = store.read_json(layout.config(folder))["finetune"]
        found = _finished(layout, fold, folder, ft_config["epochs"])
        used, tuned = "finetune", ft_config.get("classifier")
    if found is None and (stage == "finetune" or classifier != "fersnet"):
        which, alternative = ("", " or pass --checkpoint train") if classifier == "fersnet" else (f"{classifier} ", "")
        raise UseError(
            f"{who} has no finished fine-tuned {which}checkpoint (nothing complete in "
            f"{rel(ft_dir)}); run `{_finetune_command(run, classifier, data, fold)}`{alternative}"
        )
    if found is None:
        epochs = Experiment.from_dict(config["experiment"]).train.epochs
        found, used, tuned = _finished(layout, fold, TRAIN, epochs), "train", "fersnet"
    if found is None:
        from fersnet_ray.checkpoint import checkpoint_epoch, latest_checkpoint_in

        newest = latest_checkpoint_in(store, train_dir)
        done = checkpoint_epoch(store, newest) if newest else 0
        # Said in one line, as every UseError: "run 'r' has no final model: …" / "run 'r' fold 2 has no …"
        head = f"run {run!r} has no final model" if is_final(fold) else f"{who} has no finished checkpoint"
        raise UseError(
            f"{head}: no fine-tuned model in {rel(ft_dir)} and training in {rel(train_dir)} is at "
            f"{done}/{epochs} epochs; run `fersnet train --run {run} --folds {fold}` first"
        )
    ckpt, meta = found
    ref = ModelRef(
        run,
        fold,
        used,
        ckpt,
        store.uri_of_path(ckpt),
        meta["sha256"],
        int(meta["epoch"]),
        tuned or classifier,
        data,
    )
    _check_source(ref)
    return ref


def _require_folder(layout: Run, classifier: str, data: str, folder: str) -> None:
    """A classifier never fine-tuned in this run (with this --data): one line naming the missing folder."""
    if not layout.store.exists(layout.config(folder)):
        on = "real + synthetic faces" if data == "real+synthetic" else "real faces only"
        where = layout.store.uri_of_path(layout.stage(folder))
        raise UseError(
            f"run {layout.name!r} has no {classifier} fine-tuned on {on}: {where}/ "
            f"is missing; run `{_finetune_command(layout.name, classifier, data)}` first"
        )


def _check_source(ref: ModelRef) -> None:
    """A TorchScript classifier is rebuilt from its file (checkpoints hold its weights only): it must still be there."""
    from fersnet_ray.finetune.classifiers import TORCHSCRIPT
    from fersnet_ray.store import open_location, redact

    if not ref.classifier.startswith(TORCHSCRIPT):
        return
    uri = ref.classifier[len(TORCHSCRIPT) :]
    fs, path = open_location(uri)
    if not fs.exists(path):
        raise UseError(
            f"fold {ref.fold}'s classifier was fine-tuned from the TorchScript model {redact(uri)}, which is missing "
            "(checkpoints hold its weights, not its code); put the file back there"
        )


def classifier_folds(store: Store, run: str, classifier: str = "fersnet", data: str = "real+synthetic") -> list[Fold]:
    """Folds a classifier has: FERSNet's trained folds, another classifier's fine-tuned fold folders."""
    if classifier == "fersnet":
        return trained_folds(store, run)
    run_config(store, run)
    folder = finetune_folder(classifier, data)
    _require_folder(store.run(run), classifier, data, folder)
    return store.run(run).folds(folder)


def final_model(
    store: Store, run: str, stage: str = "auto", classifier: str = "fersnet", data: str = "real+synthetic"
) -> ModelRef | None:
    """The run's final model when it has finished (fine-tuned or trained, as `stage` allows), else None."""
    if classifier == "fersnet" and not store.exists(store.run(run).fold(FINAL)):
        return None
    try:
        return resolve(store, run, FINAL, stage, classifier, data)
    except UseError:
        return None  # started, not finished (or not fine-tuned): the caller falls back and says so


def trained_folds(store: Store, run: str) -> list[Fold]:
    """Folds of a run that have a training folder (finished or not), "final" last when the run has one."""
    from fersnet_ray.synth.job import trained_folds as folds_of

    run_config(store, run)
    return folds_of(store, run)


def resolve_folds(
    store: Store,
    run: str,
    folds: tuple[Fold, ...] | None,
    stage: str = "auto",
    classifier: str = "fersnet",
    data: str = "real+synthetic",
) -> list[ModelRef]:
    """Every requested fold's checkpoint (None: every cross-validation fold the classifier has, not the final
    model), for an ensemble; errors name the fold."""
    if folds is None:
        folds = tuple(f for f in classifier_folds(store, run, classifier, data) if not is_final(f))
    if not folds:
        command = f"fersnet train --run {run}" if classifier == "fersnet" else _finetune_command(run, classifier, data)
        raise UseError(
            f"run {run!r} has no {'trained' if classifier == 'fersnet' else classifier} fold; run `{command}` first"
        )
    return [resolve(store, run, f, stage, classifier, data) for f in folds]
