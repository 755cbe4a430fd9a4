"""The training loop's CPU precision and batch-norm handling (train/loop.py), in plain PyTorch without Ray."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_train import toy_faces
from torch import nn

from fersnet_ray.train.config import Experiment, make_experiment
from fersnet_ray.train.data import TargetSampler
from fersnet_ray.train.loop import FoldState, autocast, cpu_has_bf16, evaluate, frozen_bn_stats, train_epoch


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Sets FERSNET_CPU_BF16 for one test; the detection is cached, so the cache is cleared around it."""

    def force(on: bool) -> None:
        monkeypatch.setenv("FERSNET_CPU_BF16", "1" if on else "0")
        cpu_has_bf16.cache_clear()

    yield force
    cpu_has_bf16.cache_clear()


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_frozen_bn_stats_keeps_running_statistics_and_gradients():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).train()
    before = _bn_buffers(net)
    with frozen_bn_stats(net):
        out = net(torch.randn(8, 1, 8, 8) * 3 + 1)
    assert all(torch.equal(before[k], v) for k, v in _bn_buffers(net).items())  # fakes left no trace
    out.sum().backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0  # gradients still flow
    assert net[1].momentum == 0.1  # restored
    net(torch.randn(8, 1, 8, 8) * 3 + 1)
    assert not torch.equal(before["1.running_mean"], net[1].running_mean)  # outside it, real faces update


@pytest.mark.parametrize("from_fakes", [False, True])
def test_the_cycle_pass_over_synthetic_faces_leaves_bn_statistics_alone(from_fakes):
    """One generator step runs the encoders on real faces, then on the fakes (cycle pass). By default
    only the real pass may move the recognition branch's running statistics."""
    exp = make_experiment("tiny", "fersnet", num_classes=3)
    exp = Experiment(exp.model, replace(exp.train, batch_size=8, bn_stats_from_fakes=from_fakes, lambda_cyc=0.5))
    state = FoldState.create(exp)
    momenta: list[float] = []  # BN momentum at every BN forward of the first FER block during one step
    bn = state.model.fer_blocks[0][1]
    bn.register_forward_pre_hook(lambda m, args: momenta.append(m.momentum))
    faces = toy_faces()
    train_epoch(state, faces, TargetSampler(faces.labels, faces.subjects, 0))
    steps = len(faces) // 8
    assert len(momenta) == 2 * steps  # real pass + cycle pass per step
    real, cycle = momenta[0::2], momenta[1::2]
    assert all(m == 0.1 for m in real)
    assert all(m == (0.1 if from_fakes else 0.0) for m in cycle)


def test_no_cycle_weight_no_cycle_pass():
    """λ_cyc = 0: the step skips G(z, G(z^t, I)) altogether (one encoder pass per step, no L_cyc)."""
    exp = make_experiment("tiny", "fersnet", num_classes=3)
    faces = toy_faces()
    passes = {}
    for cyc in (0.0, 0.5):
        state = FoldState.create(Experiment(exp.model, replace(exp.train, batch_size=8, lambda_cyc=cyc)))
        calls: list[int] = []
        state.model.fer_blocks[0].register_forward_hook(lambda *_: calls.append(1))
        m = train_epoch(state, faces, TargetSampler(faces.labels, faces.subjects, 0))
        passes[cyc] = (len(calls) // (len(faces) // 8), "cyc" in m)
    assert passes == {0.0: (1, False), 0.5: (2, True)}


def test_the_fake_classification_term_trains_the_generator_not_the_classifier():
    """λ_cls_fake: the FER branch reads the fakes as their targets with its weights held fixed, so the
    term's gradient reaches the decoder through the fakes but never the classifier head f_cls."""
    from fersnet_ray.train.loop import _fixed_logits

    exp = make_experiment("tiny", "fersnet", num_classes=3)
    state = FoldState.create(Experiment(exp.model, replace(exp.train, lambda_cls_fake=1.0)))
    model = state.model.train()
    x, yt = torch.rand(4, 1, 32, 32) * 2 - 1, torch.tensor([0, 1, 2, 0])
    fake = model(x, yt).fake
    logits = _fixed_logits(model, fake)
    torch.nn.functional.cross_entropy(logits, yt).backward()
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert all(p.grad is None for p in model.f_cls.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fes_head.parameters())

    # In a training step the term is logged, and with it off (the paper) it is not computed at all.
    faces = toy_faces()
    on = train_epoch(state, faces, TargetSampler(faces.labels, faces.subjects, 0))
    off_state = FoldState.create(exp)
    off = train_epoch(off_state, faces, TargetSampler(faces.labels, faces.subjects, 0))
    assert on["cls_fake"] > 0 and "cls_fake" not in off


@pytest.mark.parametrize("native", [True, False])
def test_cpu_precision_bf16_where_native_else_fp32(cpu_bf16, native):
    cpu_bf16(native)
    cpu = torch.device("cpu")
    with autocast(cpu, True):
        y = torch.ones(2, 4) @ torch.ones(4, 3)
    assert y.dtype == (torch.bfloat16 if native else torch.float32)
    with autocast(cpu, False):  # amp off: always fp32
        assert (torch.ones(2, 4) @ torch.ones(4, 3)).dtype == torch.float32

    # The whole loop trains and evaluates on that path: finite losses, float logits.
    exp = make_experiment("tiny", "fersnet", num_classes=3)
    exp = Experiment(exp.model, replace(exp.train, batch_size=8))
    state = FoldState.create(exp)
    faces = toy_faces()
    metrics = train_epoch(state, faces, TargetSampler(faces.labels, faces.subjects, 0))
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k in ("cls", "gan", "rec", "cyc"))
    result = evaluate(state.model, faces, exp.train.crop_size)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["total"] == len(faces)


def test_bf16_detection_reads_the_cpu_flags(cpu_bf16, monkeypatch):
    monkeypatch.delenv("FERSNET_CPU_BF16", raising=False)
    cpu_has_bf16.cache_clear()
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert cpu_has_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


@pytest.mark.parametrize("forced", [None, "0"])
def test_cpu_layout_nhwc_unless_forced_off_and_scores_as_loaded(monkeypatch, forced):
    # oneDNN's NHWC convolutions are the faster CPU path (see `channels_last`); FERSNET_CHANNELS_LAST=0
    # turns them off. Either way a model as trained and the same weights loaded into a fresh (NCHW)
    # model predict the same: `predict` puts weights and input in one layout.
    from fersnet_ray.model import create_model
    from fersnet_ray.train.loop import channels_last, predict

    if forced is None:
        monkeypatch.delenv("FERSNET_CHANNELS_LAST", raising=False)
    else:
        monkeypatch.setenv("FERSNET_CHANNELS_LAST", forced)
    cpu = torch.device("cpu")
    assert channels_last(cpu, amp=False) == (forced is None)
    assert channels_last(torch.device("cuda"), amp=False) is False  # a GPU: NHWC only with bf16 autocast
    exp = make_experiment("tiny", "fersnet", num_classes=3)
    exp = Experiment(exp.model, replace(exp.train, batch_size=8))
    state = FoldState.create(exp)
    conv = next(m for m in state.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == (forced is None)
    faces = toy_faces()
    train_epoch(state, faces, TargetSampler(faces.labels, faces.subjects, 0))
    fresh = create_model(exp.model)
    fresh.load_state_dict(state.model.state_dict())
    torch.testing.assert_close(predict(fresh, faces, exp.train.crop_size), predict(state.model, faces, exp.train.crop_size))
