"""`fersnet predict`: a trained demo run (s3:// store on moto) classifies images on the local Ray.

The held-out faces of fold 0, written out as image files, must get exactly the predictions (and so
the accuracy) `evaluate` recorded for the fold; the ensemble must be the mean of the folds' softmax;
bad files are rejects with reasons; bad arguments are one `error:` line.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.store import Store
from fersnet_ray.table import read_faces
from fersnet_ray.use.checkpoints import UseError, resolve

runner = CliRunner()


def _held_out_folder(store: Store, root: Path, fold: int = 0) -> dict[str, str]:
    """Fold `fold`'s faces as <label_name>/<face_id>.png, plus files that must be rejected or converted.

    Returns face_id -> relative path of the labelled faces.
    """
    table = read_faces(store, "demo", columns=["face_id", "label_name", "image", "fold"])
    table = table.filter(pc.equal(table["fold"], fold)).to_pydict()
    paths = {}
    for fid, name, png in zip(table["face_id"], table["label_name"], table["image"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"{fid}.png").write_bytes(png)
        paths[fid] = f"{name}/{fid}.png"
    extra = root / "unsorted"  # not a class folder: classified, but not counted in the accuracy
    extra.mkdir()
    Image.open(io.BytesIO(table["image"][0])).convert("RGBA").save(extra / "rgba.png")  # converted to L
    (extra / "truncated.png").write_bytes(table["image"][0][:60])
    (extra / "empty.jpg").write_bytes(b"")
    (extra / "notes.txt").write_text("not an image")
    return paths


def _read_output(store: Store, uri: str):
    path = uri.removeprefix("s3://")
    with store.fs.open(path, "rb") as f:
        data = f.read()
    return pq.read_table(io.BytesIO(data)) if path.endswith(".parquet") else pacsv.read_csv(io.BytesIO(data))


def test_predict_on_held_out_faces_gives_evaluate_predictions_and_lists_rejects(trained_run, s3_bucket, tmp_path):
    uri, _ = trained_run
    store = Store.from_uri(uri)
    paths = _held_out_folder(store, tmp_path / "src")
    src = f"{s3_bucket}/src"  # images read from S3 too, by the load tasks
    store.fs.put(str(tmp_path / "src"), src[len("s3://") :], recursive=True)
    out = f"{s3_bucket}/preds/fold0.parquet"
    args = ["predict", "--store", uri, "--run", "r", "--fold", "0", "--source", src]
    args += ["--dataset-adapter", "folder", "--out", out, "--batch-size", "16"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output

    evaluation = store.read_json(f"{store.run('r').fold(0)}/evaluation.json")
    table = _read_output(store, out).to_pydict()
    pred = dict(zip(table["path"], table["label"]))
    assert {p for p in pred if not p.startswith("unsorted/")} == set(paths.values())
    assert all(pred[paths[fid]] == y for fid, y in evaluation["predictions"].items())  # face by face
    assert f"accuracy on {len(paths)} labelled images: {100 * evaluation['accuracy']:.2f}%" in res.output
    assert "fold 0: trained (no fine-tuning), epoch 4" in res.output  # which checkpoint, and why
    classes = evaluation["classes"]
    probs = np.array([table[f"prob_{c}"] for c in classes]).T  # (N, E)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert table["label_name"] == [classes[y] for y in table["label"]]
    assert np.allclose(table["probability"], probs.max(1))
    assert "unsorted/rgba.png" in pred and "1 RGBA image(s) converted to L" in res.output

    rejects = _read_output(store, f"{s3_bucket}/preds/fold0.rejects.csv").to_pydict()
    reasons = dict(zip(rejects["path"], rejects["reason"]))
    assert reasons["unsorted/notes.txt"] == "not an image file (by extension)"
    assert reasons["unsorted/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["unsorted/truncated.png"].startswith("truncated or corrupt image")
    assert "3 rejected" in res.output

    again = runner.invoke(app, args)  # an existing output is refused, naming it
    assert again.exit_code == 1 and f"{out} exists; pass --overwrite" in again.output, again.output


def test_predict_with_a_fine_tuned_small_cnn_gives_its_evaluation(small_cnn_run, tmp_path):
    """`--classifier small-cnn --data real`: the classifier `fersnet finetune` made (conftest.small_cnn_run), on its
    fold's held-out faces, gives the predictions and accuracy its evaluation recorded."""
    uri = small_cnn_run
    store = Store.from_uri(uri)
    paths = _held_out_folder(store, tmp_path / "src")
    out = tmp_path / "preds.parquet"
    base = ["predict", "--store", uri, "--run", "r", "--source", str(tmp_path / "src"), "--out", str(out)]
    res = runner.invoke(
        app, base + ["--classifier", "small-cnn", "--data", "real", "--dataset-adapter", "folder", "--batch-size", "16"]
    )
    assert res.exit_code == 0, res.output

    evaluation = store.read_json(f"{store.run('r').dir}/finetune-small-cnn-real/fold-0/evaluation.json")
    table = pq.read_table(out).to_pydict()
    pred = dict(zip(table["path"], table["label"]))
    assert all(pred[paths[fid]] == y for fid, y in evaluation["predictions"].items())  # face by face
    assert f"accuracy on {len(paths)} labelled images: {100 * evaluation['accuracy']:.2f}%" in res.output
    assert "ensemble of 1 fold(s) (no --fold given, no final model)" in res.output  # small-cnn's fine-tuned folds
    assert "fold 0: small-cnn fine-tuned on real faces only, epoch 1" in res.output

    missing = runner.invoke(app, base + ["--classifier", "resnet18", "--data", "real", "--overwrite"])
    assert missing.exit_code == 1 and missing.output.startswith("error: ") and missing.output.count("\n") == 1
    message = "run 'r' has no resnet18 fine-tuned on real faces only: s3://small-cnn/fer/runs/r/finetune-resnet18-real/"
    assert f"{message} is missing" in missing.output, missing.output


