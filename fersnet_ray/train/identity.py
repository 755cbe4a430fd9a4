"""The identity network f_LICNN of L_idt (eq. 9): Light CNN-9 features, frozen.

The paper uses the published "model-B" Light CNN-9 (trained on millions of faces). Its weights are
not downloadable here, so a run chooses (TrainConfig.identity):
    "train"  train a Light CNN-9 identity classifier on the fold's *training* subjects only (never a
             test subject: the held-out identities stay unseen), then freeze it;
    URI      load published Light CNN-9 weights (keys may carry DataParallel's `module.` prefix);
    "none"   no identity loss (same as λ4 = 0).
"""

from __future__ import annotations

import numpy as np
import torch

from fersnet_ray.model import LightCNN9, frozen_lightcnn, to_lightcnn_input
from fersnet_ray.store import open_location, redact
from fersnet_ray.train.data import FaceSet, to_unit
from fersnet_ray.train.supervised import fit_supervised


def load_identity_weights(uri: str) -> LightCNN9:
    """Published Light CNN-9 weights from a path or s3:// URI, frozen (weights_only: no pickled code)."""
    from fersnet_ray.checkpoint import load_weights

    fs, path = open_location(uri)
    try:
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"identity weights {redact(uri)} not found") from None
    return frozen_lightcnn(load_weights(data, f"identity weights {redact(uri)}", ValueError))


def train_identity_net(
    faces: FaceSet, epochs: int, device: torch.device, seed: int = 0, batch_size: int = 64, crop: int | None = None
) -> LightCNN9:
    """Trains Light CNN-9 to tell the training subjects apart, then freezes it.

    Args:
        faces: the fold's training faces (N, C, L, L) uint8, on `device`.
        epochs: passes over the faces.
        device: where to train.
        seed: for weights and augmentation.
        batch_size: faces per step.
        crop: augmentation crop (default: 7/8 of the face side), resized to Light CNN's 128×128.

    Returns:
        The frozen network (eval mode, no gradients).
    """
    torch.manual_seed(seed)
    subjects, index = np.unique(faces.subjects, return_inverse=True)
    net = LightCNN9(num_classes=len(subjects)).to(device)
    fit_supervised(
        net,
        faces.images,
        torch.as_tensor(index, device=device),  # (N,) subject class per face
        crop=crop or faces.images.shape[-1] * 7 // 8,
        rotations=(-10.0, -5.0, 0.0, 5.0, 10.0),
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        forward=lambda net, x: net(to_lightcnn_input(x))[0],  # 128×128 input; (logits, features) out
    )
    return net.eval().requires_grad_(False)


def identity_accuracy(net: LightCNN9, faces: FaceSet) -> float:
    """Training-subject accuracy of the identity classifier (a sanity check for the log)."""
    _, index = np.unique(faces.subjects, return_inverse=True)
    with torch.no_grad():
        logits, _ = net(to_lightcnn_input(to_unit(faces.images)))
    return float((logits.argmax(1).cpu().numpy() == index).mean())
