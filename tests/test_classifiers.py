"""The classifier registry and its adapters in plain PyTorch (no Ray): every entry builds, trains and is checked."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from fersnet_ray.finetune.classifiers import (
    CLASSIFIERS,
    TIMM,
    TORCHSCRIPT,
    ClassifierError,
    ClassifierInput,
    ResNet,
    check_classifier,
    classifier_slug,
    create_classifier,
    load_weights_into,
    logits_of,
)
from fersnet_ray.finetune.loop import FinetuneConfig, FinetuneState, finetune_epoch
from fersnet_ray.report.job import paired
from fersnet_ray.train.config import make_experiment

GREY_48 = ClassifierInput(channels=1, num_classes=7, size=48)


class Tiny(nn.Module):
    """A user's own classifier: (N, C, S, S) → (N, classes)."""

    def __init__(self, channels: int = 1, classes: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def scripted(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buf)
    return buf.getvalue()


BUILT_HERE = [n for n in CLASSIFIERS if n not in (TIMM, TORCHSCRIPT, "fersnet")]


@pytest.mark.parametrize("name", BUILT_HERE)
@pytest.mark.parametrize("inp", [ClassifierInput(1, 7, 32), ClassifierInput(3, 6, 24)], ids=["grey32", "rgb24"])
def test_every_registered_classifier_takes_the_faces_and_learns(name, inp):
    torch.manual_seed(0)
    model = create_classifier(name, inp)
    check_classifier(model, name, inp)  # (2, C, S, S) → (2, E), else a ClassifierError
    x, y = torch.rand(8, inp.channels, inp.size, inp.size) * 2 - 1, torch.arange(8) % inp.num_classes
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss = nn.functional.cross_entropy(logits_of(model(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_fersnet_is_built_from_the_run_model_config():
    exp = make_experiment("tiny")
    inp = FinetuneConfig().classifier_input(exp)
    model = create_classifier("fersnet", inp, model_config=exp.model)
    check_classifier(model, "fersnet", inp)  # its ModelOutput's logits


def test_unknown_names_list_the_choices_and_configs_name_their_folders():
    with pytest.raises(ClassifierError, match=r"unknown classifier 'vgg'; choose one of fersnet, small-cnn, resnet18"):
        create_classifier("vgg", GREY_48)
    with pytest.raises(ValueError, match=r"torchscript:URI"):
        FinetuneConfig(classifier="nope")
    with pytest.raises(ValueError, match="takes no --weights"):
        FinetuneConfig(classifier="fersnet", weights="s3://b/w.pt")
    assert FinetuneConfig().folder == "finetune" and FinetuneConfig(data="real").folder == "finetune-real"
    assert FinetuneConfig(classifier="small-cnn", data="real").folder == "finetune-small-cnn-real"
    assert FinetuneConfig(classifier="small-cnn").folder == "finetune-small-cnn"
    assert FinetuneConfig(classifier="resnet18", min_score=0.5).folder == "finetune-resnet18-fes-da@0.5"
    assert classifier_slug("torchscript:s3://b/models/my net.pt") == "torchscript-my_net"
    assert FinetuneConfig(classifier="small-cnn").report_key("fersnet") == "small-cnn+fes-da"
    assert FinetuneConfig(data="real").report_key("fersnet") == "fersnet+real-only"
    # Each classifier's default schedule: a trained FERSNet is nudged, the others trained from scratch.
    assert FinetuneConfig.for_classifier("small-cnn", lr=None).lr == 1e-3
    assert FinetuneConfig.for_classifier("fersnet").lr == 1e-4
    assert FinetuneConfig.for_classifier("small-cnn", lr=3e-4).lr_min == 1e-5


def test_imagenet_rgb_resnet_weights_load_into_the_greyscale_face_resnet():
    torch.manual_seed(0)
    imagenet = ResNet((2, 2, 2, 2), ClassifierInput(3, 1000, 224)).state_dict()  # torchvision's names and shapes
    wrapped = {"state_dict": {f"module.{k}": v for k, v in imagenet.items()}}  # as DDP checkpoints store it
    model = create_classifier("resnet18", GREY_48)
    load_weights_into(model, "resnet18", wrapped)
    own = model.state_dict()
    assert torch.equal(own["conv1.weight"], imagenet["conv1.weight"].sum(1, keepdim=True))  # RGB summed to grey
    assert torch.equal(own["layer4.1.bn2.running_var"], imagenet["layer4.1.bn2.running_var"])
    assert own["fc.weight"].shape == (7, 512)  # 1000 classes → a fresh 7-expression head
    assert isinstance(model.maxpool, nn.Identity)  # 48 < 112: no stem max-pool, 48 → 24 → 3×3 at layer4
    check_classifier(model, "resnet18", GREY_48)

    small = create_classifier("small-cnn", GREY_48).state_dict()
    with pytest.raises(ClassifierError, match=r"--weights: no 'conv1.weight' in the weights for classifier resnet18"):
        load_weights_into(create_classifier("resnet18", GREY_48), "resnet18", small)
    resnet34 = create_classifier("resnet34", GREY_48).state_dict()
    with pytest.raises(ClassifierError, match=r"weight\(s\) classifier resnet18 does not have, e\.g\. 'layer1\.2"):
        load_weights_into(create_classifier("resnet18", GREY_48), "resnet18", resnet34)


def test_a_torchscript_model_is_checked_for_what_it_returns_and_takes():
    good = create_classifier(f"{TORCHSCRIPT}s3://b/tiny.pt", GREY_48, source=scripted(Tiny()))
    check_classifier(good, "torchscript:tiny.pt", GREY_48)
    wrong_classes = create_classifier(f"{TORCHSCRIPT}x.pt", GREY_48, source=scripted(Tiny(classes=3)))
    returned = r"returned a tensor of shape \(2, 3\) for a \(2, 1, 48, 48\) input; it must return logits \(N, 7\)"
    with pytest.raises(ClassifierError, match=returned):
        check_classifier(wrong_classes, "torchscript:x.pt", GREY_48)
    rgb_only = create_classifier(f"{TORCHSCRIPT}x.pt", GREY_48, source=scripted(Tiny(channels=3)))
    cannot = r"cannot take the data set's faces \(2, 1, 48, 48\) \(channels 1, 48×48\)"
    with pytest.raises(ClassifierError, match=cannot):
        check_classifier(rgb_only, "torchscript:x.pt", GREY_48)
    with pytest.raises(ClassifierError, match="is not a TorchScript model"):
        create_classifier(f"{TORCHSCRIPT}x.pt", GREY_48, source=b"not a zip")


def test_timm_names_are_refused_clearly_when_timm_does_not_import():
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001 - torchvision beside a foreign torch build fails with a RuntimeError
        with pytest.raises(ClassifierError, match="classifier timm:resnet18 needs timm"):
            create_classifier("timm:resnet18", GREY_48)
    else:
        model = create_classifier("timm:resnet18", GREY_48)
        check_classifier(model, "timm:resnet18", GREY_48)


@pytest.mark.parametrize("name", ["small-cnn", "resnet18"])
def test_finetune_state_trains_any_classifier_and_resumes(name):
    exp = make_experiment("tiny")  # 36 → 32 crop, greyscale
    cfg = FinetuneConfig.for_classifier(name, epochs=3, batch_size=8)
    torch.manual_seed(0)
    batches = [
        {"image": torch.randint(0, 255, (8, 1, 36, 36), dtype=torch.uint8), "label": torch.arange(8) % 7}
        for _ in range(2)
    ]
    state = FinetuneState.create(exp, cfg, None)
    first = finetune_epoch(state, batches)
    saved = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.model.state_dict().items()}
    snapshot = state.state_dict()
    assert snapshot["classifier"] == name and first["images"] == 16
    resumed = FinetuneState.create(exp, cfg, None)
    resumed.load_state_dict({**snapshot, "model": saved})
    assert resumed.epoch == 1 and all(torch.equal(resumed.model.state_dict()[k], v) for k, v in saved.items())


def test_report_pairs_each_classifier_with_its_own_control():
    def row(key, accs):
        return {"key": key, "per_fold": dict(enumerate(accs))}

    rows = [
        row("fersnet", [0.5, 0.6]),
        row("fersnet+fes-da", [0.6, 0.6]),
        row("small-cnn+fes-da", [0.7, 0.8]),
        row("small-cnn+real-only", [0.6, 0.8]),
        row("resnet18+fes-da", [0.5, 0.4]),
        row("resnet18+real-only", [0.6, 0.5]),
        row("torchscript-mine+real-only", [0.6, 0.5]),  # no pair without its real + synthetic row
    ]
    pairs = {(p["row"], p["baseline"]): p for p in paired(rows)}
    small = pairs[("small-cnn+fes-da", "small-cnn+real-only")]
    assert small["folds"] == 2 and small["improved"] == 1 and small["tied"] == 1
    assert small["mean_diff"] == pytest.approx(0.05)
    assert pairs[("resnet18+fes-da", "resnet18+real-only")]["worse"] == 2
    assert ("fersnet+fes-da", "fersnet") in pairs and len(pairs) == 3


def test_report_pairs_fersnets_filtered_and_weighted_rows_with_the_control_and_names_them():
    from fersnet_ray.report.job import _row_title

    def row(key, accs):
        return {"key": key, "per_fold": dict(enumerate(accs))}

    rows = [
        row("fersnet", [0.5, 0.6]),
        row("fersnet+fes-da", [0.6, 0.6]),
        row("fersnet+fes-da@0.5", [0.7, 0.6]),
        row("fersnet+fes-da-wscore", [0.8, 0.5]),
        row("fersnet+real-only", [0.6, 0.6]),
    ]
    pairs = {(p["row"], p["baseline"]): p for p in paired(rows)}
    assert pairs[("fersnet+fes-da@0.5", "fersnet+real-only")]["improved"] == 1
    assert pairs[("fersnet+fes-da-wscore", "fersnet+real-only")]["mean_diff"] == pytest.approx(0.05)
    assert "synthetic rows weighted their score" in pairs[("fersnet+fes-da-wscore", "fersnet+real-only")]["what"]
    assert len(pairs) == 4  # and FES-DA against fersnet and against the control
    assert _row_title("fersnet+fes-da@0.5") == "FERSNet w/ FES-DA, synthetic rows scored ≥ 0.5"
    assert _row_title("fersnet+fes-da@0.5-w0.25xscore") == (
        "FERSNet w/ FES-DA, synthetic rows scored ≥ 0.5, synthetic rows weighted 0.25 × their score"
    )
    assert _row_title("small-cnn+fes-da-w0.5") == "small-cnn on real + synthetic faces, synthetic rows weighted 0.5"
    assert _row_title("small-cnn+fes-da") == "small-cnn on real + synthetic faces"
    # an ablation run's own fine-tunings are named and paired as its own, not as FERSNet's FES-DA
    assert (
        _row_title("fersnet_hard+real-only")
        == "FERSNet w/o ConvFLU (fersnet_hard) fine-tuned on real faces only (control)"
    )
    assert _row_title("fer_only+fes-da") == "FERSNet w/o MTL (fer_only) w/ FES-DA"
    hard = [{"key": k, "per_fold": {0: 0.9}} for k in ("fersnet_hard", "fersnet_hard+fes-da", "fersnet_hard+real-only")]
    (pair,) = paired(hard)
    assert (pair["row"], pair["baseline"]) == ("fersnet_hard+fes-da", "fersnet_hard+real-only")
    assert pair["what"] == "fersnet_hard: FES-DA against the control" and pair["tied"] == 1


def test_paired_comparisons_carry_a_confidence_interval_and_a_sign_test():
    def row(key, accs):
        return {"key": key, "per_fold": dict(enumerate(accs))}

    # differences 0.01, 0.02, 0.03, 0.04: mean 0.025, std 0.0129, t(3, 0.975) = 3.182
    rows = [row("fer_only", [0.5, 0.5, 0.5, 0.5]), row("fersnet", [0.51, 0.52, 0.53, 0.54])]
    (p,) = paired(rows)
    half = 3.1824 * np.std([0.01, 0.02, 0.03, 0.04], ddof=1) / 2
    assert p["ci95"] == pytest.approx([0.025 - half, 0.025 + half], abs=1e-4)
    assert p["p_sign"] == pytest.approx(0.125)  # 4 of 4 improved: 2 × (1/2)^4
    # ten folds, 2 improved, 8 worse, 0 tied: 2 × P(X ≤ 2 | n = 10) = 2 × 56/1024; the CI spans 0 here
    rows = [row("fer_only", [0.5] * 10), row("fersnet", [0.6, 0.6] + [0.49] * 8)]
    (p,) = paired(rows)
    assert p["p_sign"] == pytest.approx(112 / 1024)
    assert p["ci95"][0] < 0 < p["ci95"][1]
    # one fold: nothing to test, said as None rather than a number
    (p,) = paired([row("fer_only", [0.5]), row("fersnet", [0.6])])
    assert p["ci95"] is None and p["p_sign"] is None


def test_the_same_k_over_n_is_a_tie_however_it_was_computed():
    import torch

    from fersnet_ray.report.job import RECOGNIZER

    # 87 of 99 as the training loop stores it, and as a float32 mean (the Table V recogniser's accuracy in
    # stores written before it was exact): 4e-9 apart, which counted a tie as a win (README, session 18).
    exact, f32 = 87 / 99, float(torch.tensor([1.0] * 87 + [0.0] * 12).mean())
    assert exact != f32
    rows = [{"key": RECOGNIZER, "per_fold": {0: f32, 1: 0.5}}, {"key": "fersnet", "per_fold": {0: exact, 1: 0.6}}]
    (p,) = paired(rows, (("fersnet", RECOGNIZER, "against the small CNN"),))
    assert (p["improved"], p["tied"], p["worse"]) == (1, 1, 0)


def test_rows_read_back_from_report_json_pair_with_the_stores_and_a_non_number_is_named():
    from fersnet_ray.report.job import pool_pairs, pool_rows

    # A report.json's folds are str keys (JSON), the store's are ints: they still pair, on every fold.
    rows = [{"key": "fer_only", "per_fold": {"0": 0.5, "1": 0.5}}, {"key": "fersnet", "per_fold": {0: 0.6, 1: 0.4}}]
    (p,) = paired(rows)
    assert p["folds"] == 2 and (p["improved"], p["tied"], p["worse"]) == (1, 0, 1)
    per_key = {"fer_only": {"s0": {"0": 0.5}, "s1": {0: 0.7}}, "fersnet": {"s0": {0: 0.6}, "s1": {"0": 0.6}}}
    (pooled,) = pool_pairs(per_key, (("fersnet", "fer_only", "mtl"),))
    assert pooled["seeds_per_fold"] == {0: 2} and pooled["mean_diff"] == pytest.approx(0.0)
    assert pool_rows(per_key)[0]["per_fold"] == {0: pytest.approx(0.6)}
    # NaN would be neither better, tied nor worse: the fold would drop out of the counts without a word.
    rows[1]["per_fold"][1] = float("nan")
    with pytest.raises(ValueError, match=r"row 'fersnet', fold 1: accuracy nan is not a number"):
        paired(rows)


def test_recognizer_accuracy_is_exactly_k_over_n():
    from fersnet_ray.synth.recognizer import Recognizer, RecognizerConfig, accuracy_against, recognizer_logits

    torch.manual_seed(0)
    model = Recognizer(RecognizerConfig(in_channels=1, num_classes=7)).eval()
    images = torch.randint(0, 256, (99, 1, 36, 36), dtype=torch.uint8)
    pred = recognizer_logits(model, images, 32).argmax(dim=1)
    targets = torch.where(torch.arange(99) < 87, pred, (pred + 1) % 7)  # 87 of 99 right
    assert accuracy_against(model, images, targets, 32) == 87 / 99


def test_bench_table_shows_the_paired_interval_and_sign_test():
    from fersnet_ray.finetune.bench import bench_table

    real = {"per_fold": {0: 0.5, 1: 0.5, 2: 0.5}, "mean": 0.5, "std": 0.0}
    both = {"per_fold": {0: 0.6, 1: 0.7, 2: 0.8}, "mean": 0.7, "std": 0.1}
    rows = [{"key": "small-cnn+real-only", **real}, {"key": "small-cnn+fes-da", **both}]
    (pair,) = paired(rows)
    walls = {"real": 1.0, "real+synthetic": 2.0}
    result = {"classifier": "small-cnn", "real": real, "real+synthetic": both, "paired": pair, "wall_s": walls}
    last = bench_table(result).splitlines()[-1]  # differences 0.1, 0.2, 0.3: t(2, 0.975) = 4.303
    assert "+20.00 ± 10.00 (95% CI -4.84 to +44.84)" in last
    assert "improved 3 / tied 0 / worse 0, sign test p 0.250" in last  # 2 × (1/2)^3
