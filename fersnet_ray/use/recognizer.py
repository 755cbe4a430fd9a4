"""The classifier a run trained, and the preprocessing its input needs. Plain PyTorch, no Ray.

    rec, prep, exp = load_recognizer(store, ref)         # ref from use.checkpoints.resolve
    logits = rec(prep.model_input(faces_u8))             # (N, C, L, L) uint8 -> (N, E) logits

`Recognizer` is what `predict` runs and `export` writes: images (N, C, S, S) in [-1, 1] -> logits
(N, E). Its `net` is the recognition path of a trained FERSNet, or any classifier of
`finetune.classifiers` fine-tuned by `fersnet finetune --classifier` (small-cnn, resnet18, timm:NAME,
torchscript:URI), rebuilt by the same registry. For FERSNet the FES decoder (f_tra + f_dec) is
dropped; the FES encoder stays where the variant has one, because the ConvFLUs feed its features
into the FER branch at every block.

`Preprocessing` is the chain from a raw image to that input, identical to what the face table and
`evaluate` use: decode and convert channels as `prepare` does, align (method and size from the data
set's card), resize to the run's load_size, centre crop to crop_size, scale to [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fersnet_ray.finetune.classifiers import ClassifierInput, create_classifier, logits_of
from fersnet_ray.model import create_model
from fersnet_ray.model.config import ModelConfig
from fersnet_ray.train.config import Experiment
from fersnet_ray.train.data import center_crop, to_unit


class Recognizer(nn.Module):
    """(N, C, S, S) float in [-1, 1] -> expression logits (N, E), in float32 (no autocast inside).

    Recognizer(cfg): FERSNet's recognition path for a ModelConfig; Recognizer(net, E): any classifier
    that returns (N, E) logits (or a ModelOutput), e.g. from `create_classifier`.
    """

    def __init__(self, net: ModelConfig | nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        if isinstance(net, ModelConfig):
            num_classes, net = net.num_classes, create_model(net)
            net.fes_head = None  # the synthesis decoder: not on the recognition path
        self.net = net
        self.num_classes = int(num_classes) if num_classes is not None else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # FERSNet: target_labels=None, so the decoder would not run anyway; its logits are `.logits`.
        return logits_of(self.net(images))

    @classmethod
    def from_checkpoint_state(cls, cfg: ModelConfig, model_state: dict) -> Recognizer:
        """From a checkpoint's `model` state dict (the full FERSNet's); the decoder's weights are left out."""
        rec = cls(cfg)
        rec.net.load_state_dict({k: v for k, v in model_state.items() if not k.startswith("fes_head.")})
        return rec.eval()

    @property
    def scripted(self) -> bool:
        """A TorchScript classifier (torchscript:URI): torch.export, and so ONNX's dynamo exporter, cannot take it."""
        return isinstance(self.net, torch.jit.ScriptModule)

    def weights(self) -> dict[str, torch.Tensor]:
        """Recognition-path weights by the classifier's own names (FERSNet's for FERSNet), contiguous
        (safetensors needs that; a GPU-trained model's may be channels_last)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}


def build_recognizer(classifier: str, exp: Experiment, source: bytes | None = None) -> Recognizer:
    """A fresh (untrained) Recognizer of `classifier` for the run's faces: what a checkpoint's weights load into.

    classifier: "fersnet" (the run's FERSNet variant, without the decoder) or a name of
        `finetune.classifiers`, as fine-tuned (torchscript:URI with the URI recorded by fine-tuning).
    source: a TorchScript classifier's file bytes (None: read from its URI).
    """
    if classifier == "fersnet":
        return Recognizer(exp.model)
    inp = ClassifierInput(exp.model.in_channels, exp.model.num_classes, exp.train.crop_size)  # as fine-tuning fed it
    return Recognizer(create_classifier(classifier, inp, source), inp.num_classes)


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


def recognizer_from_state(state: dict) -> tuple[Recognizer, Experiment]:
    """A loaded training or fine-tuning checkpoint (`checkpoint.read_checkpoint`) -> its Recognizer (eval), experiment."""
    exp = Experiment.from_dict(state["experiment"])
    classifier = state.get("classifier", "fersnet")  # training checkpoints name none: FERSNet
    if classifier == "fersnet":
        rec = Recognizer.from_checkpoint_state(exp.model, state["model"])
    else:
        rec = build_recognizer(classifier, exp)
        rec.net.load_state_dict(state["model"])  # strict: the classifier's own names, as fine-tuning saved them
    return rec.eval(), exp


def load_recognizer(store, ref) -> tuple[Recognizer, Preprocessing, Experiment]:
    """A finished checkpoint (`use.checkpoints.ModelRef`) -> its Recognizer (eval, CPU), preprocessing, experiment."""
    from fersnet_ray.checkpoint import read_checkpoint
    from fersnet_ray.table import read_card

    rec, exp = recognizer_from_state(read_checkpoint(store, ref.path))
    card = read_card(store, store.run(ref.run).read_config()["dataset"])
    return rec, Preprocessing.of(card, exp), exp
