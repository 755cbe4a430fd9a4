"""Fine-tuning one fold's classifier for recognition, in plain PyTorch: no Ray here.

The paper's "FERSNet w/ FES-DA" is the original FERSNet further fine-tuned on the synthetic
faces its FES branch produced (Sec. IV-D). Only the recognition loss trains: the FES branch's
encoder still feeds the FER branch through the ConvFLUs, so the whole network is updated, but no
face is synthesised, no discriminator runs. Any other classifier of `classifiers.CLASSIFIERS`
(`small-cnn`, `resnet18`, `timm:NAME`, `torchscript:URI`) trains the same way on the same batches,
from scratch or from `--weights`.

Batches come from any iterable of {"image": (B, C, L, L) uint8, "label": (B,) int64}: Ray Data's
`iter_torch_batches` in the job, a list of tensors in tests. The paper's training augmentation
(random crop, mirror, rotation) is applied on the device.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fersnet_ray.finetune.classifiers import (
    ClassifierInput,
    classifier_slug,
    create_classifier,
    load_weights_into,
    logits_of,
    parse_classifier,
)
from fersnet_ray.train.config import Experiment
from fersnet_ray.train.data import augment, to_unit
from fersnet_ray.train.loop import autocast, nhwc


FINETUNE_DATA = ("real+synthetic", "real")


@dataclass(frozen=True)
class FinetuneConfig:
    """How a fold is fine-tuned (the paper is silent; chosen to nudge, not retrain, the network).

    Attributes:
        epochs: passes over real + synthetic training faces.
        batch_size: per fold, split across its workers.
        lr, lr_min: Adam with cosine annealing from lr to lr_min; 10× below training's start.
        shuffle_buffer: rows in Ray Data's local shuffle buffer, per worker (blocks are also read
            in random order each epoch), so real and synthetic faces mix within batches.
        checkpoint_every: epochs between checkpoints (the last is always written).
        seed: augmentation draws; a fold adds its index.
        cache: keep the decoded faces in Ray's object store after the first epoch; None: when
            they fit in a tenth of it (see `job.fold_dataset`).
        data: "real+synthetic" (FES-DA: the training faces and the fold's synthetic shards) or
            "real" (the control: the training faces alone, repeated so that an epoch has as many
            steps as real + synthetic would, with the same schedule and starting checkpoint).
        min_score: FES-DA with only the synthetic rows whose recogniser score (probability of the
            target expression) is at least this; None keeps every row.
        refill: with min_score, the kept synthetic rows are drawn again (a fresh random draw each
            epoch) to fill the places of the dropped ones, so an epoch has FES-DA's rows and steps and
            the row compares with FES-DA and the control at equal steps; False: one pass over the kept
            rows, fewer steps (what `--min-score` did before session 22).
        synthetic_weight: each synthetic row's weight in the recognition loss, a real row's being 1
            (the loss is the weighted mean over the batch). 1: the paper's FES-DA, every face alike;
            below 1, the synthetic faces still balance the classes but count less than real ones.
            CK+48 on CPU, 30 epochs, seed 2 (README, three seeds): 0.17 (the fakes weigh what the
            real faces do) +1.62 points over 1, −1.23 against the real-only control.
        score_weighted: also multiply each synthetic row's weight by its recogniser score, a soft
            `min_score`: a fake that does not show its target expression counts little.
        classifier: what is trained (`classifiers.CLASSIFIERS`): "fersnet" (the fold's trained
            FERSNet), "small-cnn", "resnet18", "timm:NAME" or "torchscript:URI".
        weights: a state dict (path or s3:// URI) the classifier starts from; None: from scratch
            (fersnet: always the fold's checkpoint; torchscript: the scripted weights).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-4
    lr_min: float = 1e-6
    shuffle_buffer: int = 2048
    checkpoint_every: int = 5
    seed: int = 0
    cache: bool | None = None
    data: str = "real+synthetic"
    min_score: float | None = None
    refill: bool = True
    synthetic_weight: float = 1.0
    score_weighted: bool = False
    classifier: str = "fersnet"
    weights: str | None = None

    def __post_init__(self) -> None:
        _, entry, _ = parse_classifier(self.classifier)  # an unknown name: ValueError listing the choices
        if self.weights is not None and not entry.takes_weights:
            raise ValueError(f"classifier {self.classifier} takes no --weights ({entry.help})")
        if self.data not in FINETUNE_DATA:
            raise ValueError(f"finetune data must be one of {', '.join(FINETUNE_DATA)}, got {self.data!r}")
        if self.data == "real" and self.min_score is not None:
            raise ValueError("finetune min_score filters synthetic faces; it does not apply to data 'real'")
        if not 0 < self.synthetic_weight < float("inf"):
            raise ValueError(f"finetune synthetic_weight must be positive, got {self.synthetic_weight}")
        if self.data == "real" and self.weighted:
            raise ValueError("finetune synthetic_weight and score_weighted weigh synthetic faces; not for data 'real'")
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("finetune epochs, batch_size and checkpoint_every must be positive")
        if not 0 < self.lr_min <= self.lr:
            raise ValueError(f"finetune lr_min {self.lr_min} must be in (0, lr={self.lr}]")

    @classmethod
    def for_classifier(cls, classifier: str = "fersnet", **fields) -> "FinetuneConfig":
        """A config whose lr and lr_min default to the classifier's (fields given as None take the default)."""
        _, entry, _ = parse_classifier(classifier)
        fields = {k: v for k, v in fields.items() if v is not None}
        fields.setdefault("lr", entry.lr)
        fields.setdefault("lr_min", min(entry.lr_min, fields["lr"]))
        return cls(classifier=classifier, **fields)

    @property
    def from_fold_checkpoint(self) -> bool:
        """Starts from the fold's trained FERSNet (fersnet), rather than from scratch or --weights."""
        return parse_classifier(self.classifier)[1].from_fold_checkpoint

    @property
    def weighted(self) -> bool:
        """Synthetic rows weigh other than real ones in the loss (batches carry a `weight` column)."""
        return self.synthetic_weight != 1 or self.score_weighted

    @property
    def needs_scores(self) -> bool:
        """Reads the synthetic rows' recogniser scores (filtered or weighted by them)."""
        return self.min_score is not None or self.score_weighted

    @property
    def row_key(self) -> str:
        """The report's name for what this config trains on: "fes-da", "real-only", "fes-da@0.5", and with
        weighted synthetic rows "fes-da-w0.25" (synthetic_weight), "fes-da-wscore", "fes-da@0.5-w0.25xscore"."""
        if self.data == "real":
            return "real-only"
        key = "fes-da" if self.min_score is None else f"fes-da@{self.min_score:g}"
        weights = ([f"{self.synthetic_weight:g}"] if self.synthetic_weight != 1 else []) + (
            ["score"] if self.score_weighted else []
        )
        return f"{key}-w{'x'.join(weights)}" if weights else key

    @property
    def label(self) -> str:
        """Progress lines' name: "fes-da" for FERSNet, "small-cnn, real-only" for another classifier."""
        return self.row_key if self.classifier == "fersnet" else f"{classifier_slug(self.classifier)}, {self.row_key}"

    def report_key(self, variant: str) -> str:
        """The report's row: "<variant>+<row_key>" for FERSNet ("fersnet+fes-da"), "<classifier>+<row_key>" else."""
        model = variant if self.classifier == "fersnet" else classifier_slug(self.classifier)
        return f"{model}+{self.row_key}"

    @property
    def folder(self) -> str:
        """Folder of runs/<run>/ this config's checkpoints and evaluations go to (one per classifier and row).

        fersnet: finetune, finetune-real, finetune-fes-da@0.5; others: finetune-<classifier>,
        finetune-<classifier>-real, finetune-<classifier>-fes-da@0.5 (e.g. finetune-small-cnn-real).
        """
        prefix = "finetune" if self.classifier == "fersnet" else f"finetune-{classifier_slug(self.classifier)}"
        suffix = {"fes-da": "", "real-only": "-real"}.get(self.row_key, f"-{self.row_key}")
        return prefix + suffix

    def classifier_input(self, exp: Experiment) -> ClassifierInput:
        """What the classifier is fed: the run's channels and crop side, its expressions."""
        return ClassifierInput(exp.model.in_channels, exp.model.num_classes, exp.train.crop_size)


@dataclass
class FinetuneState:
    """The classifier, its optimiser and schedule, and the epoch to run next."""

    exp: Experiment
    cfg: FinetuneConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    epoch: int = 0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        exp: Experiment,
        cfg: FinetuneConfig,
        model_state: dict | None,
        device="cpu",
        source: bytes | None = None,
    ) -> "FinetuneState":
        """Builds `cfg.classifier` and starts it from `model_state`.

        model_state: fersnet: a trained FERSNet's weights (`state["model"]` of a training checkpoint),
            loaded strictly; others: the --weights state dict, adapted (`load_weights_into`); None:
            as built (random, seeded by the caller; torchscript: its scripted weights).
        source: a torchscript classifier's file bytes.
        """
        device = torch.device(device)
        model = create_classifier(cfg.classifier, cfg.classifier_input(exp), source, exp.model)
        if model_state is not None:
            if cfg.from_fold_checkpoint:
                model.load_state_dict(model_state)
            else:
                load_weights_into(model, cfg.classifier, model_state, where=cfg.weights or "weights")
        model = nhwc(model.to(device), device, exp.train.amp)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr_min)
        return cls(exp, cfg, model, opt, sched, device)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "history": self.history,
            "experiment": self.exp.to_dict(),
            "classifier": self.cfg.classifier,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))


