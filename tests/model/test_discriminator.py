"""Conditional PatchGAN discriminator."""

import torch

from fersnet_ray.model.config import ModelConfig
from fersnet_ray.model.discriminator import PatchDiscriminator


def test_patch_map_shape(batch: dict) -> None:
    disc = PatchDiscriminator(ModelConfig.tiny())
    out = disc(batch["tgt"], batch["tgt_labels"])
    assert out.shape == (3, 1, 2, 2)  # 32 -> 16 -> 8 -> 4 -> 3 -> 2


def test_default_patch_map_for_96px() -> None:
    disc = PatchDiscriminator(ModelConfig())
    assert disc(torch.zeros(2, 1, 96, 96), torch.tensor([0, 6])).shape == (2, 1, 10, 10)


def test_conditioned_on_the_label(batch: dict) -> None:
    disc = PatchDiscriminator(ModelConfig.tiny()).eval()
    a = disc(batch["tgt"], batch["tgt_labels"])
    b = disc(batch["tgt"], batch["src_labels"])
    assert not torch.allclose(a, b)


def test_bf16_autocast_and_channels_last(batch: dict) -> None:
    disc = PatchDiscriminator(ModelConfig.tiny()).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = disc(batch["tgt"].contiguous(memory_format=torch.channels_last), batch["tgt_labels"])
    assert out.shape == (3, 1, 2, 2) and torch.isfinite(out.float()).all()
