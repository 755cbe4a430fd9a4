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

from fersnet_ray.model.config import ModelConfig
from fersnet_ray.model.discriminator import PatchDiscriminator
from fersnet_ray.model.fersnet import ModelOutput, count_parameters, create_model, has_synthesis, list_models
from fersnet_ray.model.lightcnn import LightCNN9, frozen_lightcnn, load_lightcnn_weights, to_lightcnn_input
from fersnet_ray.model.losses import FERSNetLoss, LossWeights, lambda_idt

__all__ = [
    "FERSNetLoss",
    "LightCNN9",
    "LossWeights",
    "ModelConfig",
    "ModelOutput",
    "PatchDiscriminator",
    "count_parameters",
    "create_model",
    "frozen_lightcnn",
    "has_synthesis",
    "lambda_idt",
    "list_models",
    "load_lightcnn_weights",
    "to_lightcnn_input",
]
