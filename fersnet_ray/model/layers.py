"""Building blocks of FERSNet (Sec. III-A, III-B and IV-A of the paper).

Conv blocks of both branches, the ConvFLU that connects them, the classifier f_cls and the synthesis head
(transformer f_tra + decoder f_dec). The variants in `fersnet.py` assemble these. Shapes in comments use
B = batch, E = expression classes, C = channels, H x W = spatial size, S = side of the encoder output.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift.
    return [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


def down_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Encoder block: [3x3 conv + BN + ReLU] x 2, then 2x2 max-pool. (B, in, H, W) -> (B, out, H/2, W/2)."""
    return nn.Sequential(*_conv_bn_relu(in_ch, out_ch), *_conv_bn_relu(out_ch, out_ch), nn.MaxPool2d(2))


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Decoder block: the encoder block with its pooling replaced by a 2x2 stride-2 ConvTranspose.

    (B, in, H, W) -> (B, out, 2H, 2W).
    """
    return nn.Sequential(
        *_conv_bn_relu(in_ch, out_ch), *_conv_bn_relu(out_ch, out_ch), nn.ConvTranspose2d(out_ch, out_ch, 2, 2)
    )


def label_vector(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Turns class indices (B,) into one-hot vectors (B, E); float (B, E) inputs pass through (soft labels).

    Args:
        labels: integer class indices of shape (B,), or a float tensor of shape (B, E).
        num_classes: E.
        dtype: floating dtype of the result (the images' dtype, so bf16 models get bf16 labels).

    Returns:
        Tensor of shape (B, E).
    """
    if labels.dim() == 1 and not labels.is_floating_point():
        return F.one_hot(labels, num_classes).to(dtype)
    if labels.dim() == 2 and labels.shape[1] == num_classes:
        return labels.to(dtype)
    raise ValueError(f"labels must be (B,) indices or (B, {num_classes}) vectors, got {tuple(labels.shape)}")


class FLUGates(NamedTuple):
    """Gate maps of one ConvFLU, each (B, C, H, W) with values in (0, 1)."""

    r: torch.Tensor  # leaky gate, eq. (1): how much of the other task's features leaks in
    z: torch.Tensor  # memory gate, eq. (3): how much of the block's output is the new mixed feature


class ConvFLU(nn.Module):
    """Convolutional feature leaky unit: moves features from task y into task x (eqs. (1)-(4)).

    All kernels are 1x1 without bias, as in the paper's appendix. The code follows the paper's *equations*,
    not its appendix: the appendix computes W over the concatenation and multiplies by F_y instead of
    W * (r . F_y), never uses r, and keeps F_x with weight z instead of (1 - z). Eq. (4) and the paper's
    reading of Fig. 3 (z near 0 -> the branch keeps its own features) both say (1 - z) weighs F_x.
    """

    def __init__(self, channels: int, gate_bias: float | None = None) -> None:
        """gate_bias: None, the paper's bias-free kernels; a number: W_z gets a bias initialised to it
        (negative: z starts near 0, so the branch starts with its own features alone)."""
        super().__init__()
        # Names follow the paper: W_r, W_z act on [F_x, F_y]; W acts on r . F_y; U acts on F_x.
        self.w_r = nn.Conv2d(2 * channels, channels, 1, bias=False)
        self.w_z = nn.Conv2d(2 * channels, channels, 1, bias=gate_bias is not None)
        if gate_bias is not None:
            nn.init.constant_(self.w_z.bias, gate_bias)
        self.w = nn.Conv2d(channels, channels, 1, bias=False)
        self.u = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, f_x: torch.Tensor, f_y: torch.Tensor) -> tuple[torch.Tensor, FLUGates]:
        """Mixes f_y into f_x.

        Args:
            f_x: features of the receiving task, (B, C, H, W).
            f_y: features of the sending task, (B, C, H, W).

        Returns:
            The updated f_x, (B, C, H, W), and the gates (r, z).
        """
        f_xy = torch.cat([f_x, f_y], dim=1)  # (B, 2C, H, W)
        r = torch.sigmoid(self.w_r(f_xy))  # eq. (1)
        f_tilde = torch.tanh(self.w(r * f_y) + self.u(f_x))  # eq. (2)
        z = torch.sigmoid(self.w_z(f_xy))  # eq. (3)
        f_out = (1 - z) * f_x + z * f_tilde  # eq. (4)
        return f_out, FLUGates(r, z)


