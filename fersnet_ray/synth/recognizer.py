"""The independent expression recogniser that scores synthesized faces (the paper's Table V).

Table V rates FERSNet's syntheses with "an expression recognition network independently trained on
the original training set, containing real facial images only": a synthesis counts as convincing
when that network, which never saw a synthetic face nor shares weights with FERSNet's own FER
branch, reads the intended expression in it. `Recognizer` is that network: a small, fast CNN.

    model = train_recognizer(train_faces, num_classes=7, crop=96, epochs=30, device="cuda")
    p = target_probability(model, synthesized_u8, target_labels, crop=96)  # (N,) in [0, 1]
    torch.save(save_recognizer(model), "recognizer.pt")                    # loads with weights_only=True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fersnet_ray.train.config import ROTATIONS
from fersnet_ray.train.data import FaceSet, center_crop, to_unit
from fersnet_ray.train.loop import autocast, nhwc
from fersnet_ray.train.supervised import fit_supervised


@dataclass(frozen=True)
class RecognizerConfig:
    in_channels: int = 1
    num_classes: int = 7
    widths: tuple[int, ...] = (32, 64, 128, 256)  # one conv block each; every block halves the side

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))


class Recognizer(nn.Module):
    """[conv3×3 → BN → ReLU → max-pool 2] per width, global average pool, linear → E logits."""

    def __init__(self, cfg: RecognizerConfig):
        super().__init__()
        self.cfg = cfg
        blocks, c_in = [], cfg.in_channels
        for w in cfg.widths:
            # ceil_mode: an odd side (45 → 23 → 12 → ...) keeps its last row and column.
            blocks += [
                nn.Conv2d(c_in, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c_in = w
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, S, S) in [-1, 1] → logits (B, E)."""
        h = self.features(x)  # (B, widths[-1], S / 2^k, S / 2^k)
        return self.head(h.mean(dim=(2, 3)))


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Cross-entropy weights inverse to class frequency, mean 1 over present classes (absent: 0)."""
    counts = torch.bincount(labels.cpu(), minlength=num_classes).float()  # (E,)
    present = counts > 0
    weights = torch.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def train_recognizer(
    faces: FaceSet,
    num_classes: int,
    crop: int,
    epochs: int = 30,
    device: torch.device | str = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    amp: bool = True,
) -> Recognizer:
    """Trains a Recognizer on real faces only, with the training stage's augmentation.

    Args:
        faces: real faces (N, C, L, L) uint8 at load size, labels (N,) in 0..num_classes-1.
        num_classes: E, the number of expressions.
        crop: random-crop side in training (= the centre crop used when scoring).
        epochs: passes over the faces; the learning rate follows a cosine from 1e-3 to 1e-5.
        device: where to train.
        seed: for weights, batch order and augmentation.
        batch_size: faces per step, at most n // 8 (the ragged last batch is dropped: BN dislikes tiny batches).
        widths: channels of the conv blocks.
        amp: bf16 autocast on GPUs.

    Returns:
        The trained model, in eval mode.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model = Recognizer(RecognizerConfig(faces.images.shape[1], num_classes, tuple(widths))).to(device)
    # Small sets (the demo's 168 faces) get smaller batches, so an epoch still takes ≥ 8 steps;
    # sets of 8 × batch_size faces or more (CK+: 885) train exactly as before.
    batch_size = min(batch_size, max(8, len(faces) // 8))
    return fit_supervised(
        model,
        faces.images.to(device),
        faces.labels.to(device),
        crop=crop,
        rotations=ROTATIONS,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        lr_min=1e-5,
        weight=class_weights(faces.labels, num_classes).to(device),  # data sets are unbalanced (CK+ contempt: 5%)
        amp=amp,
    )


@torch.no_grad()
def recognizer_logits(
    model: Recognizer, images: torch.Tensor, crop: int, batch_size: int = 256, amp: bool = True
) -> torch.Tensor:
    """images (N, C, L, L) uint8 at load size → logits (N, E) float32 on the CPU, centre-cropped to `crop`."""
    model.eval()
    device = next(model.parameters()).device
    model = nhwc(model, device, amp)  # weights in the input's layout: as trained and as loaded score the same
    out = []
    for i in range(0, len(images), batch_size):
        x = nhwc(to_unit(center_crop(images[i : i + batch_size], crop).to(device)), device, amp)
        with autocast(device, amp):
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.cfg.num_classes)


def target_probability(
    model: Recognizer, images: torch.Tensor, targets: torch.Tensor, crop: int, batch_size: int = 256
) -> torch.Tensor:
    """(N,) softmax probability the recogniser gives each face's target expression (targets (N,))."""
    probs = recognizer_logits(model, images, crop, batch_size).softmax(dim=1)  # (N, E)
    return probs.gather(1, targets.cpu().long().view(-1, 1)).squeeze(1)


def accuracy_against(model: Recognizer, images: torch.Tensor, targets: torch.Tensor, crop: int) -> float:
    """Share of faces whose most likely expression is the target (Table V's recognition rate)."""
    if len(images) == 0:
        return float("nan")
    pred = recognizer_logits(model, images, crop).argmax(dim=1)
    # exactly k / n, as the training loop's accuracies: a float32 mean (0.87878787517…) would differ from
    # the same k / n there (0.87878787878…) and turn a tie into a win or a loss in the paired comparisons
    return int((pred == targets.cpu().long()).sum()) / len(targets)


def save_recognizer(model: Recognizer) -> dict:
    """Config and weights as plain values and tensors, so it loads with torch.load(weights_only=True)."""
    cfg = asdict(model.cfg)
    cfg["widths"] = list(cfg["widths"])
    return {"config": cfg, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def load_recognizer(state: dict) -> Recognizer:
    """The model `save_recognizer` stored, on the CPU, in eval mode."""
    model = Recognizer(RecognizerConfig(**state["config"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()
