"""`fersnet export`: a trained demo fold (s3:// store on moto) as TorchScript, safetensors and ONNX.

Each exported file is loaded back here as a user would (torch.jit.load, safetensors into a fresh
Recognizer, onnxruntime), fed face-table faces preprocessed by the card's own steps, and must give
the PyTorch model's logits within the card's tolerance, and `evaluate`'s predictions.
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
    meta = json.loads(store.read_bytes(f"{store.fold_dir('r', 0)}/checkpoint-epoch-0004/meta.json"))
    assert card["source"]["sha256"] == meta["sha256"] and card["source"]["stage"] == "train"
    assert card["source"]["checkpoint"] == f"{uri}/runs/r/fold-0/checkpoint-epoch-0004"
    assert card["classes"][:2] == ["anger", "contempt"] and card["channels"] == 1 and card["input_size"] == 32
    assert card["experiment"]["model"]["variant"] == "fersnet" and card["experiment"]["train"]["load_size"] == 36
    assert set(card["files"]) == set(formats)
    for check in card["checks"].values():
        assert check["within_tolerance"] and check["faces"] == 42 and check["same_argmax"] == 1.0

    # The card's preprocessing, followed by hand: face-table PNGs (aligned_size) -> load_size -> crop -> [-1, 1].
    prep = card["preprocessing"]
    faces = _held_out(store)
    x = center_crop(decode_faces(faces["image"], prep["load_size"]), prep["crop_size"]).float() / 127.5 - 1
    evaluation = store.read_json(f"{store.fold_dir('r', 0)}/evaluation.json")
    expected = torch.tensor([evaluation["predictions"][f] for f in faces["face_id"]])

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
