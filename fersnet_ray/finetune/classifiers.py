"""The classifiers fine-tuning can train, in one registry (plain PyTorch, no Ray).

    fersnet            FERSNet's recognition branch, from each fold's trained checkpoint (the paper's FES-DA)
    small-cnn          the Table V recogniser's architecture (synth/recognizer.py), from scratch
    resnet18, resnet34 torchvision's ResNets, written out here (same parameter names), adapted to small faces
    timm:NAME          any timm model (needs `pip install timm`), `in_chans` and `num_classes` set by timm
    torchscript:URI    the user's own scripted model, (N, C, S, S) in [-1, 1] → (N, E) logits

    model = create_classifier("resnet18", ClassifierInput(channels=1, num_classes=7, size=48))
    load_weights_into(model, "resnet18", torch.load("resnet18-f37072fd.pth", weights_only=True))
    check_classifier(model, "resnet18", ClassifierInput(1, 7, 48))  # ClassifierError naming both shapes
    rebuild_recipe("resnet18", ClassifierInput(1, 7, 48))  # Python that rebuilds it for exported weights

Every classifier sees what FERSNet sees: the augmented crop (N, C, S, S) in [-1, 1], and returns (N, E)
logits (FERSNet returns a `ModelOutput`; `logits_of` reads both). Pretrained weights are never
downloaded: `--weights URI` names a state dict in the store (a path or s3://), loaded with
`torch.load(weights_only=True)`.

Why ResNets are written out rather than imported: torchvision's wheels pin one torch build each (on a
CPU torch from another index, pip either replaces torch or `import torchvision` fails with "operator
torchvision::nms does not exist"), and timm depends on torchvision. A BasicBlock ResNet is 60 lines;
its parameter names are torchvision's, so torchvision's and timm's `resnet18` state dicts load as they are.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

TORCHSCRIPT, TIMM = "torchscript:", "timm:"


class ClassifierError(ValueError):
    """A classifier that cannot be built or cannot take the data set's faces; the message says which and why."""


@dataclass(frozen=True)
class ClassifierInput:
    """What a classifier is fed: (N, channels, size, size) in [-1, 1]; it returns (N, num_classes)."""

    channels: int
    num_classes: int
    size: int


@dataclass(frozen=True)
class ClassifierEntry:
    """One registered classifier.

    Attributes:
        build: (argument after "NAME:", input, source bytes or None, model_config) → nn.Module;
            model_config is the run's FERSNet ModelConfig (only `fersnet` uses it).
        help: one line for the CLI and README.
        from_fold_checkpoint: starts from the fold's trained FERSNet (only `fersnet`).
        takes_argument: the name is a prefix, "timm:NAME" or "torchscript:URI".
        takes_weights: `--weights URI` can initialise it.
        first_conv, head: parameter prefixes adapted (channels) or re-initialised (classes) when loading weights.
        lr, lr_min: default schedule: a trained network is nudged, one from scratch is trained.
        recipe: (argument, input) → how `fersnet export` tells a user to rebuild the architecture for
            the exported weights (see `rebuild_recipe`).
    """

    build: Callable[..., nn.Module]
    help: str
    from_fold_checkpoint: bool = False
    takes_argument: bool = False
    takes_weights: bool = True
    first_conv: str | None = None
    head: str | None = None
    lr: float = 1e-3
    lr_min: float = 1e-5
    recipe: Callable[[str, ClassifierInput], dict] | None = None


CLASSIFIERS: dict[str, ClassifierEntry] = {}


def register_classifier(name: str, **entry) -> Callable:
    def wrap(build):
        CLASSIFIERS[name] = ClassifierEntry(build=build, **entry)
        return build

    return wrap


def choices() -> str:
    return ", ".join(f"{n}NAME" if n == TIMM else f"{n}URI" if n == TORCHSCRIPT else n for n in CLASSIFIERS)


def parse_classifier(name: str) -> tuple[str, ClassifierEntry, str]:
    """ "timm:convnext_atto" → ("timm:", its entry, "convnext_atto"); an unknown name lists the choices."""
    key, arg = name, ""
    for prefix in (TIMM, TORCHSCRIPT):
        if name.startswith(prefix):
            key, arg = prefix, name[len(prefix) :]
            if not arg:
                raise ClassifierError(f"classifier {name!r} needs {'a model name' if prefix == TIMM else 'a URI'}")
    if key not in CLASSIFIERS:
        raise ClassifierError(f"unknown classifier {name!r}; choose one of {choices()}")
    return key, CLASSIFIERS[key], arg


def default_schedule(name: str) -> dict[str, float]:
    """{"lr", "lr_min"} the classifier trains with by default (fersnet is nudged, the others trained)."""
    _, entry, _ = parse_classifier(name)
    return {"lr": entry.lr, "lr_min": entry.lr_min}


