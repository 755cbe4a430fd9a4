"""The FERSNet objective, eqs. (5)-(10): a task object that owns the loss weights and returns every part.

    L = L_cls + λ1 L_GAN + λ2 L_rec + λ3 L_cyc + λ4 L_idt                                         (10)

with λ1 = 0.3, λ2 = 1, λ3 = 0.5 and λ4 rising from 0.1 to 0.5 during training (Sec. IV-A). The "fer_only"
variant has no synthetic images, so only L_cls applies: call `generator_loss` without `fake`.

Usage (one training step; the caller runs the models and the optimisers):
    loss_fn = FERSNetLoss.from_config(model_cfg, identity_net=frozen_lightcnn(weights))
    out = model(src, tgt_labels)                                   # I, z^t -> logits, G(z^t, I)
    d_total, d_parts = loss_fn.discriminator_loss(disc(tgt, tgt_labels), disc(out.fake.detach(), tgt_labels))
    cyc = model.synthesize(out.fake, src_labels)                   # G(z, G(z^t, I))
    g_total, g_parts = loss_fn.generator_loss(out.logits, src_labels, fake=out.fake, target_images=tgt,
                                              source_images=src, cycled=cyc, d_fake=disc(out.fake, tgt_labels),
                                              progress=epoch / num_epochs)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fersnet_ray.model.config import GAN_MODES, ModelConfig
from fersnet_ray.model.lightcnn import to_lightcnn_input

Parts = dict[str, torch.Tensor | float]


@dataclass(frozen=True)
class LossWeights:
    """The λ of eq. (10); λ4 is ramped linearly from `idt_start` to `idt_end` (see `lambda_idt`)."""

    gan: float = 0.3  # λ1
    rec: float = 1.0  # λ2
    cyc: float = 0.5  # λ3
    idt_start: float = 0.1  # λ4 at the start of training
    idt_end: float = 0.5  # λ4 at the end of training
    # Not in the paper: StarGAN's domain-classification loss on fakes, the FER branch (held fixed) reading
    # G(z^t, I) as z^t. 0 (off) is the paper's objective.
    cls_fake: float = 0.0


def lambda_idt(progress: float, start: float = 0.1, end: float = 0.5) -> float:
    """λ4 at a point of training: a linear ramp from `start` (progress 0) to `end` (progress 1).

    The paper says only that λ4 "is set to 0.1 at the beginning, and is gradually increased to 0.5"; a linear
    ramp over the whole run is the simplest schedule that does so. Progress outside [0, 1] is clamped.

    Args:
        progress: fraction of training done, e.g. step / total_steps.
        start: λ4 at progress 0.
        end: λ4 at progress 1.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * p


def gan_loss(logits: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    """Adversarial loss of patch logits against an all-real or all-fake target.

    Args:
        logits: discriminator output, (B, 1, H', W').
        real: whether the target is "real" (1) or "fake" (0).
        mode: "vanilla" (BCE with logits, the log terms of eq. (6)) or "lsgan" (squared error to 1 / 0).

    Returns:
        Scalar mean over batch and patches.
    """
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, target)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    raise ValueError(f"gan mode must be one of {GAN_MODES}, got {mode!r}")


