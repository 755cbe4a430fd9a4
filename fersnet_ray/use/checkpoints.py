"""Which checkpoint of a run a user gets: the fold's fine-tuned model when it finished, else the trained one.

    ref = resolve(store, "demo", fold=0)            # ModelRef(stage="finetune" | "train", path, sha256, ...)
    ref = resolve(store, "demo", fold="final")      # the final model (every subject), or a UseError
    final = final_model(store, "demo")              # the final model when it finished, else None
    refs = resolve_folds(store, "demo", None)       # every cross-validation fold, for an ensemble

A fold "finished" a stage when its `evaluation.json` is there (each stage writes it last) and its
newest complete checkpoint (checksum matching `meta.json`) holds the stage's last epoch. Anything
else is a `UseError` that names what is missing and the command that makes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fersnet_ray.foldkey import FINAL, Fold, is_final
from fersnet_ray.store import Store

STAGES = ("auto", "finetune", "train")


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

    @property
    def id(self) -> str:
        """Short identity for outputs and logs, like the synthetic shards' `checkpoint` column."""
        return f"{self.uri}@sha256:{self.sha256[:16]}"

    def describe(self) -> str:
        what = "fine-tuned (FES-DA)" if self.stage == "finetune" else "trained (no fine-tuning)"
        if is_final(self.fold):
            return f"final model (every subject, no held-out accuracy): {what}, epoch {self.epoch}, {self.uri}"
        return f"fold {self.fold}: {what}, epoch {self.epoch}, {self.uri}"


def run_config(store: Store, run: str) -> dict:
    """runs/<run>/config.json (data set + experiment), or a UseError naming the missing file."""
    path = f"{store.run_dir(run)}/config.json"
    if not store.exists(path):
        raise UseError(f"no run {run!r} in {store.uri} ({store.uri_of('runs', run, 'config.json')} is missing)")
    return store.read_json(path)


def _finished(store: Store, folder: str, epochs: int) -> tuple[str, dict] | None:
    """(checkpoint folder, its meta) when `folder` holds a finished stage: evaluation.json + last epoch."""
    from fersnet_ray.checkpoint import META_FILE, latest_checkpoint_in

    if not store.exists(f"{folder}/evaluation.json"):
        return None
    ckpt = latest_checkpoint_in(store, folder)
    if ckpt is None:
        return None
    meta = json.loads(store.read_bytes(f"{ckpt}/{META_FILE}"))
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


def resolve(store: Store, run: str, fold: Fold, stage: str = "auto") -> ModelRef:
    """The checkpoint of `fold` ("final" included) to use: fine-tuned if finished (stage "auto" or
    "finetune"), else trained."""
    from fersnet_ray.train.config import Experiment

    if stage not in STAGES:
        raise UseError(f"--checkpoint {stage!r}: use one of {', '.join(STAGES)}")
    config = run_config(store, run)
    _check_fold(store, run, config, fold)
    train_dir, ft_dir = store.fold_dir(run, fold), store.finetune_fold_dir(run, fold)
    rel = lambda folder: store.uri_of_path(folder) + "/"
    who = f"the final model of run {run!r}" if is_final(fold) else f"run {run!r} fold {fold}"

    found, used = None, None
    ft_config = f"{store.finetune_dir(run)}/config.json"
    if stage in ("auto", "finetune") and store.exists(ft_config):
        epochs = store.read_json(ft_config)["finetune"]["epochs"]
        found, used = _finished(store, ft_dir, epochs), "finetune"
    if found is None and stage == "finetune":
        raise UseError(
            f"{who} has no finished fine-tuned checkpoint (nothing complete in {rel(ft_dir)}); "
            f"run `fersnet finetune --run {run} --folds {fold}` or pass --checkpoint train"
        )
    if found is None:
        epochs = Experiment.from_dict(config["experiment"]).train.epochs
        found, used = _finished(store, train_dir, epochs), "train"
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
    return ModelRef(run, fold, used, ckpt, store.uri_of_path(ckpt), meta["sha256"], int(meta["epoch"]))


def final_model(store: Store, run: str, stage: str = "auto") -> ModelRef | None:
    """The run's final model when it has finished (fine-tuned or trained, as `stage` allows), else None."""
    if not store.exists(store.fold_dir(run, FINAL)):
        return None
    try:
        return resolve(store, run, FINAL, stage)
    except UseError:
        return None  # started, not finished: the caller falls back and says so


def trained_folds(store: Store, run: str) -> list[Fold]:
    """Folds of a run that have a training folder (finished or not), "final" last when the run has one."""
    from fersnet_ray.synth.job import trained_folds as folds_of

    run_config(store, run)
    return folds_of(store, run)


def resolve_folds(store: Store, run: str, folds: tuple[Fold, ...] | None, stage: str = "auto") -> list[ModelRef]:
    """Every requested fold's checkpoint (None: every cross-validation fold, not the final model), for an
    ensemble; errors name the fold."""
    folds = folds if folds is not None else tuple(f for f in trained_folds(store, run) if not is_final(f))
    if not folds:
        raise UseError(f"run {run!r} has no trained cross-validation fold; run `fersnet train --run {run}` first")
    return [resolve(store, run, f, stage) for f in folds]
