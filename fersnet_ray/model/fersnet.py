"""FERSNet and its two ablations, all built by one registry: `create_model(cfg)`.

Variants (the rows of the paper's Table VI):
    fersnet       FER and FES encoders joined after every block by two ConvFLUs, one per direction (Fig. 1).
    fersnet_hard  "w/o ConvFLU": hard parameter sharing; one encoder feeds both f_cls and the synthesis head.
    fer_only      "w/o MTL": the FER branch alone; no synthesis.

Usage:
    model = create_model(ModelConfig(variant="fersnet"))
    out = model(images, target_labels, return_gates=True)  # ModelOutput(logits, fake, gates)
    fakes = model.synthesize(images, target_labels)         # FES branch only, no classifier

Inputs are faces normalised to [-1, 1], shape (B, in_channels, image_size, image_size); synthetic faces come
out in the same range. Models are plain PyTorch and run with channels_last and under torch.autocast.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, ClassVar, NamedTuple, Sequence, TypeVar

import torch
from torch import nn

from fersnet_ray.model.config import ModelConfig
from fersnet_ray.model.layers import Classifier, ConvFLU, FLUGates, SynthesisHead, down_block

REFERENCE_VARIANT = "fersnet"


class BlockGates(NamedTuple):
    """Gates of the two ConvFLUs after one encoder block."""

    fer: FLUGates  # FER <- FES: task x = FER, task y = FES, the maps shown in the paper's Fig. 3
    fes: FLUGates  # FES <- FER


class ModelOutput(NamedTuple):
    """What every variant returns.

    Attributes:
        logits: expression logits of the input faces, (B, E).
        fake: faces synthesised with the target expression, (B, C_in, H, W) in [-1, 1]; None for "fer_only"
            or when no target labels were given.
        gates: one `BlockGates` per encoder block (gate maps (B, C_i, H_i, W_i)) when asked for and the
            variant has ConvFLUs, else None.
    """

    logits: torch.Tensor
    fake: torch.Tensor | None = None
    gates: tuple[BlockGates, ...] | None = None


# (FER features (B, C, S, S), FES block outputs shallow to deep or None, gates or None)
Encoded = tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[BlockGates, ...] | None]


class FERSNetBase(nn.Module):
    """Shared forward logic: a variant defines `encode` (images -> FER and FES features)."""

    has_synthesis: ClassVar[bool] = True

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        widths, s = cfg.scaled_widths, cfg.feature_size
        self.f_cls = Classifier(widths[-1] * s * s, cfg.scale(cfg.cls_hidden), cfg.num_classes, cfg.cls_dropout)
        self.fes_head: SynthesisHead | None = None
        if self.has_synthesis:
            self.fes_head = SynthesisHead(
                widths, cfg.num_classes, cfg.scale(cfg.tra_hidden), s, cfg.in_channels, skips=cfg.fes_skips
            )

    def encode(self, images: torch.Tensor, return_gates: bool = False) -> Encoded:
        """Runs the encoder(s).

        Args:
            images: (B, C_in, H, W) in [-1, 1].
            return_gates: also return the ConvFLU gate maps (variants with ConvFLUs only).

        Returns:
            FER features (B, C, S, S); the FES branch's block outputs, shallow to deep, the last (B, C, S, S)
            (None without synthesis); gates or None.
        """
        raise NotImplementedError

    def forward(
        self, images: torch.Tensor, target_labels: torch.Tensor | None = None, return_gates: bool = False
    ) -> ModelOutput:
        """Recognises the expression of `images` and, given target labels, synthesises them with it.

        Args:
            images: (B, C_in, H, W) in [-1, 1].
            target_labels: target expressions z^t, (B,) indices or (B, E) vectors; None skips the decoder.
            return_gates: return the ConvFLU gate maps r and z (paper Fig. 3).

        Returns:
            ModelOutput(logits, fake, gates).
        """
        fer, fes, gates = self.encode(images, return_gates)
        logits = self.f_cls(fer)  # (B, E)
        fake = None
        if target_labels is not None and self.fes_head is not None:
            fake = self.fes_head(fes, target_labels)  # (B, C_in, H, W)
        return ModelOutput(logits, fake, gates)

    def synthesize(self, images: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
        """Runs the FES branch alone: faces -> the same faces with the target expressions.

        In "fersnet" the FES encoder reads FER features through the ConvFLUs, so the FER encoder still runs;
        only f_cls is skipped. No `torch.no_grad` here, so the cycle loss can backpropagate through it; wrap
        the call yourself (and call `eval()`) for data augmentation.

        Args:
            images: (B, C_in, H, W) in [-1, 1].
            target_labels: (B,) indices or (B, E) vectors.

        Returns:
            (B, C_in, H, W) in [-1, 1].
        """
        if self.fes_head is None:
            raise NotImplementedError(f"variant {self.cfg.variant!r} has no synthesis branch")
        _, fes, _ = self.encode(images)
        return self.fes_head(fes, target_labels)


# ---- registry -----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[FERSNetBase]] = {}
_M = TypeVar("_M", bound=type[FERSNetBase])


def register_model(name: str) -> Callable[[_M], _M]:
    """Class decorator that adds a variant to the registry under `name`."""

    def add(cls: _M) -> _M:
        if name in _REGISTRY:
            raise ValueError(f"variant {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return add


def list_models() -> list[str]:
    """Names of all registered variants."""
    return sorted(_REGISTRY)


def has_synthesis(variant: str) -> bool:
    """Whether the registered `variant` has an FES branch (synthesises faces), asked of its class."""
    if variant not in _REGISTRY:
        raise ValueError(f"unknown variant {variant!r}; registered: {list_models()}")
    return _REGISTRY[variant].has_synthesis


def _encoder(in_ch: int, widths: Sequence[int]) -> nn.ModuleList:
    # A ModuleList, not a Sequential: FERSNet interleaves ConvFLUs between the blocks.
    chs = [in_ch, *widths]
    return nn.ModuleList(down_block(i, o) for i, o in zip(chs[:-1], chs[1:]))


@register_model("fersnet")
class FERSNet(FERSNetBase):
    """The paper's model: FER and FES encoders exchanging features through ConvFLUs after every block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        widths = cfg.scaled_widths
        self.fer_blocks = _encoder(cfg.in_channels, widths)
        self.fes_blocks = _encoder(cfg.in_channels, widths)
        bias = cfg.flu_gate_bias
        self.flu_to_fer = nn.ModuleList(ConvFLU(w, bias) for w in widths)  # FER <- FES
        self.flu_to_fes = nn.ModuleList(ConvFLU(w, bias) for w in widths)  # FES <- FER

    def encode(self, images: torch.Tensor, return_gates: bool = False) -> Encoded:
        fer = fes = images  # (B, C_in, H, W)
        gates: list[BlockGates] = []
        levels: list[torch.Tensor] = []
        for fer_block, fes_block, to_fer, to_fes in zip(
            self.fer_blocks, self.fes_blocks, self.flu_to_fer, self.flu_to_fes
        ):
            fer, fes = fer_block(fer), fes_block(fes)  # (B, C_i, H / 2^i, W / 2^i)
            # Both directions read the same pre-exchange features, so neither task sees the other's update.
            new_fer, fer_gates = to_fer(fer, fes)
            new_fes, fes_gates = to_fes(fes, fer.detach() if self.cfg.fes_reads_fer_detached else fer)
            fer, fes = new_fer, new_fes
            levels.append(fes)
            if return_gates:
                gates.append(BlockGates(fer_gates, fes_gates))
        return fer, tuple(levels), tuple(gates) if return_gates else None


