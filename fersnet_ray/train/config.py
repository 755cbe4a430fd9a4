"""Training configuration: frozen dataclasses, named presets, and their JSON round trip.

An `Experiment` is what a run trains: a `ModelConfig` (architecture) and a `TrainConfig` (how).
Workers receive `experiment.to_dict()` and rebuild it on their first line; the same dict is saved
as `runs/<run>/config.json` and inside every checkpoint.

Presets:
    paper  the paper's setting: 110 → random 96 crop, widths 64–512, 500 epochs, batch 64.
    ck48   for CK+48's native 48×48 faces: resize to 54, random 48 crop, same network otherwise.
    cpu48  CPU work on 48×48 faces: the ck48 network at width 0.25, identity loss off, 15 epochs.
    tiny   CPU tests and the demo: 36 → 32 crop, three blocks of 16–64, λ_rec 10, identity loss off, 60 epochs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fersnet_ray.model.config import ModelConfig

ROTATIONS = (-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0)  # degrees, paper Sec. IV-A


@dataclass(frozen=True)
class TrainConfig:
    """How one fold is trained (paper Sec. IV-A unless noted).

    Attributes:
        epochs: passes over the fold's training faces (paper: 500).
        batch_size: per fold, split across its workers (paper: 64).
        lr, lr_min: cosine annealing from lr to lr_min over the epochs (paper: 1e-3 → 1e-5).
        betas: Adam's betas; (0.5, 0.999) as pix2pix/StarGAN use for GAN training (the paper is silent).
        load_size: faces are resized to this side before cropping (paper: 110).
        crop_size: random crop in training, centre crop in testing (paper: 96); = model image_size.
        rotations: random rotation angles in degrees.
        lambda_gan, lambda_rec, lambda_cyc: λ1, λ2, λ3 of eq. (10).
        lambda_idt_start, lambda_idt_end: λ4 ramps linearly between them over training; both 0 = off.
        lambda_cls_fake: not in the paper (0, off, is its objective): StarGAN's domain-classification
            loss on fakes. The FER branch, its weights held fixed for this term so it never learns from
            fakes, classifies G(z^t, I) against z^t, and the generator is trained to make it read so.
        identity: "train" (a Light CNN-9 identity classifier trained on the fold's training subjects,
            then frozen), "none", or a URI of published Light CNN-9 weights.
        identity_epochs: epochs of that identity classifier.
        checkpoint_every: epochs between checkpoints (the last epoch is always checkpointed).
        eval_every: epochs between test-set evaluations in the progress lines (0: only at the end).
        seed: seeds weights, target sampling and augmentation; a fold adds its index.
        amp: bf16 autocast (and channels_last) on a GPU; bf16 autocast on a CPU with native bf16
            (AVX512-BF16 or AMX, `loop.cpu_has_bf16`), fp32 on other CPUs.
        bn_stats_from_fakes: let the cycle pass over synthetic faces update the batch-norm running
            statistics (the paper's code does); off by default, so the statistics real test faces
            are normalised with come from real faces only (`loop.frozen_bn_stats`).
    """

    epochs: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    lr_min: float = 1e-5
    betas: tuple[float, float] = (0.5, 0.999)
    load_size: int = 110
    crop_size: int = 96
    rotations: tuple[float, ...] = ROTATIONS
    lambda_gan: float = 0.3
    lambda_rec: float = 1.0
    lambda_cyc: float = 0.5
    lambda_idt_start: float = 0.1
    lambda_idt_end: float = 0.5
    lambda_cls_fake: float = 0.0
    identity: str = "train"
    identity_epochs: int = 30
    checkpoint_every: int = 10
    eval_every: int = 10
    seed: int = 0
    amp: bool = True
    bn_stats_from_fakes: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "rotations", tuple(float(r) for r in self.rotations))
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} exceeds load_size {self.load_size}")
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("epochs, batch_size and checkpoint_every must be positive")


@dataclass(frozen=True)
class Experiment:
    """What a run trains: the architecture and the training recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.image_size != self.train.crop_size:
            raise ValueError(f"model image_size {self.model.image_size} ≠ crop_size {self.train.crop_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": asdict(self.model), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        return cls(ModelConfig(**d["model"]), TrainConfig(**d["train"]))


NO_IDENTITY = dict(identity="none", lambda_idt_start=0.0, lambda_idt_end=0.0)  # L_idt off (CPU presets)

PRESETS: dict[str, Experiment] = {
    "paper": Experiment(ModelConfig(), TrainConfig()),
    "ck48": Experiment(ModelConfig(image_size=48), TrainConfig(load_size=54, crop_size=48)),
    # CPU work on 48x48 faces (CK+48 on a 2-core machine); see the README's "Results on real faces".
    # width 0.25: FERSNet trains at 57 img/s in fp32 on 2 idle cores (82-89 in bf16 on a CPU with
    #   AVX512-BF16), the full width at 18 img/s in bf16: the full network does not fit a 2-hour
    #   10-fold protocol. On a CPU without native bf16 (this project's Ice Lake machines) emulated
    #   bf16 ran at half the fp32 speed (15 against 30 img/s, side by side, `jobs/probe_fold.py`),
    #   hence `loop.cpu_has_bf16`.
    # identity loss off: the Light CNN-9 identity net trained per fold adds its own epochs and a 128x128
    #   forward of every fake; the shared probes ran without it.
    # 15 epochs: 10 folds x 885 faces x 15 epochs at ~45 img/s (two folds side by side, one thread
    #   each) is about 50 min of the protocol's 120; 30 epochs (the shared probes: fer_only 89.05%,
    #   fersnet 87.2% on folds 0-3) would take the whole budget on FERSNet alone.
    # disc_widths 16-128: the discriminator scaled like the generator (it ignores width_mult), which keeps
    #   pix2pix's G:D width ratio; at full width D ran three times per step dominated it: 34 -> 52 img/s
    #   on fold 0 side by side (`jobs/probe_fold.py --set model.disc_widths=16,32,64,128`).
    "cpu48": Experiment(
        ModelConfig(image_size=48, width_mult=0.25, disc_widths=(16, 32, 64, 128)),
        TrainConfig(
            epochs=15,
            load_size=54,
            crop_size=48,
            checkpoint_every=5,
            **NO_IDENTITY,
            eval_every=5,
        ),
    ),
    # The demo in minutes on 2 CPU cores. Three blocks (a 4×4 bottleneck at 32 px, not 2×2) and
    # λ_rec = 10, λ_cyc = 5 (the MSE terms are ~0.05 against a GAN term ~1) let the generator carry the
    # target expression after a few hundred steps; batch 16 gives those steps on 168 faces. 60 epochs
    # (630 steps): Table V of the two demo folds 0.79 / 0.72 against 0.68 / 0.45 at 30 epochs, side by
    # side in plain PyTorch (`jobs/probe_fold.py --dataset demo --preset tiny --folds 0,1 --table-v`);
    # λ_rec 30, λ_rec 3, λ_GAN 0.1, LSGAN, batch 8, widths 32-128, lr 2e-3 and 24 demo subjects did no
    # better. Measured with the demo's two folds of 16 subjects (README, quick start); not the paper's recipe.
    "tiny": Experiment(
        ModelConfig.tiny(widths=(16, 32, 64)),
        TrainConfig(
            epochs=60,
            batch_size=16,
            load_size=36,
            crop_size=32,
            lambda_rec=10.0,
            lambda_cyc=5.0,
            identity="none",
            lambda_idt_start=0.0,
            lambda_idt_end=0.0,
            checkpoint_every=2,  # tests crash and resume 4-epoch runs after epoch 2's checkpoint
            eval_every=2,
        ),
    ),
}


def make_experiment(
    preset: str = "paper",
    variant: str = "fersnet",
    num_classes: int = 7,
    in_channels: int = 1,
    match_capacity: bool = False,
    gan_mode: str | None = None,
    **train_overrides: Any,
) -> Experiment:
    """A preset with the data set's classes and channels, a variant, and training overrides (None = keep)."""
    from fersnet_ray.model import list_models

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    if variant not in list_models():
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(list_models())}")
    base = PRESETS[preset]
    model = replace(
        base.model,
        variant=variant,
        num_classes=num_classes,
        in_channels=in_channels,
        match_capacity=match_capacity,
        gan_mode=gan_mode or base.model.gan_mode,
    )
    train = replace(base.train, **{k: v for k, v in train_overrides.items() if v is not None})
    return Experiment(model, train)


def config_diff(a: dict, b: dict, prefix: str = "") -> str:
    """What differs between two configs (nested dicts), as `key.sub: old → new; …`; "" when equal."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = config_diff(va, vb, f"{prefix}{k}.")
            if sub:
                out.append(sub)
        elif json.dumps(va) != json.dumps(vb):
            out.append(f"{prefix}{k}: {va!r} → {vb!r}")
    return "; ".join(out)