def classifier_slug(name: str) -> str:
    """A folder-safe name: "small-cnn", "timm-convnext_atto", "torchscript-mynet" (the file's stem)."""
    key, _, arg = parse_classifier(name)
    if key == TORCHSCRIPT:
        arg = os.path.splitext(arg.rstrip("/").rsplit("/", 1)[-1])[0]
    if not arg:
        return key
    return f"{key.rstrip(':')}-{''.join(c if c.isalnum() or c in '._-' else '_' for c in arg)}"


def create_classifier(name: str, inp: ClassifierInput, source: bytes | None = None, model_config=None) -> nn.Module:
    """The registered classifier `name` for input `inp`, freshly initialised (torchscript: as scripted).

    source: the torchscript file's bytes (None: read from its URI here).
    model_config: the run's FERSNet ModelConfig, for `fersnet`.
    """
    _, entry, arg = parse_classifier(name)
    return entry.build(arg, inp, source, model_config)


def rebuild_recipe(name: str, inp: ClassifierInput) -> dict:
    """How to rebuild classifier `name`'s architecture so that exported weights load into it.

    Returns {"fersnet_ray": Python defining `model`, with fersnet-ray installed; "standalone": Python
    defining `model` without it, or None where no other package builds the architecture;
    "standalone_needs": the modules it imports; "note": what else it needs, or where it may fail}.
    After either snippet, `model.load_state_dict(safetensors.torch.load_file("model.safetensors"))`
    loads the weights (strict: the names are the classifier's own). tests/test_export.py runs them.
    """
    _, entry, arg = parse_classifier(name)
    recipe = {
        "fersnet_ray": (
            "from fersnet_ray.finetune.classifiers import ClassifierInput, create_classifier\n"
            f"model = create_classifier({name!r}, ClassifierInput(channels={inp.channels}, "
            f"num_classes={inp.num_classes}, size={inp.size}))"
        ),
        "standalone": None,
        "standalone_needs": [],
        "note": "",
    }
    return {**recipe, **(entry.recipe(arg, inp) if entry.recipe else {})}


def logits_of(output) -> torch.Tensor:
    """(N, E) logits from a FERSNet `ModelOutput` or from a classifier that returns them directly."""
    return getattr(output, "logits", output)


def _shape(out) -> str:
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return f"a {type(out).__name__}"


