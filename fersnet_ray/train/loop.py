"""The training loop of one fold, in plain PyTorch: no Ray here.

`FoldState` holds the networks, optimisers and schedulers; `train_epoch` runs one epoch of
alternating discriminator and generator steps; `evaluate` scores the test split. `jobs`-level code
(Ray Train in `train/job.py`, or a plain script, or a test) drives them:

    state = FoldState.create(exp, device)
    for epoch in range(state.epoch, exp.train.epochs):
        metrics = train_epoch(state, train_set, sampler, epoch)
        torch.save(state.state_dict(), "state.pt")        # resumable at any epoch boundary

The same loop serves DDP: pass the wrapped modules as `ddp_model` / `ddp_disc` and a per-rank
slice of the training faces; the states saved are those of the unwrapped modules.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from fersnet_ray.model import FERSNetLoss, LossWeights, PatchDiscriminator, create_model
from fersnet_ray.model.fersnet import FERSNetBase
from fersnet_ray.train.config import Experiment
from fersnet_ray.train.data import FaceSet, TargetSampler, augment, center_crop, to_unit


@dataclass
class FoldState:
    """Everything that changes during training: modules, optimisers, schedulers, epoch."""

    exp: Experiment
    model: FERSNetBase
    disc: PatchDiscriminator | None
    loss: FERSNetLoss
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    epoch: int = 0  # next epoch to run
    history: list[dict] = field(default_factory=list)  # one metrics dict per finished epoch

    @classmethod
    def create(
        cls, exp: Experiment, device: torch.device | str = "cpu", identity_net: torch.nn.Module | None = None
    ) -> "FoldState":
        device = torch.device(device)
        t = exp.train
        torch.manual_seed(t.seed)
        model = nhwc(create_model(exp.model).to(device), device, t.amp)
        disc = nhwc(PatchDiscriminator(model.cfg).to(device), device, t.amp) if model.fes_head is not None else None
        weights = LossWeights(
            t.lambda_gan, t.lambda_rec, t.lambda_cyc, t.lambda_idt_start, t.lambda_idt_end, t.lambda_cls_fake
        )
        loss = FERSNetLoss(exp.model.gan_mode, weights, identity_net).to(device)
        opt_g = torch.optim.Adam(model.parameters(), lr=t.lr, betas=t.betas)
        opt_d = torch.optim.Adam(disc.parameters(), lr=t.lr, betas=t.betas) if disc is not None else None
        cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs, eta_min=t.lr_min)  # noqa
        return cls(exp, model, disc, loss, opt_g, opt_d, cosine(opt_g), cosine(opt_d) if opt_d else None, device)

    def state_dict(self) -> dict:
        """Tensors and plain values only, so it loads with torch.load(weights_only=True)."""
        out = {
            "experiment": self.exp.to_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
        }
        if self.disc is not None:
            out.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict(), sched_d=self.sched_d.state_dict())
        if self.loss.identity_net is not None:
            out["identity"] = self.loss.identity_net.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])
        if self.loss.identity_net is not None and "identity" in state:
            self.loss.identity_net.load_state_dict(state["identity"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast pays off.

    Without those instructions oneDNN emulates bf16 with fp32 arithmetic plus conversions, which is
    slower than plain fp32: the CPU flags decide, not `torch.ops.mkldnn._is_mkldnn_bf16_supported()`
    (true on any AVX512 CPU). FERSNET_CPU_BF16=1 or 0 overrides the detection (tests use it).
    """
    forced = os.environ.get("FERSNET_CPU_BF16")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: no way to tell cheaply, stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on GPUs and on CPUs with native bf16 (no loss scaling needed, unlike fp16); else fp32.

    Measured on FERSNet at width 0.25, 48x48 faces, 2 threads: an AVX512-BF16 CPU ran a training step
    1.5x faster in bf16 than in fp32 (57 -> 82-89 img/s); see `cpu_has_bf16` for other CPUs.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if enabled and device.type == "cpu" and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(device: torch.device, amp: bool) -> bool:
    """Whether convolution weights and inputs use the NHWC layout (`torch.channels_last`).

    On a GPU with bf16 autocast (tensor cores want NHWC). On every CPU, fp32 or bf16: oneDNN's NHWC
    convolutions ran FERSNet's `cpu48` training step 1.25x faster than NCHW (88 -> 112 img/s, one
    thread, side by side), fer_only 1.39x and fersnet_hard 1.3x, its evaluation 1.56-1.96x
    (`jobs/bench_layout.py`, 2 cores without bf16). FERSNET_CHANNELS_LAST=1 or 0 overrides.
    """
    forced = os.environ.get("FERSNET_CHANNELS_LAST")
    if forced is not None:
        return forced.strip().lower() in ("1", "true", "yes")
    return device.type == "cpu" or (device.type == "cuda" and amp)


