"""Light CNN-9: shapes, input conversion, loading public-style checkpoints."""

import pytest
import torch

from fersnet_ray.model.lightcnn import LightCNN9, frozen_lightcnn, load_lightcnn_weights, to_lightcnn_input


@pytest.fixture(scope="module")
def net() -> LightCNN9:
    torch.manual_seed(0)
    return LightCNN9(num_classes=10).eval()


def test_shapes(net: LightCNN9) -> None:
    logits, feature = net(torch.rand(2, 1, 128, 128))
    assert logits.shape == (2, 10) and feature.shape == (2, 256)
    with pytest.raises(ValueError, match="128"):
        net(torch.rand(2, 1, 96, 96))


def test_public_module_names() -> None:
    keys = set(LightCNN9(num_classes=10).state_dict())
    for key in (
        "features.0.filter.weight",
        "features.2.conv_a.filter.weight",
        "features.7.conv.filter.bias",
        "fc1.filter.weight",
        "fc2.weight",
    ):
        assert key in keys
    assert LightCNN9(num_classes=10).fc1.filter.in_features == 8 * 8 * 128


@pytest.mark.parametrize("channels", [1, 3])
def test_to_lightcnn_input(channels: int) -> None:
    x = to_lightcnn_input(torch.rand(2, channels, 32, 32) * 2 - 1)
    assert x.shape == (2, 1, 128, 128) and x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(to_lightcnn_input(-torch.ones(1, 1, 96, 96)), torch.zeros(1, 1, 128, 128))


def test_loads_module_prefixed_checkpoint(net: LightCNN9) -> None:
    ckpt = {"epoch": 80, "arch": "LightCNN-9", "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}
    fresh = LightCNN9(num_classes=10)
    assert load_lightcnn_weights(fresh, ckpt) == []
    x = torch.rand(2, 1, 128, 128)
    torch.testing.assert_close(fresh.eval()(x), net(x))


def test_ignores_fc2_when_classes_differ(net: LightCNN9) -> None:
    other = LightCNN9(num_classes=4)
    ignored = load_lightcnn_weights(other, {f"module.{k}": v for k, v in net.state_dict().items()})
    assert ignored == ["fc2.bias", "fc2.weight"]
    torch.testing.assert_close(other.fc1.filter.weight, net.fc1.filter.weight)


def test_other_mismatch_raises(net: LightCNN9) -> None:
    state = dict(net.state_dict())
    del state["fc1.filter.bias"]
    with pytest.raises(RuntimeError, match="fc1.filter.bias"):
        load_lightcnn_weights(LightCNN9(num_classes=10), state)


def test_frozen_lightcnn(net: LightCNN9) -> None:
    frozen = frozen_lightcnn(net.state_dict(), num_classes=10)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
