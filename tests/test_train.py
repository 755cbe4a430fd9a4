"""Training: the plain-PyTorch loop pieces without Ray, then folds on a real local Ray with an S3 store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fersnet_ray.checkpoint import latest_checkpoint, read_checkpoint
from fersnet_ray.cli import app
from fersnet_ray.store import Store
from fersnet_ray.train.config import Experiment, make_experiment, with_overrides
from fersnet_ray.train.data import FaceSet, TargetSampler, augment
from fersnet_ray.train.loop import FoldState, train_epoch

runner = CliRunner()


def toy_faces(n_subjects=4, classes=(0, 1, 2), size=36) -> FaceSet:
    gen = torch.Generator().manual_seed(0)
    labels, subjects = [], []
    for s in range(n_subjects):
        for c in classes if s else classes[:1]:  # subject 0 shows a single expression
            labels += [c, c]
            subjects += [f"S{s}", f"S{s}"]
    images = torch.randint(0, 256, (len(labels), 1, size, size), generator=gen, dtype=torch.uint8)
    return FaceSet(images, torch.tensor(labels), np.array(subjects), [f"f{i}" for i in range(len(labels))])


def test_experiment_round_trip_and_presets():
    for preset in ("paper", "ck48", "tiny"):
        exp = make_experiment(preset, variant="fersnet_hard", num_classes=6)
        assert Experiment.from_dict(exp.to_dict()) == exp
    with pytest.raises(ValueError, match="unknown variant 'resnet'"):
        make_experiment("tiny", variant="resnet")


def test_set_overrides_parse_to_the_fields_types_and_name_what_is_wrong():
    """`--set section.key=value`: each value typed by its field; errors name the setting, before any work."""
    base = make_experiment("cpu48")
    exp = with_overrides(
        base,
        [
            "train.lambda_rec=10",  # float field from an int literal
            "train.epochs=7",
            "train.betas=0.9,0.999",  # tuple[float, float]
            "model.disc_widths=8,16,32,64",  # tuple[int, ...]
            "model.fes_skips=false",
            "model.flu_gate_bias=-4",  # float | None
            "train.lambda_rec=3",  # the last of a key set twice wins
        ],
    )
    assert (exp.train.lambda_rec, exp.train.epochs, exp.train.betas) == (3.0, 7, (0.9, 0.999))
    assert type(exp.train.lambda_rec) is float and type(exp.train.epochs) is int
    assert (exp.model.disc_widths, exp.model.fes_skips, exp.model.flu_gate_bias) == ((8, 16, 32, 64), False, -4.0)
    assert with_overrides(exp, ["model.flu_gate_bias=none"]).model.flu_gate_bias is None
    assert Experiment.from_dict(exp.to_dict()) == exp  # what config.json and checkpoints store
    assert with_overrides(base, []) == base
    # Checked once all settings are in: crop and image size change together.
    both = with_overrides(base, ["train.load_size=72", "train.crop_size=64", "model.image_size=64"])
    assert (both.train.crop_size, both.model.image_size) == (64, 64)
    for sets, message in (
        (["train.lamda_rec=1"], "train has no setting 'lamda_rec'; known: epochs"),
        (["train.epochs=x"], "--set 'train.epochs=x'"),
        (["model.fes_skips=maybe"], "not a boolean"),
        (["lambda_rec=1"], "expected model.KEY=VALUE or train.KEY=VALUE"),
        (["train.lambda_rec"], "expected model.KEY=VALUE"),
        (["train.crop_size=64"], "crop_size 64 exceeds load_size 54"),
    ):
        with pytest.raises(ValueError, match=message):
            with_overrides(base, sets)


def test_target_sampler_uses_expressions_the_subject_shows():
    faces = toy_faces()
    sampler = TargetSampler(faces.labels, faces.subjects, seed=0)
    label, target = sampler.sample(epoch=3)
    for i in range(len(faces)):
        assert faces.subjects[target[i]] == faces.subjects[i]  # same identity
        assert int(faces.labels[target[i]]) == label[i]  # the target face shows the target label
        if faces.subjects[i] != "S0":
            assert label[i] != int(faces.labels[i])  # a real translation
        else:
            assert label[i] == int(faces.labels[i])  # single-expression subject: reconstruct itself
    assert sampler.single_expression_subjects() == ["S0"]
    again = sampler.sample(epoch=3)
    assert (again[0] == label).all() and (again[1] == target).all()  # resumable: seeded by epoch


def test_augment_gives_a_pair_the_same_geometry():
    x = torch.rand(5, 1, 36, 36)
    a, b = augment([x, x.clone()], 32, (-15.0, 0.0, 15.0), torch.Generator().manual_seed(1))
    assert a.shape == (5, 1, 32, 32) and torch.equal(a, b)
    c, _ = augment([x, x], 32, (-15.0, 0.0, 15.0), torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)


def test_lr_and_lambda_idt_schedules_at_start_and_end():
    exp = make_experiment("tiny", epochs=3, lambda_idt_start=0.1, lambda_idt_end=0.5, lambda_cyc=0.5)
    state = FoldState.create(exp)
    assert state.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert state.loss.lambda_idt(0.0) == pytest.approx(0.1) and state.loss.lambda_idt(1.0) == pytest.approx(0.5)
    faces = toy_faces(size=36)
    for _ in range(3):
        metrics = train_epoch(state, faces, TargetSampler(faces.labels, faces.subjects, 0))
    assert state.opt_g.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert state.opt_d.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert {"cls", "gan", "rec", "cyc", "d_real", "d_fake"} <= set(metrics) and state.epoch == 3


def _checkpointed(store: Store, run: str, fold: int) -> int:
    """Epochs done in the fold's newest complete checkpoint (0 if none)."""
    path = latest_checkpoint(store, run, fold)
    return json.loads(store.read_bytes(f"{path}/meta.json"))["epoch"] if path else 0