def check_classifier(model: nn.Module, name: str, inp: ClassifierInput) -> None:
    """Runs a (2, C, S, S) batch through `model`; a ClassifierError names the input and what came back."""
    x = torch.zeros(2, inp.channels, inp.size, inp.size)  # (N, C, S, S) in [-1, 1]
    shape = f"(2, {inp.channels}, {inp.size}, {inp.size})"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = logits_of(model(x))
    except Exception as e:  # noqa: BLE001 - any failure to take the input is the user's to see, with the shapes
        first = (str(e).strip().splitlines() or [""])[-1]
        raise ClassifierError(
            f"classifier {name} cannot take the data set's faces {shape} (channels {inp.channels}, "
            f"{inp.size}×{inp.size}): {type(e).__name__}: {first}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, inp.num_classes):
        raise ClassifierError(
            f"classifier {name} returned {_shape(out)} for a {shape} input; it must return logits "
            f"(N, {inp.num_classes}), one per expression"
        )


def load_weights_into(model: nn.Module, name: str, state: dict, where: str = "--weights") -> None:
    """Initialises `model` from a state dict (torchvision, timm, or this project's), adapting it.

    A {"state_dict": ...} or {"model": ...} wrapper and DDP's "module." prefix are removed. The first
    conv's input channels are adapted as timm's `adapt_input_conv` does (RGB summed to greyscale, or
    repeated and rescaled); a head whose shape differs (1000 ImageNet classes against E expressions)
    is left freshly initialised. Any other mismatch is a ClassifierError naming the parameter.
    """
    _, entry, _ = parse_classifier(name)
    if not entry.takes_weights:
        raise ClassifierError(f"classifier {name} takes no --weights ({entry.help})")
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    first_conv = entry.first_conv or getattr(model, "first_conv_name", None)
    head = entry.head or getattr(model, "head_name", None)
    loaded = {}
    for key, want in own.items():
        if key not in state:
            if head and key.startswith(f"{head}."):
                continue
            raise ClassifierError(f"{where}: no {key!r} in the weights for classifier {name}")
        have = state[key]
        if have.shape != want.shape and first_conv and key == f"{first_conv}.weight":
            have = adapt_input_conv(want.shape[1], have)  # (O, C_file, k, k) → (O, C, k, k)
        if have.shape != want.shape:
            if head and key.startswith(f"{head}."):
                continue  # another number of classes: a new head
            raise ClassifierError(
                f"{where}: {key!r} has shape {tuple(have.shape)}, classifier {name} needs {tuple(want.shape)}"
            )
        loaded[key] = have.to(want.dtype)
    unused = sorted(set(state) - set(own))
    if unused:
        raise ClassifierError(f"{where}: {len(unused)} weight(s) classifier {name} does not have, e.g. {unused[0]!r}")
    model.load_state_dict(loaded, strict=False)


def adapt_input_conv(channels: int, weight: torch.Tensor) -> torch.Tensor:
    """First-conv weights (O, C_in, k, k) → (O, channels, k, k): RGB summed for greyscale, else tiled and rescaled."""
    c_in = weight.shape[1]
    if channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-channels // c_in)
    return weight.repeat(1, reps, 1, 1)[:, :channels] * (c_in / channels)


def read_uri(uri: str, what: str) -> bytes:
    """The bytes of a file at a local path or s3:// URI; a missing file is a ClassifierError naming it."""
    from fersnet_ray.store import open_location, redact

    fs, path = open_location(uri)
    if not fs.exists(path) or fs.isdir(path):
        raise ClassifierError(f"{what} {redact(uri)} not found")
    return fs.cat_file(path)


# --- rebuilding an exported classifier (rebuild_recipe) -------------------------------------------


def _fersnet_recipe(arg: str, inp: ClassifierInput) -> dict:
    return {
        "fersnet_ray": (
            "from fersnet_ray.model import ModelConfig\n"
            "from fersnet_ray.use.recognizer import Recognizer\n"
            'model = Recognizer(ModelConfig(**card["experiment"]["model"])).net  # card: fersnet-card.json'
        ),
        "note": "FERSNet's architecture is built only by fersnet-ray; without it, use model.torchscript.pt or "
        "model.onnx, which carry the architecture",
    }


def _small_cnn_recipe(arg: str, inp: ClassifierInput) -> dict:
    from fersnet_ray.synth.recognizer import RecognizerConfig

    widths = RecognizerConfig().widths
    return {
        "standalone": (
            "import torch\n"
            "from torch import nn\n"
            "class SmallCNN(nn.Module):  # fersnet_ray.synth.recognizer.Recognizer, same parameter names\n"
            f"    def __init__(self, c={inp.channels}, e={inp.num_classes}, widths={widths}):\n"
            "        super().__init__()\n"
            "        layers = []\n"
            "        for w in widths:\n"
            "            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),\n"
            "                       nn.MaxPool2d(2, ceil_mode=True)]\n"
            "            c = w\n"
            "        self.features, self.head = nn.Sequential(*layers), nn.Linear(c, e)\n"
            "    def forward(self, x):  # (N, C, S, S) in [-1, 1] -> (N, E) logits\n"
            "        return self.head(self.features(x).mean(dim=(2, 3)))\n"
            "model = SmallCNN()"
        ),
        "standalone_needs": ["torch"],
    }


def _resnet_recipe(depth: int) -> Callable[[str, ClassifierInput], dict]:
    def recipe(arg: str, inp: ClassifierInput) -> dict:
        pool = "model.maxpool = torch.nn.Identity()  # the stem's max-pool is left out below 112 px\n"
        return {
            "standalone": (
                "import torch, torchvision\n"
                f"model = torchvision.models.resnet{depth}(weights=None, num_classes={inp.num_classes})\n"
                f"model.conv1 = torch.nn.Conv2d({inp.channels}, 64, kernel_size=7, stride=2, padding=3, bias=False)\n"
                + (pool if inp.size < SMALL_INPUT else "")
            ).rstrip("\n"),
            "standalone_needs": ["torch", "torchvision"],
            "note": f"the ResNet here has torchvision's resnet{depth} parameter names; the torchvision snippet "
            "follows them but is not run by the tests (torchvision is not a dependency)",
        }

    return recipe


def _timm_recipe(arg: str, inp: ClassifierInput) -> dict:
    return {
        "standalone": (
            "import timm\n"
            f"model = timm.create_model({arg!r}, pretrained=False, in_chans={inp.channels}, "
            f"num_classes={inp.num_classes})"
        ),
        "standalone_needs": ["timm"],
        "note": "the same call fersnet-ray makes; a timm version whose model differs will not load the weights",
    }


def _torchscript_recipe(arg: str, inp: ClassifierInput) -> dict:
    return {
        "standalone": f"import torch\nmodel = torch.jit.load({arg!r})  # s3://: open it with fsspec first",
        "standalone_needs": ["torch"],
        "note": "the safetensors file holds the fine-tuned weights only; the architecture is your TorchScript "
        "file fine-tuning started from (source_sha256 says which), needed by both recipes; model.torchscript.pt "
        "carries both",
    }


# --- the registry ---------------------------------------------------------------------------------


@register_classifier(
    "fersnet",
    help="FERSNet's recognition branch, fine-tuned from each fold's trained checkpoint (FES-DA)",
    from_fold_checkpoint=True,
    takes_weights=False,
    lr=1e-4,
    lr_min=1e-6,
    recipe=_fersnet_recipe,
)
def _fersnet(arg: str, inp: ClassifierInput, source: bytes | None, model_config=None) -> nn.Module:
    from fersnet_ray.model import create_model

    if model_config is None:
        raise ClassifierError("classifier fersnet is built from a run's model config (it needs one)")
    return create_model(model_config)  # the weights: the fold's trained checkpoint


@register_classifier(
    "small-cnn",
    help="the Table V recogniser (4 conv blocks, global average pooling), trained from scratch",
    first_conv="features.0",
    head="head",
    recipe=_small_cnn_recipe,
)
def _small_cnn(arg: str, inp: ClassifierInput, source: bytes | None, model_config=None) -> nn.Module:
    from fersnet_ray.synth.recognizer import Recognizer, RecognizerConfig

    return Recognizer(RecognizerConfig(inp.channels, inp.num_classes))


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual connection; torchvision's parameter names."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


SMALL_INPUT = 112  # below this side the stem's max-pool is dropped


class ResNet(nn.Module):
    """torchvision's ResNet (BasicBlock), adapted to the data set's channels and face size.

    Channels: `conv1` takes C input channels (1 for the greyscale faces); ImageNet RGB weights given
    with --weights are summed over RGB (`adapt_input_conv`).
    Size: the ImageNet stem (7×7 stride-2 conv, then a stride-2 max-pool) shrinks 224 to 56 before the
    four stages shrink it 8× more, to 7×7. A 48×48 face would end at 2×2. Below a side of 112 the
    max-pool is left out, so 48 → 24 after the stem → 3×3 after the stages (32 → 2×2), which keeps
    spatial detail without the 4× compute of a stride-1 stem. The 7×7 kernel stays, so pretrained
    weights still load. Global average pooling accepts any side of at least 1.
    """

    first_conv_name, head_name = "conv1", "fc"

    def __init__(self, layers: tuple[int, ...], inp: ClassifierInput, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(inp.channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if inp.size >= SMALL_INPUT else nn.Identity()
        c_in = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock(c_in if j == 0 else w, w, 2 if (j == 0 and i > 0) else 1) for j in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, inp.num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, S, S) → logits (N, E)."""
        h = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, S/2, S/2) below 112, else S/4
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))  # (N, 512, S/16, S/16)
        return self.fc(torch.flatten(self.avgpool(h), 1))


@register_classifier(
    "resnet18", help="torchvision's ResNet-18, adapted to small greyscale faces (see ResNet)", recipe=_resnet_recipe(18)
)
def _resnet18(arg: str, inp: ClassifierInput, source: bytes | None, model_config=None) -> nn.Module:
    return ResNet((2, 2, 2, 2), inp)


@register_classifier("resnet34", help="torchvision's ResNet-34, adapted like resnet18", recipe=_resnet_recipe(34))
def _resnet34(arg: str, inp: ClassifierInput, source: bytes | None, model_config=None) -> nn.Module:
    return ResNet((3, 4, 6, 3), inp)


@register_classifier(
    TIMM,
    help="a timm model by name (pip install timm); timm adapts in_chans and num_classes",
    recipe=_timm_recipe,
)
def _timm(arg: str, inp: ClassifierInput, source: bytes | None, model_config=None) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ClassifierError(f"classifier timm:{arg} needs timm, which does not import here ({e})") from None
    if arg not in timm.list_models():
        raise ClassifierError(f"timm has no model {arg!r} (`timm.list_models()` lists them)")
    model = timm.create_model(arg, pretrained=False, in_chans=inp.channels, num_classes=inp.num_classes)
    # timm's default_cfg names the first conv and the classifier, for --weights adaptation.
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
    model.first_conv_name = cfg.get("first_conv")
    model.head_name = cfg.get("classifier")
    return model


@register_classifier(
    TORCHSCRIPT,
    help="your own TorchScript model at a path or s3:// URI: (N, C, S, S) in [-1, 1] → (N, E) logits",
    takes_weights=False,
    recipe=_torchscript_recipe,
)
def _torchscript(arg: str, inp: ClassifierInput, source: bytes | None, model_config=None) -> nn.Module:
    if source is None:
        source = read_uri(arg, "TorchScript model")
    try:
        return torch.jit.load(io.BytesIO(source), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - not a TorchScript archive: name the file
        reason = (str(e).splitlines() or [""])[0]
        raise ClassifierError(f"torchscript:{arg} is not a TorchScript model: {reason}") from None