class FERSNetLoss(nn.Module):
    """Losses of eqs. (5)-(10) for the generator (the FERSNet variant) and the patch discriminator.

    L_rec, L_cyc and L_idt are `F.mse_loss`, i.e. the mean over elements: the paper calls L_rec "the mean
    squared error", and per-element means keep λ2..λ4 independent of image and feature size. The generator's
    adversarial term is the non-saturating form of eq. (6): D(G(z^t, I)) is pushed towards "real".

    An nn.Module so that `.to(device)` moves the identity network with it. The identity network is frozen and
    kept in eval mode even when the loss is put in training mode.

    Args:
        gan_mode: "vanilla" or "lsgan".
        weights: the λ of eq. (10).
        identity_net: f_LICNN, a network mapping (B, 1, 128, 128) in [0, 1] to (logits, features), e.g.
            `frozen_lightcnn(...)`; None (or λ4 = 0) turns L_idt off.
    """

    def __init__(
        self, gan_mode: str = "vanilla", weights: LossWeights = LossWeights(), identity_net: nn.Module | None = None
    ) -> None:
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {GAN_MODES}, got {gan_mode!r}")
        self.gan_mode = gan_mode
        self.weights = weights
        self.identity_net = identity_net
        if identity_net is not None:
            identity_net.eval().requires_grad_(False)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, weights: LossWeights = LossWeights(), identity_net: nn.Module | None = None
    ) -> FERSNetLoss:
        """Builds the loss for a model config (takes its `gan_mode`)."""
        return cls(cfg.gan_mode, weights, identity_net)

    def train(self, mode: bool = True) -> FERSNetLoss:
        super().train(mode)
        if self.identity_net is not None:
            self.identity_net.eval()  # dropout / BN of a pretrained feature extractor must never train
        return self

    def lambda_idt(self, progress: float) -> float:
        """λ4 at `progress` in [0, 1], from this loss's weights."""
        return lambda_idt(progress, self.weights.idt_start, self.weights.idt_end)

    def identity_features(self, images: torch.Tensor) -> torch.Tensor:
        """f_LICNN features of images in [-1, 1]: (B, C, H, W) -> (B, F)."""
        if self.identity_net is None:
            raise RuntimeError("no identity network given")
        return self.identity_net(to_lightcnn_input(images))[1]

    def discriminator_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """The discriminator's side of eq. (6): real target faces -> real, synthetic faces -> fake.

        Args:
            d_real: D(z^t, I^t), patch logits (B, 1, H', W').
            d_fake: D(z^t, G(z^t, I)) on *detached* fakes, (B, 1, H', W').

        Returns:
            The total (scalar, to backpropagate) and detached parts {"d_real", "d_fake", "total"}.
        """
        real = gan_loss(d_real, True, self.gan_mode)
        fake = gan_loss(d_fake, False, self.gan_mode)
        total = real + fake
        return total, {"d_real": real.detach(), "d_fake": fake.detach(), "total": total.detach()}

    def generator_loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        fake: torch.Tensor | None = None,
        target_images: torch.Tensor | None = None,
        source_images: torch.Tensor | None = None,
        cycled: torch.Tensor | None = None,
        d_fake: torch.Tensor | None = None,
        progress: float = 0.0,
        fake_logits: torch.Tensor | None = None,
        target_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Parts]:
        """Eq. (10) for the FERSNet variant; only L_cls (eq. (5)) when `fake` is None ("fer_only").

        Args:
            logits: expression logits of the source faces, (B, E).
            labels: their ground-truth expressions z, (B,) indices.
            fake: G(z^t, I), (B, C, H, W); None for models without synthesis.
            target_images: real faces I^t with the target expression, (B, C, H, W).
            source_images: the input faces I, (B, C, H, W).
            cycled: G(z, G(z^t, I)), the fakes translated back to the source expression, (B, C, H, W);
                may be None when λ_cyc = 0 (no L_cyc).
            d_fake: D(z^t, G(z^t, I)) with gradients to the generator, (B, 1, H', W').
            progress: fraction of training done, for λ4.
            fake_logits: expression logits of the fakes from a classifier whose weights do not learn from
                them, (B, E); with `target_labels` (B,), the term `cls_fake` weighs (off when 0).

        Returns:
            The total (scalar, to backpropagate) and the parts for logging: detached tensors "cls", "gan",
            "rec", "cyc", "idt", "cls_fake" (those computed), "total", and the float "lambda_idt".
        """
        l_cls = F.cross_entropy(logits, labels)  # eq. (5)
        parts: Parts = {"cls": l_cls.detach()}
        if fake is None:
            parts["total"] = l_cls.detach()
            return l_cls, parts

        w = self.weights
        if target_images is None or source_images is None or d_fake is None or (cycled is None and w.cyc > 0):
            raise ValueError(
                "generator_loss with `fake` also needs target_images, source_images, d_fake and (λ_cyc > 0) cycled"
            )
        l_gan = gan_loss(d_fake, True, self.gan_mode)  # generator side of eq. (6)
        l_rec = F.mse_loss(fake, target_images)  # eq. (7)
        total = l_cls + w.gan * l_gan + w.rec * l_rec
        parts.update(gan=l_gan.detach(), rec=l_rec.detach())
        if cycled is not None:  # λ_cyc = 0 lets the caller skip the cycle pass: 110 → 196 img/s on the demo
            l_cyc = F.mse_loss(cycled, source_images)  # eq. (8)
            total = total + w.cyc * l_cyc
            parts["cyc"] = l_cyc.detach()
        if w.cls_fake > 0:
            if fake_logits is None or target_labels is None:
                raise ValueError("cls_fake > 0 needs fake_logits and target_labels")
            l_cf = F.cross_entropy(fake_logits, target_labels)  # the fakes must read as their target
            total = total + w.cls_fake * l_cf
            parts["cls_fake"] = l_cf.detach()

        lam_idt = self.lambda_idt(progress)
        parts["lambda_idt"] = lam_idt
        if self.identity_net is not None and lam_idt > 0:
            with torch.no_grad():
                target_feat = self.identity_features(target_images)  # (B, 256), a fixed target
            l_idt = F.mse_loss(self.identity_features(fake), target_feat)  # eq. (9)
            total = total + lam_idt * l_idt
            parts["idt"] = l_idt.detach()
        parts["total"] = total.detach()
        return total, parts
