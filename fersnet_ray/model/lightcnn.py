"""Light CNN-9 (Wu et al., "A Light CNN for Deep Face Representation with Noisy Labels"), model-B.

f_LICNN of eq. (9): a frozen face-identity network whose 256-d features the identity loss compares. The
module names match `LightCNN_9Layers` of github.com/AlfredXiangWu/LightCNN (`features.N`, `fc1`, `fc2`,
`filter`, `conv_a`, `conv`), so its published checkpoints load with `load_lightcnn_weights`.

Light CNN expects 128x128 greyscale faces in [0, 1]; `to_lightcnn_input` converts FERSNet's [-1, 1] images.

Usage:
    net = frozen_lightcnn(torch.load(path, map_location="cpu")["state_dict"])
    _, feats = net(to_lightcnn_input(images))  # (B, 256)
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

LIGHTCNN_SIZE = 128
LIGHTCNN_CLASSES = 79077  # identities of the published MS-Celeb-1M model
_GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as PIL's convert("L")


class MFM(nn.Module):
    """Max-feature-map: a conv (or linear) layer with 2x outputs, reduced by an element-wise max of halves."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: int = 1, linear: bool = False
    ) -> None:
        super().__init__()
        self.out_ch = out_ch
        if linear:
            self.filter: nn.Module = nn.Linear(in_ch, 2 * out_ch)
        else:
            self.filter = nn.Conv2d(in_ch, 2 * out_ch, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.filter(x), self.out_ch, dim=1)  # two (B, out, ...) halves
        return torch.max(a, b)


class Group(nn.Module):
    """A 1x1 MFM followed by a k x k MFM (Light CNN's "group" / network-in-network block)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv_a = MFM(in_ch, in_ch, 1, 1, 0)
        self.conv = MFM(in_ch, out_ch, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv_a(x))


class LightCNN9(nn.Module):
    """Light CNN-9: (B, 1, 128, 128) in [0, 1] -> (logits (B, num_classes), feature (B, 256)).

    Unlike the public code, the returned feature is taken *before* fc1's dropout, so it is deterministic even
    if the module is left in training mode (in eval mode both are the same).
    """

    def __init__(self, num_classes: int = LIGHTCNN_CLASSES) -> None:
        super().__init__()
        # Indices 0..8 must stay as in the public model: the checkpoint keys are "features.<i>.*".
        self.features = nn.Sequential(
            MFM(1, 48, 5, 1, 2),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # 64
            Group(48, 96, 3, 1, 1),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # 32
            Group(96, 192, 3, 1, 1),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # 16
            Group(192, 128, 3, 1, 1),
            Group(128, 128, 3, 1, 1),
            nn.MaxPool2d(2, 2, ceil_mode=True),  # 8
        )
        self.fc1 = MFM(8 * 8 * 128, 256, linear=True)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: x: (B, 1, 128, 128) in [0, 1]. Returns: logits (B, num_classes), feature (B, 256)."""
        if x.shape[1:] != (1, LIGHTCNN_SIZE, LIGHTCNN_SIZE):
            raise ValueError(f"Light CNN expects (B, 1, 128, 128), got {tuple(x.shape)}; use to_lightcnn_input")
        feature = self.fc1(torch.flatten(self.features(x), 1))  # (B, 128*8*8) -> (B, 256)
        logits = self.fc2(F.dropout(feature, training=self.training))  # (B, num_classes)
        return logits, feature


def to_lightcnn_input(images: torch.Tensor) -> torch.Tensor:
    """Converts FERSNet images to Light CNN input.

    Args:
        images: (B, C, H, W) in [-1, 1] with C = 1 (grey) or 3 (RGB).

    Returns:
        (B, 1, 128, 128) in [0, 1], bilinearly resized (differentiable, for the identity loss).
    """
    if images.shape[1] == 3:
        weights = images.new_tensor(_GREY).view(1, 3, 1, 1)
        images = (images * weights).sum(dim=1, keepdim=True)  # (B, 1, H, W)
    elif images.shape[1] != 1:
        raise ValueError(f"expected 1 or 3 channels, got {images.shape[1]}")
    x = (images + 1) / 2  # [-1, 1] -> [0, 1]
    if x.shape[-2:] != (LIGHTCNN_SIZE, LIGHTCNN_SIZE):
        x = F.interpolate(x, size=(LIGHTCNN_SIZE, LIGHTCNN_SIZE), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def load_lightcnn_weights(model: LightCNN9, state_dict: Mapping[str, Any]) -> list[str]:
    """Loads a public Light CNN-9 checkpoint into `model`.

    Accepts the raw state dict or the published checkpoint dict (weights under "state_dict"); strips the
    "module." prefix that DataParallel training left on every key. When the checkpoint's fc2 classifier has
    another number of classes than `model`, fc2 is left as initialised: identity features come from fc1.

    Args:
        model: the network to fill.
        state_dict: checkpoint weights.

    Returns:
        The checkpoint keys that were ignored (empty, or the fc2 keys).

    Raises:
        RuntimeError: any other key is missing, unexpected or of the wrong shape.
    """
    if isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]
    weights = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    ignored: list[str] = []
    if "fc2.weight" in weights and weights["fc2.weight"].shape != own["fc2.weight"].shape:
        ignored = sorted(k for k in weights if k.startswith("fc2."))
        for k in ignored:
            del weights[k]
    missing, unexpected = model.load_state_dict(weights, strict=False)  # shape mismatches still raise
    missing = [k for k in missing if not (ignored and k.startswith("fc2."))]
    if missing or unexpected:
        raise RuntimeError(f"Light CNN checkpoint mismatch: missing {missing}, unexpected {unexpected}")
    return ignored


def frozen_lightcnn(state_dict: Mapping[str, Any] | None = None, num_classes: int = LIGHTCNN_CLASSES) -> LightCNN9:
    """A Light CNN-9 in eval mode with gradients off, optionally loaded from a checkpoint.

    Args:
        state_dict: checkpoint weights for `load_lightcnn_weights`; None keeps random weights (tests only).
        num_classes: size of fc2; irrelevant for features.

    Returns:
        The frozen network.
    """
    model = LightCNN9(num_classes)
    if state_dict is not None:
        load_lightcnn_weights(model, state_dict)
    return model.eval().requires_grad_(False)