def finetune_epoch(
    state: FinetuneState, batches: Iterable[dict], model: torch.nn.Module | None = None
) -> dict[str, float]:
    """One pass over `batches`; returns the mean loss, training accuracy, rows seen and throughput.

    `model` is the DDP-wrapped network under several workers (its state is `state.model`'s). Batches
    with a `weight` column (B,) (`FinetuneConfig.weighted`) give the weighted mean of the row losses.
    """
    t = state.exp.train
    model = model or state.model
    gen = torch.Generator().manual_seed(state.cfg.seed * 100_003 + state.epoch)
    state.model.train()
    loss_sum, correct, seen, steps, start = 0.0, 0, 0, 0, time.perf_counter()
    for batch in batches:
        x_u8 = batch["image"].to(state.device, non_blocking=True)  # (B, C, L, L) uint8
        y = batch["label"].to(state.device, non_blocking=True).long()  # (B,)
        x = augment([to_unit(x_u8)], t.crop_size, t.rotations, gen)[0]  # (B, C, crop, crop) in [-1, 1]
        x = nhwc(x, state.device, t.amp)
        with autocast(state.device, t.amp):
            logits = logits_of(model(x))  # (B, E); FERSNet without a target: the FES decoder does not run
        if "weight" in batch:  # real rows 1, synthetic rows synthetic_weight (× score)
            w = batch["weight"].to(state.device, non_blocking=True).float()  # (B,)
            loss = (F.cross_entropy(logits.float(), y, reduction="none") * w).sum() / w.sum().clamp_min(1e-12)
        else:
            loss = F.cross_entropy(logits.float(), y)
        state.opt.zero_grad(set_to_none=True)
        loss.backward()
        state.opt.step()
        loss_sum += float(loss.detach())
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        steps += 1
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    elapsed = time.perf_counter() - start
    metrics = {
        "epoch": state.epoch,
        "cls": loss_sum / max(steps, 1),
        "train_accuracy": correct / max(seen, 1),
        "images": seen,
        "seconds": elapsed,
        "images_per_s": seen / max(elapsed, 1e-9),
        "lr": float(state.opt.param_groups[0]["lr"]),
    }
    state.sched.step()
    state.epoch += 1
    return metrics


def decode_batch(batch: dict, load_size: int) -> dict:
    """Ray Data batch of Parquet rows → model input: PNG `image` bytes → (B, C, L, L) uint8, `label`
    (and `weight`, when the rows carry one).

    Runs in Ray Data's CPU tasks, ahead of the training workers, so decoding overlaps training.
    """
    import numpy as np

    from fersnet_ray.train.data import decode_faces

    images = decode_faces(list(batch["image"]), load_size).numpy()
    out = {"image": images, "label": np.asarray(batch["label"], dtype=np.int64)}
    if "weight" in batch:
        out["weight"] = np.asarray(batch["weight"], dtype=np.float32)
    return out
