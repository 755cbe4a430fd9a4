"""FERSNetLoss: λ schedule, the parts of eqs. (5)-(10), and that a few Adam steps lower the objective."""

import pytest
import torch
import torch.nn.functional as F

from fersnet_ray.model.config import ModelConfig
from fersnet_ray.model.discriminator import PatchDiscriminator
from fersnet_ray.model.fersnet import FERSNetBase, create_model
from fersnet_ray.model.lightcnn import LightCNN9, frozen_lightcnn
from fersnet_ray.model.losses import FERSNetLoss, LossWeights, gan_loss, lambda_idt


@pytest.fixture(scope="module")
def identity_net() -> LightCNN9:
    torch.manual_seed(1)
    return frozen_lightcnn(num_classes=10)  # random weights: only the plumbing is tested here


class TinyIdentity(torch.nn.Module):
    """Stand-in for Light CNN where its cost would dominate (bf16 on CPU, many steps): same input and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(64, 16))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.net(x)  # (B, 1, 128, 128) -> (B, 16)
        return feature, feature


def _generator_loss(
    loss_fn: FERSNetLoss, model: FERSNetBase, disc: PatchDiscriminator, b: dict, progress: float = 0.5
) -> tuple[torch.Tensor, dict]:
    out = model(b["src"], b["tgt_labels"])
    if out.fake is None:
        return loss_fn.generator_loss(out.logits, b["src_labels"])
    return loss_fn.generator_loss(
        out.logits,
        b["src_labels"],
        fake=out.fake,
        target_images=b["tgt"],
        source_images=b["src"],
        cycled=model.synthesize(out.fake, b["src_labels"]),
        d_fake=disc(out.fake, b["tgt_labels"]),
        progress=progress,
    )


def test_lambda_idt_ramp() -> None:
    assert lambda_idt(0.0) == pytest.approx(0.1)
    assert lambda_idt(1.0) == pytest.approx(0.5)
    assert lambda_idt(0.5) == pytest.approx(0.3)
    assert lambda_idt(-1.0) == pytest.approx(0.1) and lambda_idt(2.0) == pytest.approx(0.5)
    assert FERSNetLoss(weights=LossWeights(idt_start=0.2, idt_end=0.2)).lambda_idt(0.7) == pytest.approx(0.2)


def test_paper_weights() -> None:
    w = LossWeights()
    assert (w.gan, w.rec, w.cyc, w.idt_start, w.idt_end) == (0.3, 1.0, 0.5, 0.1, 0.5)


def test_gan_modes() -> None:
    logits = torch.tensor([[[[0.0, 2.0]]]])
    assert gan_loss(logits, True, "vanilla") == pytest.approx(F.softplus(-logits).mean().item())
    assert gan_loss(logits, False, "lsgan") == pytest.approx(2.0)  # mean((0 - 0)^2, (2 - 0)^2)
    with pytest.raises(ValueError):
        FERSNetLoss(gan_mode="hinge")


def test_discriminator_loss_parts() -> None:
    loss_fn = FERSNetLoss.from_config(ModelConfig.tiny(gan_mode="lsgan"))
    total, parts = loss_fn.discriminator_loss(torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    assert total.item() == 0 and set(parts) == {"d_real", "d_fake", "total"}


def test_generator_loss_sums_the_weighted_parts(tiny_cfg: ModelConfig, batch: dict, identity_net: LightCNN9) -> None:
    loss_fn = FERSNetLoss(identity_net=identity_net)
    total, parts = _generator_loss(loss_fn, create_model(tiny_cfg), PatchDiscriminator(tiny_cfg), batch, 1.0)
    assert set(parts) == {"cls", "gan", "rec", "cyc", "idt", "lambda_idt", "total"}
    assert parts["lambda_idt"] == pytest.approx(0.5)
    expected = parts["cls"] + 0.3 * parts["gan"] + parts["rec"] + 0.5 * parts["cyc"] + 0.5 * parts["idt"]
    torch.testing.assert_close(total.detach(), expected)
    assert total.requires_grad and not any(isinstance(v, torch.Tensor) and v.requires_grad for v in parts.values())


@pytest.mark.parametrize("loss_fn", [FERSNetLoss(), FERSNetLoss(weights=LossWeights(idt_start=0.0, idt_end=0.0))])
def test_identity_term_off(loss_fn: FERSNetLoss, tiny_cfg: ModelConfig, batch: dict) -> None:
    _, parts = _generator_loss(loss_fn, create_model(tiny_cfg), PatchDiscriminator(tiny_cfg), batch)
    assert "idt" not in parts


def test_fer_only_has_only_the_classification_loss(batch: dict) -> None:
    cfg = ModelConfig.tiny(variant="fer_only")
    total, parts = _generator_loss(FERSNetLoss(), create_model(cfg), PatchDiscriminator(cfg), batch)
    assert set(parts) == {"cls", "total"} and torch.equal(total.detach(), parts["cls"])


def test_fake_without_the_other_images_raises(tiny_cfg: ModelConfig, batch: dict) -> None:
    out = create_model(tiny_cfg)(batch["src"], batch["tgt_labels"])
    with pytest.raises(ValueError, match="cycled"):
        FERSNetLoss().generator_loss(out.logits, batch["src_labels"], fake=out.fake)


def test_identity_net_stays_in_eval_mode(identity_net: LightCNN9) -> None:
    loss_fn = FERSNetLoss(identity_net=identity_net).train()
    assert loss_fn.training and not identity_net.training


@pytest.mark.parametrize("variant", ["fersnet", "fer_only"])
def test_adam_steps_lower_the_loss(variant: str, batch: dict) -> None:
    cfg = ModelConfig.tiny(variant=variant)
    model, disc = create_model(cfg), PatchDiscriminator(cfg).requires_grad_(False)  # D fixed: a stable target
    loss_fn = FERSNetLoss.from_config(cfg, identity_net=TinyIdentity())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses, synthesis = [], []
    for _ in range(8):
        total, parts = _generator_loss(loss_fn, model, disc, batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
        synthesis.append(total.item() - parts["cls"].item())  # the FES terms alone must improve too
    assert losses[-1] < 0.9 * losses[0], losses
    if model.has_synthesis:
        assert synthesis[-1] < synthesis[0], synthesis


def test_adam_steps_lower_the_discriminator_loss(tiny_cfg: ModelConfig, batch: dict) -> None:
    disc, loss_fn = PatchDiscriminator(tiny_cfg), FERSNetLoss()
    with torch.no_grad():
        fake = create_model(tiny_cfg)(batch["src"], batch["tgt_labels"]).fake
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        total, _ = loss_fn.discriminator_loss(disc(batch["tgt"], batch["tgt_labels"]), disc(fake, batch["tgt_labels"]))
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < losses[0], losses


def test_losses_under_bf16_autocast(tiny_cfg: ModelConfig, batch: dict) -> None:
    model, disc = create_model(tiny_cfg), PatchDiscriminator(tiny_cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = _generator_loss(FERSNetLoss(identity_net=TinyIdentity()), model, disc, batch)
    assert "idt" in parts
    assert torch.isfinite(total)
    total.backward()
