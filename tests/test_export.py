"""`fersnet export`: a trained demo fold (s3:// store on moto) as TorchScript, safetensors and ONNX.

Each exported file is loaded back here as a user would (torch.jit.load, safetensors into a fresh
Recognizer, onnxruntime), fed face-table faces preprocessed by the card's own steps, and must give
the PyTorch model's logits within the card's tolerance, and `evaluate`'s predictions. The same for a
small-cnn fine-tuned with `fersnet finetune --classifier small-cnn --data real` (its safetensors file
rebuilt by the card's recipe), and, without Ray, for every registry classifier.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pyarrow.compute as pc
import pytest
import torch
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.store import Store
from fersnet_ray.table import read_faces
from fersnet_ray.train.data import center_crop, decode_faces

runner = CliRunner()
HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def _held_out(store: Store, fold: int = 0):
    t = read_faces(store, "demo", columns=["face_id", "image", "fold"])
    return t.filter(pc.equal(t["fold"], fold)).to_pydict()


def _by_hand(store: Store, card: dict, evaluation: str):
    """Fold 0's held-out faces prepared as the card says (face-table PNGs -> load_size -> crop -> [-1, 1]),
    and the predictions `evaluation` (an evaluation.json path) recorded for them: (x (N, C, S, S), expected (N,))."""
    prep = card["preprocessing"]
    faces = _held_out(store)
    x = center_crop(decode_faces(faces["image"], prep["load_size"]), prep["crop_size"]).float() / 127.5 - 1
    predictions = store.read_json(evaluation)["predictions"]
    return x, torch.tensor([predictions[f] for f in faces["face_id"]])


def test_exported_files_reproduce_the_pytorch_logits(trained_run, s3_bucket, tmp_path):
    uri, _ = trained_run
    store = Store.from_uri(uri)
    formats = ["torchscript", "safetensors"] + (["onnx"] if HAVE_ONNX else [])
    out = f"{s3_bucket}/export/r-fold0"
    args = ["export", "--store", uri, "--run", "r", "--fold", "0", "--format", ",".join(formats), "--out", out]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    local = tmp_path / "export"
    store.fs.get(out[len("s3://") :], str(local), recursive=True)

    card = json.loads((local / "fersnet-card.json").read_text())
    meta = json.loads(store.read_bytes(f"{store.run('r').fold(0)}/checkpoint-epoch-0004/meta.json"))
    assert card["source"]["sha256"] == meta["sha256"] and card["source"]["stage"] == "train"
    assert card["source"]["checkpoint"] == f"{uri}/runs/r/fold-0/checkpoint-epoch-0004"
    assert card["classes"][:2] == ["anger", "contempt"] and card["channels"] == 1 and card["input_size"] == 32
    assert card["experiment"]["model"]["variant"] == "fersnet" and card["experiment"]["train"]["load_size"] == 36
    assert set(card["files"]) == set(formats)
    for check in card["checks"].values():
        assert check["within_tolerance"] and check["faces"] == 42 and check["same_argmax"] == 1.0

    # The card's preprocessing, followed by hand: face-table PNGs (aligned_size) -> load_size -> crop -> [-1, 1].
    x, expected = _by_hand(store, card, f"{store.run('r').fold(0)}/evaluation.json")

    ts = torch.jit.load(str(local / "model.torchscript.pt"))
    with torch.no_grad():
        reference = ts(x)  # (42, 7)
    assert torch.equal(reference.argmax(1), expected)  # the exported model is the evaluated one

    from safetensors.torch import load_file

    from fersnet_ray.model import ModelConfig
    from fersnet_ray.use.recognizer import Recognizer

    rec = Recognizer(ModelConfig(**card["experiment"]["model"])).eval()
    rec.net.load_state_dict(load_file(str(local / "model.safetensors")))  # strict: exactly the recognition path
    with torch.no_grad():
        tol = card["checks"]["safetensors"]["tolerance"]
        assert torch.allclose(rec(x), reference, atol=tol["atol"], rtol=tol["rtol"])

    if HAVE_ONNX:
        import onnxruntime as ort

        session = ort.InferenceSession(str(local / "model.onnx"), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {"images": x[:5].numpy()})[0])  # another batch size
        tol = card["checks"]["onnx"]["tolerance"]
        assert torch.allclose(logits, reference[:5], atol=tol["atol"], rtol=tol["rtol"])

    again = runner.invoke(app, args)  # files there are refused, named
    assert again.exit_code == 1 and "already holds model.torchscript.pt" in again.output
    assert "pass --overwrite" in again.output


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "run 'r' has trained folds 0, 1 and no finished final model: pass --fold k"),
        (["--fold", "final"], "run 'r' has no final model: no fine-tuned model in"),
        (["--fold", "5"], "face table 'demo' has folds 0..2; no fold 5"),
        (["--fold", "2"], "run 'r' fold 2 has no finished checkpoint"),
        (["--fold", "0", "--format", "pickle"], "--format 'pickle': use one or more of torchscript, safetensors, onnx"),
    ],
)
def test_bad_exports_are_one_error_line(trained_run, tmp_path, extra, message):
    uri, _ = trained_run
    res = runner.invoke(app, ["export", "--store", uri, "--run", "r", "--out", str(tmp_path / "x")] + extra)
    assert res.exit_code == 1 and res.output.startswith("error: ") and message in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_missing_onnx_dependency_names_the_extra(trained_run, tmp_path, monkeypatch):
    uri, _ = trained_run
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed: import fails
    args = ["export", "--store", uri, "--run", "r", "--fold", "0", "--format", "onnx", "--out", str(tmp_path / "x")]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "--format onnx needs onnxruntime: install the extra with pip install 'fersnet-ray[onnx]'" in res.output


# --- a classifier fine-tuned with `fersnet finetune --classifier small-cnn --data real` (conftest.small_cnn_run) ---


def test_a_fine_tuned_small_cnn_exports_with_its_backbone_named(small_cnn_run, tmp_path):
    uri = small_cnn_run
    store = Store.from_uri(uri)
    formats = ["torchscript", "safetensors"] + (["onnx"] if HAVE_ONNX else [])
    out = tmp_path / "export"
    args = ["export", "--store", uri, "--run", "r", "--classifier", "small-cnn", "--data", "real"]
    res = runner.invoke(app, args + ["--format", ",".join(formats), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "r fold 0 small-cnn (fine-tuned on real, epoch 1" in res.output  # no --fold: the classifier's only fold

    card = json.loads((out / "fersnet-card.json").read_text())
    folder = f"{store.run('r').dir}/finetune-small-cnn-real/fold-0"
    meta = json.loads(store.read_bytes(f"{folder}/checkpoint-epoch-0001/meta.json"))
    assert card["source"]["checkpoint"] == f"{uri}/runs/r/finetune-small-cnn-real/fold-0/checkpoint-epoch-0001"
    assert card["source"]["sha256"] == meta["sha256"] and card["source"]["stage"] == "finetune"
    net = card["backbone"]
    assert (net["classifier"], net["registry"], net["model"]) == ("small-cnn", "small-cnn", None)
    assert net["fine_tuned_on"] == "real"
    assert net["input"] == {"channels": 1, "num_classes": 7, "size": 32} and card["variant"] is None
    assert card["finetune"]["classifier"] == "small-cnn" and card["finetune"]["data"] == "real"
    assert set(card["files"]) == set(formats)
    for check in card["checks"].values():
        assert check["within_tolerance"] and check["faces"] == 42 and check["same_argmax"] == 1.0

    # The card's preprocessing by hand, then each file as a user loads it: the evaluated model's predictions.
    x, expected = _by_hand(store, card, f"{folder}/evaluation.json")
    with torch.no_grad():
        reference = torch.jit.load(str(out / "model.torchscript.pt"))(x)  # (42, 7)
    assert torch.equal(reference.argmax(1), expected)

    from safetensors.torch import load_file

    scope = {}
    exec(net["rebuild"]["standalone"], scope)  # noqa: S102 - the card's recipe without fersnet-ray: plain torch
    model = scope["model"].eval()
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    tol = card["checks"]["safetensors"]["tolerance"]
    with torch.no_grad():
        assert torch.allclose(model(x), reference, atol=tol["atol"], rtol=tol["rtol"])

    if HAVE_ONNX:
        import onnxruntime as ort

        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {"images": x[:5].numpy()})[0])  # another batch size
        assert torch.allclose(logits, reference[:5], atol=tol["atol"], rtol=tol["rtol"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--classifier", "resnet18"],
            (
                "run 'r' has no resnet18 fine-tuned on real + synthetic faces: s3://small-cnn/fer/runs/r/finetune-resnet18/"
                " is missing; run `fersnet finetune --run r --classifier resnet18` first"
            ),
        ),
        (["--classifier", "small-cnn"], "s3://small-cnn/fer/runs/r/finetune-small-cnn/ is missing"),
        (
            ["--classifier", "small-cnn", "--data", "real", "--fold", "1"],
            (
                "run 'r' fold 1 has no finished fine-tuned small-cnn checkpoint (nothing complete in "
                "s3://small-cnn/fer/runs/r/finetune-small-cnn-real/fold-1/); "
                "run `fersnet finetune --run r --folds 1 --classifier small-cnn --data real`"
            ),
        ),
        (["--classifier", "small-cnn", "--data", "real", "--checkpoint", "train"], "small-cnn has no training stage"),
        (["--classifier", "vgg"], "unknown classifier 'vgg'; choose one of fersnet, small-cnn"),
        (["--classifier", "small-cnn", "--data", "fake"], "--data 'fake': use one of real+synthetic, real"),
    ],
)
def test_classifiers_never_fine_tuned_are_one_error_line(small_cnn_run, tmp_path, extra, message):
    res = runner.invoke(app, ["export", "--store", small_cnn_run, "--run", "r", "--out", str(tmp_path / "x")] + extra)
    assert res.exit_code == 1 and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert message in res.output, res.output
    assert not (tmp_path / "x").exists()


# --- every registry classifier, in plain PyTorch (no Ray): exported, loaded back, rebuilt from the card ---


def _scripted_file(path) -> str:
    from torch import nn

    class Mine(nn.Module):  # a user's own classifier: (N, 1, S, S) -> (N, 7)
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    torch.jit.save(torch.jit.script(Mine()), str(path))
    return f"torchscript:{path}"


@pytest.mark.parametrize("name", ["fersnet", "small-cnn", "resnet18", "torchscript"])
def test_every_classifier_exports_and_its_card_recipe_rebuilds_it(name, tmp_path):
    """What `export` does per format, and what the card's `backbone.rebuild` tells a user, for each registry entry:
    the recipe's code (with fersnet-ray, and standalone where its packages import) builds an architecture the
    safetensors file loads into strictly, with the same logits."""
    from safetensors.torch import load_file

    from fersnet_ray.finetune.classifiers import ClassifierInput, rebuild_recipe
    from fersnet_ray.train.config import make_experiment
    from fersnet_ray.use.export import compare, run_exported, write_format
    from fersnet_ray.use.recognizer import build_recognizer

    exp = make_experiment("tiny")
    classifier = _scripted_file(tmp_path / "mine.pt") if name == "torchscript" else name
    torch.manual_seed(0)
    rec = build_recognizer(classifier, exp).eval()  # (N, 1, 32, 32) -> (N, 7)
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        reference = rec(x)
    formats = ["torchscript", "safetensors"] + (["onnx"] if HAVE_ONNX and name == "torchscript" else [])
    for fmt in formats:  # ONNX of a ScriptModule goes through the TorchScript-based exporter
        path = str(tmp_path / f"model.{fmt}")
        write_format(fmt, rec, x[:2], path, {"classes": []})
        check = compare(reference, run_exported(fmt, path, x, lambda: build_recognizer(classifier, exp)))
        assert check["within_tolerance"], (fmt, check)

    recipe = rebuild_recipe(classifier, ClassifierInput(1, 7, 32))
    card = {"experiment": exp.to_dict()}  # the fersnet recipe reads the card's model config
    snippets = [recipe["fersnet_ray"]]
    if recipe["standalone"] and all(importlib.util.find_spec(m) for m in recipe["standalone_needs"]):
        snippets.append(recipe["standalone"])  # resnet18's needs torchvision, not a dependency: skipped without it
    assert (recipe["standalone"] is None) == (name == "fersnet")  # only FERSNet has no standalone recipe
    assert len(snippets) == 2 or name in ("fersnet", "resnet18")
    for code in snippets:
        scope = {"card": card}
        exec(code, scope)  # noqa: S102 - the card's own instructions, run as a user would
        model = scope["model"].eval()
        model.load_state_dict(load_file(str(tmp_path / "model.safetensors")))  # strict
        with torch.no_grad():
            out = model(x)
        assert torch.allclose(getattr(out, "logits", out), reference, atol=1e-5), code
