"""The fine-tuning loop in plain PyTorch (no Ray): it learns, resumes exactly, and decodes shard rows."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fersnet_ray.finetune.loop import FinetuneConfig, FinetuneState, decode_batch, finetune_epoch
from fersnet_ray.model import create_model
from fersnet_ray.prepare.demo import render_face
from fersnet_ray.table import encode_png
from fersnet_ray.train.config import make_experiment


def _batches(n_batches: int = 4, batch: int = 16, side: int = 36):
    """Batches as Ray Data hands them over: uint8 faces (B, 1, L, L) whose expression is learnable."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_batches):
        labels = rng.integers(0, 7, batch)
        images = np.stack(
            [np.asarray(render_face(0, int(rng.integers(4)), int(y), int(rng.integers(3)), side)) for y in labels]
        )
        out.append({"image": torch.from_numpy(images[:, None].copy()), "label": torch.from_numpy(labels)})
    return out


def test_finetuning_lowers_the_loss_and_resumes_exactly():
    exp = make_experiment("tiny")
    weights = create_model(exp.model).state_dict()
    cfg = FinetuneConfig(epochs=6, batch_size=16, lr=3e-3, lr_min=1e-4)
    batches = _batches()
    state = FinetuneState.create(exp, cfg, weights)
    losses = [finetune_epoch(state, batches)["cls"] for _ in range(3)]
    assert losses[-1] < losses[0] and state.epoch == 3
    saved = copy.deepcopy(state.state_dict())  # state_dict() shares the live tensors

    # Resuming from the saved state continues exactly where a run without the break goes.
    resumed = FinetuneState.create(exp, cfg, weights)
    resumed.load_state_dict(saved)
    assert resumed.epoch == 3 and resumed.sched.last_epoch == state.sched.last_epoch
    torch.manual_seed(1)  # dropout draws from the global generator
    a = finetune_epoch(state, batches)
    torch.manual_seed(1)
    b = finetune_epoch(resumed, batches)
    assert a["cls"] == pytest.approx(b["cls"], rel=1e-5) and a["lr"] == b["lr"]
    assert a["images"] == 64 and 0.0 <= a["train_accuracy"] <= 1.0


def test_decode_batch_turns_shard_rows_into_model_input():
    faces = [render_face(0, i, i % 7, 0, 48) for i in range(3)]
    out = decode_batch({"image": np.array([encode_png(f) for f in faces], dtype=object), "label": [1, 2, 3]}, 36)
    assert out["image"].shape == (3, 1, 36, 36) and out["image"].dtype == np.uint8
    assert out["label"].tolist() == [1, 2, 3]


def test_config_is_validated():
    with pytest.raises(ValueError, match="lr_min"):
        FinetuneConfig(lr=1e-4, lr_min=1e-3)
