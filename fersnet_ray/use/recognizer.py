"""The recognition path of a trained FERSNet, and the preprocessing its input needs. Plain PyTorch, no Ray.

    rec, prep, exp = load_recognizer(store, ref)         # ref from use.checkpoints.resolve
    logits = rec(prep.model_input(faces_u8))             # (N, C, L, L) uint8 -> (N, E) logits

`Recognizer` is what `predict` runs and `export` writes: images (N, C, S, S) in [-1, 1] -> logits
(N, E). The FES decoder (f_tra + f_dec) is dropped; the FES encoder stays where the variant has one,
because the ConvFLUs feed its features into the FER branch at every block.

`Preprocessing` is the chain from a raw image to that input, identical to what the face table and
`evaluate` use: decode and convert channels as `prepare` does, align (method and size from the data
set's card), resize to the run's load_size, centre crop to crop_size, scale to [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fersnet_ray.model import create_model
from fersnet_ray.model.config import ModelConfig
from fersnet_ray.train.config import Experiment
from fersnet_ray.train.data import center_crop, to_unit


class Recognizer(nn.Module):
    """(N, C, S, S) float in [-1, 1] -> expression logits (N, E), in float32 (no autocast inside)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.net = create_model(cfg)
        self.net.fes_head = None  # the synthesis decoder: not on the recognition path

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).logits  # target_labels=None: the decoder would not run anyway

    @classmethod
    def from_checkpoint_state(cls, cfg: ModelConfig, model_state: dict) -> Recognizer:
        """From a checkpoint's `model` state dict (the full FERSNet's); the decoder's weights are left out."""
        rec = cls(cfg)
        rec.net.load_state_dict({k: v for k, v in model_state.items() if not k.startswith("fes_head.")})
        return rec.eval()

    def weights(self) -> dict[str, torch.Tensor]:
        """Recognition-path weights by the FERSNet's own names, contiguous (safetensors needs that;
        a GPU-trained model's may be channels_last)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}


@dataclass(frozen=True)
class Preprocessing:
    """From a raw image to the Recognizer's input; the fields come from the card and the experiment."""

    align: str  # "none" | "fan", as the data set was prepared
    aligned_size: int  # side of the face table's faces
    channels: int  # 1: greyscale 'L', 3: 'RGB'
    load_size: int  # the run's resize before cropping
    crop_size: int  # the model's input side S

    @classmethod
    def of(cls, card: dict, exp: Experiment) -> Preprocessing:
        a = card["alignment"]
        return cls(a["method"], int(a["size"]), int(a["channels"]), exp.train.load_size, exp.train.crop_size)

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def model_input(self, faces: torch.Tensor) -> torch.Tensor:
        """(N, C, load_size, load_size) uint8 -> (N, C, crop_size, crop_size) float32 in [-1, 1]."""
        return to_unit(center_crop(faces, self.crop_size))

    def steps(self) -> list[str]:
        """The chain in words, for the export card and README; each step is a function of fersnet_ray."""
        align = (
            f"centre square crop, resize to {self.aligned_size}x{self.aligned_size} (PIL bicubic)"
            if self.align == "none"
            else f"FAN 68 landmarks -> 5-point similarity warp onto the template, {self.aligned_size}x"
            f"{self.aligned_size} (prepare/align.py)"
        )
        return [
            (
                f"decode; convert to {self.mode} as prepare does: 16-bit and float images scaled by their own "
                "range, alpha composited on black (prepare/align.py decode_image)"
            ),
            f"align ({self.align}): {align}",
            f"resize {self.aligned_size} -> {self.load_size} (torch bilinear, antialias=True, rounded to uint8)"
            if self.aligned_size != self.load_size
            else f"keep {self.load_size}x{self.load_size}",
            f"centre crop {self.crop_size}x{self.crop_size}",
            "scale: x / 127.5 - 1 -> [-1, 1], float32",
            f"layout (N, {self.channels}, {self.crop_size}, {self.crop_size})",
        ]

    def to_dict(self) -> dict:
        return {**asdict(self), "mode": self.mode, "steps": self.steps()}


def load_recognizer(store, ref) -> tuple[Recognizer, Preprocessing, Experiment]:
    """A finished checkpoint (`use.checkpoints.ModelRef`) -> its Recognizer (eval, CPU), preprocessing, experiment."""
    from fersnet_ray.table import read_card
    from fersnet_ray.checkpoint import read_checkpoint

    state = read_checkpoint(store, ref.path)
    exp = Experiment.from_dict(state["experiment"])
    card = read_card(store, store.run(ref.run).read_config()["dataset"])
    return Recognizer.from_checkpoint_state(exp.model, state["model"]), Preprocessing.of(card, exp), exp
