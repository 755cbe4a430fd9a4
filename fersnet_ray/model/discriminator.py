"""Patch-based discriminator D(z^t, I) of eq. (6), conditioned on the target expression.

A pix2pix PatchGAN (Isola et al., the paper's [7]): 4x4 convolutions, the first len(widths) - 1 with stride 2,
then one with stride 1 and a 1-channel output, so each output logit judges one receptive-field patch
(70x70 for the default widths). pix2pix conditions on an input image; here the condition is the expression
label, given as E one-hot maps broadcast to H x W and concatenated to the image channels.

Usage:
    disc = PatchDiscriminator(cfg)
    patch_logits = disc(images, target_labels)  # (B, 1, H', W'); 96x96 input -> 10x10 patches
"""

from __future__ import annotations

import torch
from torch import nn

from fersnet_ray.model.config import ModelConfig
from fersnet_ray.model.layers import label_vector


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN returning a map of real/fake logits (no sigmoid; the loss applies it)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        widths = cfg.disc_widths
        layers: list[nn.Module] = []
        in_ch = cfg.in_channels + cfg.num_classes  # image channels + one label map per class
        for i, out_ch in enumerate(widths):
            stride = 2 if i < len(widths) - 1 else 1
            # No normalisation on the first layer (pix2pix); instance norm elsewhere, because batch norm would
            # mix statistics of the real and fake batches the discriminator sees separately.
            layers.append(nn.Conv2d(in_ch, out_ch, 4, stride, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.InstanceNorm2d(out_ch, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
        """Scores each patch of `images` as a real face with expression `target_labels`.

        Args:
            images: (B, C_in, H, W) in [-1, 1], real target faces I^t or synthetic faces G(z^t, I).
            target_labels: (B,) indices or (B, E) vectors.

        Returns:
            Patch logits (B, 1, H', W').
        """
        b, _, h, w = images.shape
        z_t = label_vector(target_labels, self.num_classes, images.dtype)  # (B, E)
        label_maps = z_t[:, :, None, None].expand(b, self.num_classes, h, w)  # (B, E, H, W), no copy
        return self.net(torch.cat([images, label_maps], dim=1))  # (B, 1, H', W')
