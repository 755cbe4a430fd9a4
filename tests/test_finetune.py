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
    with pytest.raises(ValueError, match="synthetic_weight must be positive"):
        FinetuneConfig(synthetic_weight=0)
    with pytest.raises(ValueError, match="not for data 'real'"):
        FinetuneConfig(data="real", score_weighted=True)


def test_weighted_synthetic_rows_name_their_row_and_weigh_the_loss():
    assert [FinetuneConfig(**kw).row_key for kw in ({}, {"synthetic_weight": 0.25}, {"score_weighted": True})] == [
        "fes-da",
        "fes-da-w0.25",
        "fes-da-wscore",
    ]
    both = FinetuneConfig(min_score=0.5, synthetic_weight=0.25, score_weighted=True)
    assert both.row_key == "fes-da@0.5-w0.25xscore" and both.folder == "finetune-fes-da@0.5-w0.25xscore"
    assert both.weighted and both.needs_scores and not FinetuneConfig().weighted

    # The loss is the weighted mean of the row losses: weights of 1 change nothing; a row of weight 0 is
    # as good as absent.
    exp = make_experiment("tiny")
    weights = create_model(exp.model).state_dict()
    batch = _batches(1)[0]  # 16 rows

    def first_loss(b):
        torch.manual_seed(1)  # dropout draws from the global generator
        return finetune_epoch(FinetuneState.create(exp, FinetuneConfig(), weights), [b])["cls"]

    plain = first_loss(batch)
    assert first_loss({**batch, "weight": torch.ones(16)}) == pytest.approx(plain, rel=1e-6)
    zeroed = first_loss({**batch, "weight": torch.cat([torch.ones(8), torch.zeros(8)])})
    assert zeroed != pytest.approx(plain, rel=1e-3)
    # The same forward pass of all 16 rows (batch-norm sees all of them), the loss of the first 8 only.
    torch.manual_seed(1)
    state = FinetuneState.create(exp, FinetuneConfig(), weights)
    state.model.train()
    assert zeroed == pytest.approx(_half_loss(state, batch, 8), rel=1e-5)


def test_every_row_of_the_comparison_takes_fes_das_steps_an_epoch():
    """FES-DA reads real + every synthetic row an epoch; the control repeats the real faces to that length,
    and --min-score draws its kept rows again to it (refill), unless --no-refill: one pass over them."""
    from fersnet_ray.finetune.job import epoch_rows

    manifest = {"real_per_class": {"a": 60, "b": 40}, "rows": 600}  # 100 real faces, 6 targets each
    assert epoch_rows(manifest, FinetuneConfig()) == (700, 600)
    assert epoch_rows(manifest, FinetuneConfig(data="real")) == (700, 0)
    assert epoch_rows(manifest, FinetuneConfig(min_score=0.5), kept=250) == (700, 600)
    assert epoch_rows(manifest, FinetuneConfig(min_score=0.5, refill=False), kept=250) == (350, 250)


def _half_loss(state, batch, n):
    """The first-batch loss over the first n rows of `batch`, augmented as `finetune_epoch` augments all of it."""
    import torch.nn.functional as F

    from fersnet_ray.finetune.classifiers import logits_of
    from fersnet_ray.train.data import augment, to_unit
    from fersnet_ray.train.loop import autocast, nhwc

    t = state.exp.train
    gen = torch.Generator().manual_seed(state.cfg.seed * 100_003 + state.epoch)
    x = augment([to_unit(batch["image"])], t.crop_size, t.rotations, gen)[0]
    # The loop's layout and precision (bf16 on CPUs that have it): fp32 here differs by ~1e-3 there.
    x = nhwc(x, state.device, t.amp)
    with torch.no_grad(), autocast(state.device, t.amp):
        logits = logits_of(state.model(x))
    return float(F.cross_entropy(logits[:n].float(), batch["label"][:n].long()))


def test_decode_batch_passes_row_weights_on():
    faces = [render_face(0, i, i % 7, 0, 48) for i in range(2)]
    rows = {"image": np.array([encode_png(f) for f in faces], dtype=object), "label": [1, 2], "weight": [1.0, 0.3]}
    out = decode_batch(rows, 36)
    assert out["weight"].dtype == np.float32 and out["weight"].tolist() == pytest.approx([1.0, 0.3])


def test_rays_no_free_cpu_warning_is_dropped_only_while_cached_folds_run(caplog):
    # Cached folds have nothing left for Ray Data to compute while their workers hold every CPU, so its
    # "will hang" warning is a false alarm there (and shows in the pipeline test's job log otherwise);
    # streaming, and outside fine-tuning, it stays, and so does every other warning.
    import logging

    from fersnet_ray.finetune.job import _without_cpu_alarm

    alarm = "Warning: The Ray cluster currently does not have any available CPUs. The Dataset job will hang"
    ray_data = logging.getLogger("ray.data.dataset")
    with caplog.at_level(logging.WARNING, logger="ray.data.dataset"):
        with _without_cpu_alarm(True):
            ray_data.warning(alarm)
            ray_data.warning("another warning")
        with _without_cpu_alarm(False):
            ray_data.warning(alarm + " (streaming)")
        ray_data.warning(alarm + " (after)")
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records] == ["warning", "(streaming)", "(after)"]
