"""ModelConfig: JSON round trip, the tiny preset, validation."""

import json
from dataclasses import asdict

import pytest

from fersnet_ray.model.config import ModelConfig


def test_round_trip_through_json() -> None:
    cfg = ModelConfig.tiny(variant="fersnet_hard", width_mult=1.5, gan_mode="lsgan")
    d = json.loads(json.dumps(asdict(cfg)))  # tuples come back as lists
    assert isinstance(d["widths"], list)
    back = ModelConfig(**d)
    assert back == cfg
    assert isinstance(back.widths, tuple) and isinstance(back.disc_widths, tuple)


def test_defaults_follow_the_paper() -> None:
    cfg = ModelConfig()
    assert (cfg.variant, cfg.num_classes, cfg.in_channels, cfg.image_size) == ("fersnet", 7, 1, 96)
    assert cfg.widths == (64, 128, 256, 512) and cfg.feature_size == 6


def test_tiny_and_scaling() -> None:
    cfg = ModelConfig.tiny(width_mult=1.5)
    assert cfg.image_size == 32 and cfg.widths == (8, 16, 32, 64)
    assert cfg.scaled_widths == (12, 24, 48, 96)
    assert cfg.feature_size == 2


@pytest.mark.parametrize("bad", [dict(gan_mode="wgan"), dict(image_size=40), dict(width_mult=0.0)])
def test_invalid_values_raise(bad: dict) -> None:
    with pytest.raises(ValueError):
        ModelConfig(**bad)
