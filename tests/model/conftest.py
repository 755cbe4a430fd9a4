"""Shared fixtures for the model tests: tiny configs so every test runs on CPU in well under a second."""

from collections.abc import Iterator

import pytest
import torch

from fersnet_ray.model.config import ModelConfig

BATCH = 3


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)  # one thread for the whole suite: tests/conftest.py's `one_thread`
    yield


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig.tiny()


@pytest.fixture
def batch(tiny_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Source faces I, their labels z, target faces I^t and target labels z^t, images in [-1, 1]."""
    shape = (BATCH, tiny_cfg.in_channels, tiny_cfg.image_size, tiny_cfg.image_size)
    return {
        "src": torch.rand(shape) * 2 - 1,
        "src_labels": torch.tensor([0, 1, 2]),
        "tgt": torch.rand(shape) * 2 - 1,
        "tgt_labels": torch.tensor([3, 4, 5]),
    }