class Classifier(nn.Module):
    """f_cls: two fully connected layers from the flattened FER features to E logits."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),  # (B, C, S, S) -> (B, C*S*S); works for channels_last input too
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> logits (B, E)."""
        return self.net(features)


class ExpressionTransformer(nn.Module):
    """f_tra: the target-expression vector -> a feature map the size of the FES encoder output.

    The paper says only "fully connected layers and deconvolutional layers". Here: two fully connected layers
    produce a (C, ceil(S/2), ceil(S/2)) map, and one 2x2 stride-2 deconvolution (the same upsampling the
    decoder uses) doubles it to S x S (cropped when S is odd). For 96x96 input: 7 -> 256 -> 512*3*3 -> 512x6x6.
    """

    def __init__(self, num_classes: int, hidden: int, channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        seed = math.ceil(size / 2)
        self.fc = nn.Sequential(
            nn.Linear(num_classes, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels * seed * seed),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (channels, seed, seed)),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, 2, 2, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )

    def forward(self, target: torch.Tensor) -> torch.Tensor:
        """(B, E) -> (B, C, S, S)."""
        x = self.deconv(self.fc(target))  # (B, C, 2*ceil(S/2), 2*ceil(S/2))
        return x[:, :, : self.size, : self.size]


class SynthesisHead(nn.Module):
    """The FES part after the encoder: f_tra, channel concatenation, f_dec and a tanh image layer.

    f_dec mirrors the encoder widths with four `up_block`s. A final 3x3 conv maps the last decoder width to
    the image channels: a 2x2 stride-2 deconvolution alone as the output layer would give each pixel of a 2x2
    cell its own weights (checkerboard artefacts); the paper uses 3x3 kernels for all its convolutions.

    With `skips` (not in the paper), every decoder block after the first also reads the FES encoder's
    features of its own resolution (U-Net / pix2pix): the S x S bottleneck (3 x 3 for 48 px faces) then
    carries the expression, and the skips the face's layout and identity, which the bottleneck alone
    could not pass on at the budgets measured (README, "Why the generator failed").
    """

    def __init__(
        self, widths: Sequence[int], num_classes: int, tra_hidden: int, size: int, out_ch: int, skips: bool = False
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.skips = skips
        self.f_tra = ExpressionTransformer(num_classes, tra_hidden, widths[-1], size)
        dec_widths = list(reversed(widths))  # e.g. (512, 256, 128, 64)
        in_chs = [2 * widths[-1]] + dec_widths[:-1]  # first block reads [FES features, f_tra map]
        if skips:  # block j >= 1 also reads encoder block (n-1-j)'s output, dec_widths[j] channels
            in_chs = [in_chs[0]] + [i + w for i, w in zip(in_chs[1:], dec_widths[1:])]
        self.f_dec = nn.Sequential(*(up_block(i, o) for i, o in zip(in_chs, dec_widths)))
        self.to_image = nn.Sequential(nn.Conv2d(dec_widths[-1], out_ch, 3, padding=1), nn.Tanh())

    def forward(self, fes_levels: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Synthesises faces with the target expression.

        Args:
            fes_levels: the FES encoder's block outputs, shallow to deep: (B, C_i, H / 2^(i+1), W / 2^(i+1));
                the last, (B, C, S, S), is the bottleneck; the others are read only with `skips`.
            target: target-expression labels, (B,) indices or (B, E) vectors.

        Returns:
            Images in [-1, 1], (B, out_ch, H, W) with H = S * 2 ** len(widths).
        """
        fes_features = fes_levels[-1]
        z_t = label_vector(target, self.num_classes, fes_features.dtype)  # (B, E)
        x = torch.cat([fes_features, self.f_tra(z_t)], dim=1)  # (B, 2C, S, S)
        for j, block in enumerate(self.f_dec):
            if self.skips and j > 0:
                x = torch.cat([x, fes_levels[-1 - j]], dim=1)  # (B, C_dec + C_enc, 2^j S, 2^j S)
            x = block(x)
        return self.to_image(x)  # (B, out_ch, H, W)