def test_ensemble_is_the_mean_of_the_folds_probabilities(trained_run, tmp_path):
    from fersnet_ray.train.data import decode_faces
    from fersnet_ray.use.predict import classify
    from fersnet_ray.use.recognizer import load_recognizer

    uri, _ = trained_run
    store = Store.from_uri(uri)
    table = read_faces(store, "demo", columns=["face_id", "image"]).slice(0, 20).to_pydict()
    (tmp_path / "src" / "a" / "b").mkdir(parents=True)  # images: any depth, no labels
    for fid, png in zip(table["face_id"], table["image"]):
        (tmp_path / "src" / "a" / "b" / f"{fid}.png").write_bytes(png)
    out = tmp_path / "out" / "ensemble.csv"
    args = ["predict", "--store", uri, "--run", "r", "--ensemble", "--source", str(tmp_path / "src"), "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "ensemble of 2 fold(s) (--ensemble)" in res.output

    # The same mean computed with plain PyTorch, model by model.
    loaded = [load_recognizer(store, resolve(store, "r", f)) for f in (0, 1)]
    prep = loaded[0][1]
    faces = decode_faces(table["image"], prep.load_size)
    each = [classify([rec], faces, prep) for rec, _, _ in loaded]  # (N, E) each
    expected = (each[0] + each[1]) / 2
    assert not torch.allclose(each[0], each[1], atol=1e-4)  # two different models, or the test proves nothing

    csv = pacsv.read_csv(out).to_pydict()
    classes = loaded[0][2].model.num_classes
    got = torch.tensor(np.array([v for k, v in csv.items() if k.startswith("prob_")]).T, dtype=torch.float32)
    assert got.shape == (20, classes) and "true_label" not in csv
    order = [f"a/b/{fid}.png" for fid in table["face_id"]]
    idx = [csv["path"].index(p) for p in order]
    assert torch.allclose(got[idx], expected, atol=1e-5)
    assert json.loads(json.dumps(csv["label"])) == [int(y) for y in got.argmax(1)]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fold", "7"], "face table 'demo' has folds 0..2; no fold 7"),
        (["--fold", "2"], "run 'r' fold 2 has no finished checkpoint"),
        (["--fold", "0", "--checkpoint", "finetune"], "run 'r' fold 0 has no finished fine-tuned checkpoint"),
        (["--fold", "0", "--ensemble"], "--fold and --ensemble exclude each other"),
        (["--fold", "final"], "run 'r' has no final model: no fine-tuned model in s3://trained/fer/runs/r/finetune/final/"),
        (["--fold", "last"], "fold 'last': use a fold number (0, 1, …) or 'final'"),
        (["--run", "nope"], "no run 'nope' in s3://trained/fer (s3://trained/fer/runs/nope/config.json is missing)"),
    ],
)
def test_bad_arguments_are_one_error_line(trained_run, tmp_path, extra, message):
    uri, _ = trained_run
    (tmp_path / "src").mkdir()
    args = [
        "predict",
        "--store",
        uri,
        "--run",
        "r",
        "--source",
        str(tmp_path / "src"),
        "--out",
        str(tmp_path / "o.csv"),
    ]
    res = runner.invoke(app, args + extra)
    assert res.exit_code == 1
    assert res.output.startswith("error: ") and message in res.output, res.output
    assert "Traceback" not in res.output


