"""FERSNet in plain PyTorch: the model variants, the conditional patch discriminator, Light CNN-9 and the losses.

Modules:
    config         ModelConfig, the frozen architecture config.
    layers         conv blocks, ConvFLU (eqs. (1)-(4)), f_cls and the synthesis head (f_tra + f_dec).
    fersnet        the variant registry: create_model, list_models, count_parameters.
    discriminator  PatchDiscriminator, conditioned on the target expression.
    lightcnn       Light CNN-9 for the identity loss, and its checkpoint loader.
    losses         FERSNetLoss, eqs. (5)-(10).

Importing builds nothing and reads no files.
"""

from importlib import import_module

from fersnet_ray.model.config import VARIANTS, ModelConfig

# Everything but the config loads on first use (PEP 562): the CLI checks `--preset` and `--variant`
# against `VARIANTS` and the presets without importing torch (about 1.3 s), so a typo fails at once.
_LAZY = {
    "PatchDiscriminator": "discriminator",
    "ModelOutput": "fersnet",
    "count_parameters": "fersnet",
    "create_model": "fersnet",
    "has_synthesis": "fersnet",
    "list_models": "fersnet",
    "LightCNN9": "lightcnn",
    "frozen_lightcnn": "lightcnn",
    "load_lightcnn_weights": "lightcnn",
    "to_lightcnn_input": "lightcnn",
    "FERSNetLoss": "losses",
    "LossWeights": "losses",
    "lambda_idt": "losses",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"fersnet_ray.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FERSNetLoss",
    "LightCNN9",
    "LossWeights",
    "ModelConfig",
    "ModelOutput",
    "PatchDiscriminator",
    "VARIANTS",
    "count_parameters",
    "create_model",
    "frozen_lightcnn",
    "has_synthesis",
    "lambda_idt",
    "list_models",
    "load_lightcnn_weights",
    "to_lightcnn_input",
]
