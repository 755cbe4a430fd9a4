"""One small supervised loop for the helper networks: the Table V recogniser and the identity net.

Both are plain image classifiers trained on a fold's real training faces, held in memory: random
batches, the training stage's augmentation, Adam with a cosine learning rate, cross-entropy.

    model = fit_supervised(net, faces.images, labels, crop=96, rotations=ROTATIONS, epochs=30)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fersnet_ray.train.data import augment, to_unit
from fersnet_ray.train.loop import autocast, nhwc


def fit_supervised(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    crop: int,
    rotations: tuple[float, ...],
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
    lr_min: float = 0.0,
    weight: torch.Tensor | None = None,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    amp: bool = False,
) -> nn.Module:
    """Trains `model` in place on (images, targets) and returns it in eval mode.

    Args:
        model: the classifier, already on its device.
        images: (N, C, L, L) uint8 faces at load size, on the model's device.
        targets: (N,) class indices, on the model's device.
        crop: random-crop side of the augmentation.
        rotations: the augmentation's rotation angles (degrees).
        epochs: passes over the faces; the learning rate follows a cosine from `lr` to `lr_min`.
        batch_size: faces per step. Each epoch takes N // batch_size steps over a fresh permutation (the
            ragged rest is dropped: BN dislikes tiny batches); a set smaller than one batch trains on all of it.
        seed: for batch order and augmentation (weights are the caller's: it seeds before building `model`).
        weight: per-class cross-entropy weights (E,), e.g. against class imbalance.
        forward: (model, x) → logits (B, E), for models that take other inputs or return more than logits
            (default: `model(x)`).
        amp: bf16 autocast where the device supports it.
    """
    device = images.device
    model = nhwc(model, device, amp)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1), eta_min=lr_min)
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    steps = max(1, n // batch_size)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size].to(device)
            (x,) = augment([to_unit(images[idx])], crop, rotations, gen)  # (B, C, crop, crop) in [-1, 1]
            x = nhwc(x, device, amp)
            with autocast(device, amp):
                logits = forward(model, x) if forward else model(x)  # (B, E)
            loss = F.cross_entropy(logits.float(), targets[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()