def test_bad_output_names_and_empty_sources_are_errors(trained_run, tmp_path):
    uri, _ = trained_run
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("x")
    base = ["predict", "--store", uri, "--run", "r", "--fold", "0", "--source", str(tmp_path / "src")]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "o.json")])
    assert res.exit_code == 1 and "name a .parquet or .csv file" in res.output
    res = runner.invoke(app, base + ["--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1
    assert "no image to classify" in res.output and "notes.txt: not an image file (by extension)" in res.output
    res = runner.invoke(app, base[:-1] + [str(tmp_path / "missing"), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1 and "does not exist" in res.output


def test_load_images_converts_modes_and_rejects_without_ray(tmp_path):
    """The load stage alone: 16-bit, RGB and palette images become the model's L faces; bad files are rejects."""
    from builders import face, save, write_16bit

    from fersnet_ray.use.inputs import ImageSource
    from fersnet_ray.use.predict import load_images
    from fersnet_ray.use.recognizer import Preprocessing

    save(tmp_path / "rgb.jpg", face(0, 1, 0, 80).convert("RGB"))
    save(tmp_path / "p.png", face(0, 2, 0, 50).convert("P"))
    write_16bit(tmp_path / "deep.png")
    save(tmp_path / "tiny.png", Image.new("L", (5, 5)))
    source = ImageSource(str(tmp_path), "images")
    listing = source.list_images(["a", "b", "c"])
    prep = Preprocessing("none", 40, 1, 36, 32)
    out = load_images({"path": listing.paths, "label": listing.labels}, source, prep, "none")
    by = {p: i for i, p in enumerate(out["path"])}
    assert out["image"].shape == (4, 1, 36, 36) and out["image"].dtype == np.uint8
    assert out["converted"][by["rgb.jpg"]] == "RGB" and out["converted"][by["p.png"]] == "P"
    assert out["converted"][by["deep.png"]] == "I;16" and out["reject"][by["deep.png"]] == ""
    assert out["reject"][by["tiny.png"]] == "image too small (5×5)"
    assert out["image"][by["rgb.jpg"]].any()


def test_without_a_final_model_the_default_is_the_ensemble_and_says_so(trained_run):
    """No --fold, no --ensemble, no final model: every fold averaged, with a note naming what is missing."""
    from fersnet_ray.use.predict import PredictJob, choose_models

    uri, _ = trained_run
    refs, how, notes = choose_models(Store.from_uri(uri), PredictJob(store=uri, run="r", source="-", out="o.csv"))
    assert [r.fold for r in refs] == [0, 1] and how.startswith("ensemble of 2 fold(s) (no --fold given, no final")
    assert notes == [
        "run 'r' has no finished final model (s3://trained/fer/runs/r/final/): every fold averaged instead; "
        "`fersnet train --run r --folds final` trains one on every subject"
    ]


def test_fine_tuned_checkpoint_is_preferred_when_finished(trained_run, tmp_path):
    """resolve(): the fold's fine-tuned model when it finished, else the trained one; said, never guessed."""
    from fersnet_ray.checkpoint import read_checkpoint, write_checkpoint_dir

    uri, _ = trained_run
    s3 = Store.from_uri(uri)
    local = Store.from_uri(str(tmp_path / "store"))  # a copy of the run's fold 0, to add a fine-tuned model to
    for part in ("datasets/demo", "runs/r/config.json", "runs/r/fold-0"):
        s3.fs.get(s3.path(part), local.path(part), recursive=True)
    state = read_checkpoint(s3, resolve(s3, "r", 0).path)
    ft = local.run("r").fold(0, "finetune")
    local.write_json(local.run("r").config("finetune"), {"finetune": {"epochs": 1}})
    Path(ft, "checkpoint-epoch-0001").mkdir(parents=True)
    write_checkpoint_dir({**state, "epoch": 1}, f"{ft}/checkpoint-epoch-0001")

    assert resolve(local, "r", 0).stage == "train"  # no evaluation.json yet: the fine-tuning has not finished
    with pytest.raises(UseError, match="no finished fine-tuned checkpoint"):
        resolve(local, "r", 0, "finetune")
    local.write_json(f"{ft}/evaluation.json", {"accuracy": 0.5})
    ref = resolve(local, "r", 0)
    assert (ref.stage, ref.epoch) == ("finetune", 1) and ref.path.endswith("finetune/fold-0/checkpoint-epoch-0001")
    assert resolve(local, "r", 0, "train").stage == "train"
    assert "fine-tuned (FES-DA), epoch 1" in ref.describe()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
