"""Model configuration for FERSNet and its ablations.

`ModelConfig` is a frozen dataclass so it can be shipped to Ray workers as `dataclasses.asdict(cfg)` (or JSON)
and rebuilt with `ModelConfig(**d)` on the worker's first line. JSON turns tuples into lists; `__post_init__`
turns them back, so the round trip gives an equal config.

Defaults follow Sec. IV-A of the paper (96x96 greyscale faces, 3x3 convolutions, four blocks per encoder);
sizes the paper leaves open (hidden units of f_cls and f_tra, discriminator widths) are documented per field.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

GAN_MODES = ("vanilla", "lsgan")
# The registered variants (`fersnet.list_models()`, which tests hold equal to this), named here so a
# command line can check a name without importing torch.
VARIANTS = ("fer_only", "fersnet", "fersnet_hard")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one FERSNet variant and of its patch discriminator.

    Attributes:
        variant: registered model name: "fersnet" (ConvFLU, the paper's model), "fersnet_hard" (hard parameter
            sharing, "w/o ConvFLU") or "fer_only" (FER branch alone, "w/o MTL").
        num_classes: E, the number of expression classes (7 on CK+, 6 on Oulu-CASIA and MMI).
        in_channels: image channels; 1 for the greyscale faces the paper uses.
        image_size: side of the square input; must be divisible by 2 ** len(widths) (four 2x2 poolings).
        widths: output channels of the encoder blocks; the decoder mirrors them.
        width_mult: multiplier applied to `widths`, `cls_hidden` and `tra_hidden`.
        match_capacity: for the ablations, raise `width_mult` (found by search in `create_model`) until the
            model has at least as many parameters as "fersnet" with the same config; the paper enlarges
            the ablations "to make their model capacity equal to or larger than the original FERSNet".
        cls_hidden: hidden units of the two-layer classifier f_cls (not given in the paper).
        cls_dropout: dropout between the two layers of f_cls (the paper mentions none).
        tra_hidden: hidden units of the first fully connected layer of the transformer f_tra.
        gan_mode: "vanilla" (eq. (6), BCE with logits) or "lsgan" (least squares).
        disc_widths: channels of the PatchGAN discriminator's layers (pix2pix's 70x70 PatchGAN by default).
        fes_reads_fer_detached: "fersnet" only: the FES branch's ConvFLUs read the FER features without
            passing gradients back, so the synthesis losses (GAN, reconstruction, cycle, identity) never
            reach the FER encoder, while the FER branch still reads FES features (and trains the FES
            encoder through them). Off (the paper's shared gradients) by default.
        fes_skips: not in the paper: U-Net skip connections from the FES encoder's blocks to the decoder
            blocks of the same resolution (`layers.SynthesisHead`). Off (the paper's decoder) by default.
        flu_gate_bias: not in the paper: "fersnet" only: the ConvFLUs' update gates z get a bias, set to
            this at initialisation, so that with e.g. -4 (z ≈ 0.02) each branch starts as a network of its
            own and opens its gates to the other task's features as they prove useful. None: the paper's
            bias-free 1x1 kernels (z ≈ 0.5 at initialisation, so half of every block's features are
            replaced by the tanh mixture from the first step).
    """

    variant: str = "fersnet"
    num_classes: int = 7
    in_channels: int = 1
    image_size: int = 96
    widths: tuple[int, ...] = (64, 128, 256, 512)
    width_mult: float = 1.0
    match_capacity: bool = False
    cls_hidden: int = 512
    cls_dropout: float = 0.0
    tra_hidden: int = 256
    gan_mode: str = "vanilla"
    disc_widths: tuple[int, ...] = (64, 128, 256, 512)
    fes_reads_fer_detached: bool = False
    fes_skips: bool = False
    flu_gate_bias: float | None = None

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise JSON-decoded values in place with object.__setattr__.
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "disc_widths", tuple(int(w) for w in self.disc_widths))
        object.__setattr__(self, "width_mult", float(self.width_mult))
        if self.flu_gate_bias is not None:
            object.__setattr__(self, "flu_gate_bias", float(self.flu_gate_bias))
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {self.gan_mode!r}")
        if not self.widths or not self.disc_widths:
            raise ValueError("widths and disc_widths must be non-empty")
        if self.image_size % (2 ** len(self.widths)) != 0:
            raise ValueError(f"image_size {self.image_size} is not divisible by 2**{len(self.widths)}")
        if self.width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {self.width_mult}")

    @classmethod
    def tiny(cls, **overrides: Any) -> ModelConfig:
        """A very small config for CPU tests: 32x32 input, widths (8, 16, 32, 64)."""
        base: dict[str, Any] = dict(
            image_size=32,
            widths=(8, 16, 32, 64),
            cls_hidden=32,
            tra_hidden=32,
            disc_widths=(8, 16, 32, 64),
        )
        base.update(overrides)
        return cls(**base)

    def scale(self, n: int) -> int:
        """Applies `width_mult` to a channel or unit count (never below 1)."""
        return max(1, round(n * self.width_mult))

    @property
    def scaled_widths(self) -> tuple[int, ...]:
        """Encoder block widths after `width_mult`."""
        return tuple(self.scale(w) for w in self.widths)

    @property
    def feature_size(self) -> int:
        """Spatial side of the encoder output, e.g. 96 -> 6 after four 2x2 poolings."""
        return self.image_size // (2 ** len(self.widths))

    def with_variant(self, variant: str, **changes: Any) -> ModelConfig:
        """Returns a copy for another variant (other fields kept)."""
        return replace(self, variant=variant, **changes)