@register_model("fersnet_hard")
class FERSNetHard(FERSNetBase):
    """Ablation "w/o ConvFLU": one shared encoder (hard parameter sharing) feeding f_cls and the synthesis head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.shared_blocks = _encoder(cfg.in_channels, cfg.scaled_widths)

    def encode(self, images: torch.Tensor, return_gates: bool = False) -> Encoded:
        x = images  # (B, C_in, H, W)
        levels: list[torch.Tensor] = []
        for block in self.shared_blocks:
            x = block(x)
            levels.append(x)
        return x, tuple(levels), None  # FER reads the last level (B, C, S, S); FES all of them


@register_model("fer_only")
class FEROnly(FERSNetBase):
    """Ablation "w/o MTL": the FER branch alone; `fake` is always None and `synthesize` raises."""

    has_synthesis = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.fer_blocks = _encoder(cfg.in_channels, cfg.scaled_widths)

    def encode(self, images: torch.Tensor, return_gates: bool = False) -> Encoded:
        x = images  # (B, C_in, H, W)
        for block in self.fer_blocks:
            x = block(x)
        return x, None, None


# ---- factory and capacity matching --------------------------------------------------------------------------


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _count_on_meta(cfg: ModelConfig) -> int:
    # Meta tensors have shapes but no storage: counting a large candidate costs milliseconds and no memory.
    with torch.device("meta"):
        return count_parameters(_REGISTRY[cfg.variant](cfg))


def matched_width_mult(cfg: ModelConfig, reference: str = REFERENCE_VARIANT, rel_tol: float = 1e-3) -> float:
    """Smallest width multiplier (>= cfg.width_mult, to `rel_tol`) giving at least the reference's parameters.

    The paper enlarges "kernel size and network depth" of its ablations until their capacity is at least the
    original's; we widen instead, which keeps the block structure of the paper. Parameter count grows
    monotonically with the multiplier, so a doubling search followed by bisection finds it.

    Args:
        cfg: the ablation's config; its variant must be registered.
        reference: variant whose parameter count (with the same config otherwise) must be reached.
        rel_tol: relative precision of the bisection.

    Returns:
        The width multiplier to use.
    """
    target = _count_on_meta(replace(cfg, variant=reference, match_capacity=False))

    def enough(mult: float) -> bool:
        return _count_on_meta(replace(cfg, width_mult=mult, match_capacity=False)) >= target

    lo = cfg.width_mult
    if enough(lo):
        return lo
    hi = 2 * lo
    while not enough(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def create_model(cfg: ModelConfig) -> FERSNetBase:
    """Builds the variant `cfg.variant`.

    With `cfg.match_capacity`, ablations are widened by `matched_width_mult`. The model's `cfg` is the resolved
    config: the multiplier found, with `match_capacity` off, so `create_model(ModelConfig(**asdict(model.cfg)))`
    rebuilds the same model without a new search (checkpoints should store this one).

    Args:
        cfg: model configuration.

    Returns:
        The model, in training mode, on the current default device.
    """
    if cfg.variant not in _REGISTRY:
        raise ValueError(f"unknown variant {cfg.variant!r}; registered: {list_models()}")
    if cfg.match_capacity and cfg.variant != REFERENCE_VARIANT:
        cfg = replace(cfg, width_mult=matched_width_mult(cfg), match_capacity=False)
    return _REGISTRY[cfg.variant](cfg)