def test_two_folds_on_ray_with_s3_checkpoints_resume_after_a_crash(trained_run):
    uri, args = trained_run  # `fersnet train … --folds 0,1 --epochs 4` on the local Ray (conftest)
    store = Store.from_uri(uri)
    epochs = 4
    assert {_checkpointed(store, "r", f) for f in (0, 1)} == {epochs}

    # The store as a crash of fold 1 after epoch 2's checkpoint leaves it: nothing newer, no evaluation,
    # and no record in Ray's own checkpoint snapshot (a killed driver need not have written it). The
    # driver kill itself is tested end to end in test_pipeline (a stopped cluster job) and a lost worker
    # node in test_reliability; both resume through the same lookup as this re-run.
    folder = store.run("r").fold(1)
    for name in ("checkpoint-epoch-0004", "evaluation.json", "history.json", "checkpoint_manager_snapshot.json"):
        store.remove(f"{folder}/{name}")
    assert _checkpointed(store, "r", 1) == 2

    out = runner.invoke(app, args)  # the same command again
    assert out.exit_code == 0, out.output
    assert "fold 0: finished earlier" in out.stdout
    state = read_checkpoint(store, latest_checkpoint(store, "r", 1))
    history = state["history"]
    assert state["epoch"] == epochs and [m["epoch"] for m in history] == list(range(epochs))
    resumed = [m for m in history if m["start_epoch"] > 0]
    assert resumed and resumed[0]["epoch"] == resumed[0]["start_epoch"] == 2  # went on from the epoch after it
    assert store.exists(f"{folder}/evaluation.json")
    assert "mean ± std over 2 folds" in out.stdout

    # A finished run re-run is skipped; a different config is refused.
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "fold 1: finished earlier" in again.stdout
    changed = runner.invoke(app, args[:-1] + ["6"])
    assert changed.exit_code == 1
    assert "exists with a different config (experiment.train.epochs: 4 → 6)" in changed.stderr
