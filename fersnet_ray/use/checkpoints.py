"""Which checkpoint of a run a user gets: the fold's fine-tuned model when it finished, else the trained one.

    ref = resolve(store, "demo", fold=0)            # ModelRef(stage="finetune" | "train", path, sha256, ...)
    refs = resolve_folds(store, "demo", None)       # every fold that finished, for an ensemble

A fold "finished" a stage when its `evaluation.json` is there (each stage writes it last) and its
newest complete checkpoint (checksum matching `meta.json`) holds the stage's last epoch. Anything
else is a `UseError` that names what is missing and the command that makes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fersnet_ray.store import EVALUATION_FILE, Store, StoreError

STAGES = ("auto", "finetune", "train")


class UseError(RuntimeError):
    """A run, fold, checkpoint, input or output that cannot be used; the message is one line, safe to print."""


@dataclass(frozen=True)
class ModelRef:
    """One finished checkpoint: what `predict` and `export` load, by path (actors load it themselves)."""

    run: str
    fold: int
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
        return f"fold {self.fold}: {what}, epoch {self.epoch}, {self.uri}"


def run_config(store: Store, run: str) -> dict:
    """runs/<run>/config.json (data set + experiment), or a UseError naming the missing file."""
    try:
        return store.run(run).read_config()
    except StoreError as e:
        raise UseError(str(e)) from None


def _finished(store: Store, folder: str, epochs: int) -> tuple[str, dict] | None:
    """(checkpoint folder, its meta) when `folder` holds a finished stage: evaluation.json + last epoch."""
    from fersnet_ray.checkpoint import META_FILE, latest_checkpoint_in

    if not store.exists(f"{folder}/{EVALUATION_FILE}"):
        return None
    ckpt = latest_checkpoint_in(store, folder)
    if ckpt is None:
        return None
    meta = json.loads(store.read_bytes(f"{ckpt}/{META_FILE}"))
    return (ckpt, meta) if meta["epoch"] >= epochs else None


def _check_fold(store: Store, run: str, config: dict, fold: int) -> None:
    from fersnet_ray.table import read_card

    card = read_card(store, config["dataset"])
    if not 0 <= fold < card["folds"]:
        raise UseError(
            f"run {run!r}: face table {config['dataset']!r} has folds 0..{card['folds'] - 1}; no fold {fold}"
        )


def resolve(store: Store, run: str, fold: int, stage: str = "auto") -> ModelRef:
    """The checkpoint of `fold` to use: fine-tuned if finished (stage "auto" or "finetune"), else trained."""
    from fersnet_ray.train.config import Experiment

    if stage not in STAGES:
        raise UseError(f"--checkpoint {stage!r}: use one of {', '.join(STAGES)}")
    config = run_config(store, run)
    _check_fold(store, run, config, fold)
    layout = store.run(run)
    train_dir, ft_dir = layout.fold(fold), layout.fold(fold, "finetune")
    rel = lambda folder: store.uri_of(folder[len(store.root) :]) + "/"

    found, used = None, None
    if stage in ("auto", "finetune") and store.exists(layout.config("finetune")):
        epochs = store.read_json(layout.config("finetune"))["finetune"]["epochs"]
        found, used = _finished(store, ft_dir, epochs), "finetune"
    if found is None and stage == "finetune":
        raise UseError(
            f"run {run!r} fold {fold} has no finished fine-tuned checkpoint (nothing complete in {rel(ft_dir)}); "
            f"run `fersnet finetune --run {run} --folds {fold}` or pass --checkpoint train"
        )
    if found is None:
        epochs = Experiment.from_dict(config["experiment"]).train.epochs
        found, used = _finished(store, train_dir, epochs), "train"
    if found is None:
        from fersnet_ray.checkpoint import checkpoint_epoch, latest_checkpoint_in

        newest = latest_checkpoint_in(store, train_dir)
        done = checkpoint_epoch(store, newest) if newest else 0
        raise UseError(
            f"run {run!r} fold {fold} has no finished checkpoint: no fine-tuned model in {rel(ft_dir)} and "
            f"training in {rel(train_dir)} is at {done}/{epochs} epochs; "
            f"run `fersnet train --run {run} --folds {fold}` first"
        )
    ckpt, meta = found
    return ModelRef(run, fold, used, ckpt, store.uri_of(ckpt[len(store.root) :]), meta["sha256"], int(meta["epoch"]))


def trained_folds(store: Store, run: str) -> list[int]:
    """Folds of a run that have a training folder (finished or not)."""
    from fersnet_ray.synth.job import trained_folds as folds_of

    run_config(store, run)
    return folds_of(store, run)


def resolve_folds(store: Store, run: str, folds: tuple[int, ...] | None, stage: str = "auto") -> list[ModelRef]:
    """Every requested fold's checkpoint (None: every trained fold), for an ensemble; errors name the fold."""
    folds = folds if folds is not None else tuple(trained_folds(store, run))
    if not folds:
        raise UseError(f"run {run!r} has no trained fold; run `fersnet train --run {run}` first")
    return [resolve(store, run, f, stage) for f in folds]