def nhwc(x, device: torch.device, amp: bool):
    """A module or a (B, C, H, W) tensor in the layout `channels_last` picks (unchanged otherwise)."""
    if not channels_last(device, amp):
        return x
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module):
    """Batch norm inside normalises with the batch's statistics but leaves its running statistics alone.

    The generator's cycle pass runs the encoders on synthetic faces in training mode; without this,
    every step mixes fakes into the running means and variances that real test faces are later
    normalised with. Momentum 0 makes the update `running = running`; gradients are unchanged.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum


def train_epoch(
    state: FoldState,
    faces: FaceSet,
    sampler: TargetSampler,
    ddp_model: torch.nn.Module | None = None,
    ddp_disc: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One epoch over `faces` (already on the device); returns mean loss parts and throughput."""
    t = state.exp.train
    model = ddp_model or state.model
    disc = ddp_disc or state.disc
    gen = torch.Generator().manual_seed(t.seed * 100_003 + state.epoch)
    target_label, target_face = sampler.sample(state.epoch)
    order = torch.randperm(len(faces), generator=gen)
    steps = max(1, len(faces) // t.batch_size)  # drop the ragged last batch: BN dislikes tiny batches
    state.model.train()
    if state.disc is not None:
        state.disc.train()
    sums: dict[str, float] = {}
    seen, start = 0, time.perf_counter()
    for step in range(steps):
        idx = order[step * t.batch_size : (step + 1) * t.batch_size]
        idx_np = idx.numpy()
        y = faces.labels[idx.to(faces.labels.device)]
        yt = torch.as_tensor(target_label[idx_np], device=state.device)
        x_u8, xt_u8 = faces.images[idx.to(faces.images.device)], faces.images[torch.as_tensor(target_face[idx_np])]
        x, xt = augment(
            [to_unit(x_u8.to(state.device)), to_unit(xt_u8.to(state.device))], t.crop_size, t.rotations, gen
        )  # (B, C, crop, crop) each, same geometry
        x, xt = nhwc(x, state.device, t.amp), nhwc(xt, state.device, t.amp)
        progress = (state.epoch + step / steps) / t.epochs
        parts = _step(state, model, disc, x, y, xt, yt, progress)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        seen += len(idx)
    if state.device.type == "cuda":
        torch.cuda.synchronize(state.device)
    elapsed = time.perf_counter() - start
    state.sched_g.step()
    if state.sched_d is not None:
        state.sched_d.step()
    metrics = {k: v / steps for k, v in sums.items()}
    metrics.update(epoch=state.epoch, images=seen, seconds=elapsed, images_per_s=seen / max(elapsed, 1e-9))
    state.epoch += 1
    return metrics


def _step(state, model, disc, x, y, xt, yt, progress) -> dict[str, torch.Tensor]:
    """One training step: (1) discriminator, (2) generator + classifier. Returns loss parts."""
    amp = state.exp.train.amp
    if state.disc is None:  # fer_only: the classifier alone
        with autocast(state.device, amp):
            out = model(x)
            total, parts = state.loss.generator_loss(out.logits.float(), y)
        state.opt_g.zero_grad(set_to_none=True)
        total.backward()
        state.opt_g.step()
        return parts

    with autocast(state.device, amp):
        out = model(x, yt)  # logits (B, E), fake (B, C, H, W)
    # 1. Train the discriminator on real target faces vs. detached fakes (eq. 6).
    state.disc.requires_grad_(True)
    with autocast(state.device, amp):
        d_total, d_parts = state.loss.discriminator_loss(disc(xt, yt).float(), disc(out.fake.detach(), yt).float())
    state.opt_d.zero_grad(set_to_none=True)
    d_total.backward()
    state.opt_d.step()

    # 2. Train the generator: classification, adversarial, reconstruction, cycle and identity terms.
    state.disc.requires_grad_(False)  # D only passes gradients through to G here
    keep_stats = contextlib.nullcontext() if state.exp.train.bn_stats_from_fakes else frozen_bn_stats(state.model)
    with autocast(state.device, amp), keep_stats:
        cycled = None
        if state.loss.weights.cyc > 0:  # G(z, G(z^t, I)), through the (DDP) forward; fakes leave BN stats alone
            cycled = model(out.fake, y).fake
        fake_logits = _fixed_logits(state.model, out.fake) if state.loss.weights.cls_fake > 0 else None
        g_total, g_parts = state.loss.generator_loss(
            out.logits.float(),
            y,
            fake=out.fake.float(),
            target_images=xt,
            source_images=x,
            cycled=None if cycled is None else cycled.float(),
            d_fake=disc(out.fake, yt).float(),
            progress=progress,
            fake_logits=None if fake_logits is None else fake_logits.float(),
            target_labels=yt,
        )
    state.opt_g.zero_grad(set_to_none=True)
    g_total.backward()
    state.opt_g.step()
    g_parts.pop("lambda_idt", None)
    return {
        **{f"g_{k}" if k == "total" else k: v for k, v in g_parts.items()},
        **{k if k.startswith("d_") else f"d_{k}": v for k, v in d_parts.items()},
    }


def _fixed_logits(model: FERSNetBase, images: torch.Tensor) -> torch.Tensor:
    """FER logits (B, E) of `images` with the model's weights held fixed: gradients reach `images` only.

    For λ_cls_fake: the generator learns to make its fakes read as the target, while the classifier never
    learns from fakes (which could teach both to agree on artefacts no other recogniser reads).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        return model(images).logits  # the unwrapped module: no DDP hooks for a pass without weight gradients
    finally:
        for p in params:
            p.requires_grad_(True)


@torch.no_grad()
def predict(model: FERSNetBase, faces: FaceSet, crop: int, batch_size: int = 256, amp: bool = True) -> torch.Tensor:
    """Logits (N, E) of the centre-cropped faces.

    `model` is a FERSNet (its `ModelOutput.logits`) or any classifier returning (B, E) logits itself
    (fine-tuning's small-cnn, ResNets, TorchScript models).
    """
    model.eval()
    device = next(model.parameters()).device
    model = nhwc(model, device, amp)  # weights in the input's layout: as trained and as loaded score the same
    out = []
    for i in range(0, len(faces), batch_size):
        x = nhwc(to_unit(center_crop(faces.images[i : i + batch_size], crop).to(device)), device, amp)
        with autocast(device, amp):
            y = model(x)
            out.append(getattr(y, "logits", y).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.cfg.num_classes)


def evaluate(model: FERSNetBase, faces: FaceSet, crop: int, amp: bool = True, num_classes: int | None = None) -> dict:
    """Test accuracy and confusion matrix (rows: true class, columns: predicted).

    num_classes: E for a classifier without FERSNet's `cfg` (None: `model.cfg.num_classes`).
    """
    n = num_classes or model.cfg.num_classes
    pred = predict(model, faces, crop, amp=amp).argmax(1)
    true = faces.labels.cpu()
    confusion = torch.bincount(true * n + pred, minlength=n * n).reshape(n, n)
    correct = int((pred == true).sum())
    return {
        "accuracy": correct / max(len(true), 1),
        "correct": correct,
        "total": len(true),
        "confusion": confusion.tolist(),
        "predictions": dict(zip(faces.face_ids, pred.tolist())),
    }


def progress_line(name: str, m: dict, epochs: int) -> str:
    """One progress line per fold and epoch: loss parts, accuracy when measured. name: "fold 3" or "final"."""
    keys = ["cls", "gan", "rec", "cyc", "idt", "d_real", "d_fake"]
    parts = " ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)
    acc = f" test_acc {m['accuracy']:.3f}" if "accuracy" in m else ""
    return f"{name} epoch {m['epoch'] + 1}/{epochs} {parts}{acc} ({m['images_per_s']:.0f} img/s)"
