"""Bad input of every kind: a clear error naming the file or row and the reason, or a reject with its reason.

Never a silent drop, never a traceback as the only message. Plain library calls wherever the code under
test is plain Python (listing, decoding, checkpoints, the face table readers, verify); `ray_local` only for
the CLI commands that start Ray before they fail. The README's reliability table cites these tests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from builders import ckplus_tree, face, png_bytes, save, write_16bit
from fersnet_ray.cli import app
from fersnet_ray.finetune.job import FinetuneError, fold_inputs
from fersnet_ray.prepare.job import load_batch
from fersnet_ray.prepare.sources import SIX_CLASSES, SourceError, create_adapter
from fersnet_ray.store import Store, StoreError
from fersnet_ray.synth.job import MANIFEST, SynthError, _check_foreign_files, plan_shards
from fersnet_ray.synth.quality import load_fold_recognizer
from fersnet_ray.synth.verify import verify_fold
from fersnet_ray.table import CARD_NAME, FACE_SCHEMA, decode_png, encode_png, face_id, read_faces
from fersnet_ray.train.config import make_experiment
from fersnet_ray.train.data import load_fold, load_test
from fersnet_ray.train.identity import load_identity_weights
from fersnet_ray.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint, write_checkpoint_dir
from fersnet_ray.train.job import TrainError, TrainJob, train

runner = CliRunner()
CLASSES = ["anger", "happy", "surprise"]


# --- builders -------------------------------------------------------------------------------------


def rejects(listing) -> dict[str, str]:
    return {r.source: r.reason for r in listing.rejects}


def loaded(adapter, sources: list[str], channels: int = 1, size: int = 32) -> dict:
    """`load_batch` (what each Ray Data loader task runs) on the given source paths: source → reject/image."""
    n = len(sources)
    batch = {
        "face_id": np.array([f"f{i}" for i in range(n)], dtype=object),
        "source": np.array(sources, dtype=object),
        "subject": np.array(["S001"] * n, dtype=object),
        "label": np.zeros(n, dtype=np.int64),
        "sequence": np.array([""] * n, dtype=object),
        "frame": np.full(n, -1),
    }
    out = load_batch(batch, adapter, "none", size, channels)
    return {s: (r, img) for s, r, img in zip(sources, out["reject"], out["image"])}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels and that holds no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def face_table(store: Store, name: str, fold_of_subject: list[int], folds: int, side: int = 16) -> None:
    """A tiny face table written directly (no Ray): each subject shows every class once."""
    img = encode_png(Image.new("L", (side, side), 128))
    rows = [
        dict(
            face_id=face_id(name, f"S{s}/{y}"),
            dataset=name,
            subject=f"S{s}",
            label=y,
            label_name=c,
            sequence="",
            frame=-1,
            source=f"S{s}/{y}.png",
            image=img,
            fold=k,
        )
        for s, k in enumerate(fold_of_subject)
        for y, c in enumerate(CLASSES)
    ]
    folder = store.dataset(name).dir
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=FACE_SCHEMA), f"{folder}/faces-00000.parquet")
    card = {
        "name": name,
        "classes": CLASSES,
        "folds": folds,
        "alignment": {"method": "none", "size": side, "channels": 1},
    }
    store.write_json(f"{folder}/{CARD_NAME}", card)


def checkpoint(folder, state) -> bytes:
    """A checkpoint folder holding `state` (any object torch.save takes) with a matching meta.json SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    (folder / "state.pt").write_bytes(data)
    (folder / "meta.json").write_text(json.dumps({"epoch": 1, "sha256": hashlib.sha256(data).hexdigest()}))
    return data


class Payload:
    """Unpickling this runs code: it creates `marker`. weights_only loading must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


# --- images: odd sizes and modes are converted; bad files become rejects --------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_odd_sizes_and_modes_load_through_the_adapter(tmp_path, channels):
    root = tmp_path / "src" / "happy"
    grey = face(size=64)
    rgba = grey.convert("RGBA")
    rgba.putalpha(100)
    palette = grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    save(root / "S001_001_00000001.png", grey)  # 8-bit greyscale
    write_16bit(root / "S001_001_00000002.png")  # 16-bit greyscale ("I;16"), scaled by its range
    save(root / "S001_001_00000003.png", Image.new("I;16", (40, 40), 1234))  # 16-bit, one value
    save(root / "S001_001_00000004.png", rgba)  # RGBA, composited on black
    save(root / "S001_001_00000005.png", grey.convert("LA"))
    save(root / "S001_001_00000006.png", palette)  # palette with a transparent colour
    save(root / "S001_001_00000007.jpg", grey.convert("CMYK"))
    save(root / "S001_001_00000008.png", grey.convert("1"))
    save(root / "S001_001_00000009.tif", Image.fromarray(np.arange(37 * 91, dtype=np.int32).reshape(91, 37)))
    save(root / "S001_001_00000010.tif", Image.fromarray(np.linspace(0, 1, 91 * 37, dtype=np.float32).reshape(37, 91)))
    save(root / "S001_001_00000011.png", face(size=91).convert("RGB").crop((0, 0, 37, 91)))  # odd, non-square
    save(root / "S001_001_00000012.png", Image.new("L", (8, 8), 50))  # the smallest accepted
    adapter = create_adapter("ckplus48", str(tmp_path / "src"))
    listing = adapter.list()
    assert len(listing.faces) == 12 and listing.rejects == []
    out = loaded(adapter, [f.source for f in listing.faces], channels=channels)
    for source, (reason, image) in out.items():
        assert reason == "", (source, reason)
        arr = decode_png(image)
        assert arr.shape == ((32, 32) if channels == 1 else (32, 32, 3)) and arr.dtype == np.uint8, source
    sixteen = decode_png(out["happy/S001_001_00000002.png"][1])
    assert sixteen.min() < 10 and sixteen.max() > 245  # the 16-bit range is used, not clipped to black or white


def test_bad_image_files_are_rejects_naming_the_file_and_reason(tmp_path):
    good = png_bytes(face(size=64))
    jpeg = io.BytesIO()
    face(size=64).convert("RGB").save(jpeg, format="JPEG")
    save(tmp_path / "img" / "ok.png", data=good)
    save(tmp_path / "img" / "empty.png", data=b"")
    save(tmp_path / "img" / "truncated.png", data=good[: len(good) // 2])
    save(tmp_path / "img" / "truncated.jpg", data=jpeg.getvalue()[:300])
    save(tmp_path / "img" / "notes.png", data=b"these are my notes, not a face\n")
    save(tmp_path / "img" / "page.jpg", data=b"<!DOCTYPE html><html>404</html>")
    save(tmp_path / "img" / "tiny.png", data=png_bytes(Image.new("L", (4, 4))))
    save(tmp_path / "img" / "strip.png", data=png_bytes(Image.new("L", (5000, 1))))
    save(tmp_path / "img" / "bomb.png", data=png_header_only(30000, 30000))  # 900 Mpx claimed, 45 bytes
    sources = ["ok.png", "empty.png", "truncated.png", "truncated.jpg", "notes.png", "page.jpg", "tiny.png"]
    sources = [f"img/{s}" for s in sources + ["strip.png", "bomb.png", "missing.png"]] + ["img"]
    out = loaded(create_adapter("manifest", str(tmp_path / "m.csv"), classes="happy"), sources)
    reasons = {s: r.split(" (")[0] for s, (r, _) in out.items()}
    assert reasons == {
        "img/ok.png": "",
        "img/empty.png": "empty file",
        "img/truncated.png": "truncated or corrupt image",
        "img/truncated.jpg": "truncated or corrupt image",
        "img/notes.png": "not an image",
        "img/page.jpg": "not an image",
        "img/tiny.png": "image too small",
        "img/strip.png": "image too small",
        "img/bomb.png": "image too large",
        "img/missing.png": "unreadable file",
        "img": "unreadable file",  # a folder where a file was listed
    }
    assert all(img == b"" for s, (r, img) in out.items() if r)  # a rejected row carries no image
    assert "exceeds limit" in out["img/bomb.png"][0] and "FileNotFoundError" in out["img/missing.png"][0]


# --- label files and manifests ----------------------------------------------------------------------


def test_label_files_with_unknown_codes_are_rejects(tmp_path):
    root = ckplus_tree(tmp_path / "ck")  # S010/001 holds code 9 already
    label = root / "Emotion" / "S005" / "001" / "S005_001_00000005_emotion.txt"
    for text, reason in (
        ("", "label file does not hold an emotion code"),
        ("happy\n", "label file does not hold an emotion code"),
        ("   inf\n", "label file does not hold an emotion code"),
        ("nan\n", "label file does not hold an emotion code"),
        ("   0.0000000e+00\n", "unknown emotion code 0 (CK+ uses 1-7)"),
        ("  -3\n", "unknown emotion code -3 (CK+ uses 1-7)"),
    ):
        label.write_text(text)
        listing = create_adapter("ckplus", str(root)).list()
        assert rejects(listing) == {
            "Emotion/S005/001/S005_001_00000005_emotion.txt": reason,
            "Emotion/S010/001/S010_001_00000003_emotion.txt": "unknown emotion code 9 (CK+ uses 1-7)",
        }, text
        assert {f.subject for f in listing.faces} == {"S010"}  # the sequence is left out, never guessed

    for f in range(3):
        save(tmp_path / "mmi" / "s1" / f"{f}.png", face())
    pd.DataFrame({"sequence": ["s1"] * 5, "subject": ["1"] * 5, "label": ["7", "inf", "-1", "neutral", "4"]}).to_csv(
        tmp_path / "mmi" / "manifest.csv", index=False
    )
    listing = create_adapter("mmi", str(tmp_path / "mmi")).list()
    assert rejects(listing) == {
        "manifest.csv row 2": "unknown label '7'",  # MMI codes are 1-6
        "manifest.csv row 3": "unknown label 'inf'",
        "manifest.csv row 4": "unknown label '-1'",
        "manifest.csv row 5": "unknown label 'neutral'",
    }
    assert {SIX_CLASSES[f.label] for f in listing.faces} == {"happy"}

    pd.DataFrame({"path": ["a.png", "b.png"], "subject": ["x", "y"], "label": ["1e999", "2"]}).to_csv(
        tmp_path / "m.csv", index=False
    )
    listing = create_adapter("manifest", str(tmp_path / "m.csv"), classes="a,b,c").list()
    assert rejects(listing) == {"m.csv row 2": "unknown label '1e999'"} and len(listing.faces) == 1


@pytest.mark.parametrize(
    "adapter, name, content, message",
    [
        ("manifest", "faces.csv", "path,label\na.png,0\n", r"manifest faces.csv: missing columns \['subject'\]"),
        ("manifest", "faces.csv", "path,subject,label\n", r"manifest faces.csv: no rows"),
        ("manifest", "faces.csv", "", r"manifest faces.csv: no rows"),
        ("manifest", "faces.parquet", "PAR1 not parquet", r"manifest '.*/faces.parquet' is not a readable Parquet"),
        ("mmi", "manifest.csv", "sequence,subject\ns1,1\n", r"manifest manifest.csv: missing columns \['label'\]"),
    ],
)
def test_manifest_without_required_columns_is_an_error_naming_it(tmp_path, adapter, name, content, message):
    (tmp_path / name).write_text(content)
    source = str(tmp_path / name) if adapter == "manifest" else str(tmp_path)
    with pytest.raises(SourceError, match=message):
        create_adapter(adapter, source).list()


def test_manifest_paths_leaving_the_root_are_rejected_rows(tmp_path):
    save(tmp_path / "img" / "a.png", face())
    paths = [
        "img/a.png",
        "img/../../etc/passwd",
        "..",
        "file:///etc/passwd",
        "s3://someone-else/faces/a.png",
        "img/a\x00.png",  # passes the listing (it stays under the root); reading it is a reject
    ]
    table = pa.table(
        {"path": paths, "subject": ["s"] * 6, "label": ["happy"] * 6, "frame": ["1", "2", "3", "4", "5", "²"]}
    )
    pq.write_table(table, tmp_path / "faces.parquet")
    adapter = create_adapter("manifest", str(tmp_path / "faces.parquet"))
    listing = adapter.list()
    assert rejects(listing) == {
        "faces.parquet row 3": "path 'img/../../etc/passwd' leaves the source root",
        "faces.parquet row 4": "path '..' leaves the source root",
        "faces.parquet row 5": "path 'file:///etc/passwd' leaves the source root",
        "faces.parquet row 6": "path 's3://someone-else/faces/a.png' leaves the source root",
    }
    assert [(f.source, f.frame) for f in listing.faces] == [("img/a.png", 1), ("img/a\x00.png", -1)]
    out = loaded(adapter, [f.source for f in listing.faces])
    assert out["img/a.png"][0] == ""
    assert out["img/a\x00.png"][0] == "unreadable file (ValueError: embedded null byte)"


def test_cli_prepare_with_a_bad_manifest_is_one_error_line(ray_local, tmp_path):
    (tmp_path / "faces.csv").write_text("file,label\na.png,happy\n")
    (tmp_path / "faces.parquet").write_bytes(b"not a parquet file")
    for name, message in (
        ("faces.csv", "error: manifest faces.csv: missing columns ['path', 'subject']"),
        ("faces.parquet", f"error: manifest '{tmp_path}/faces.parquet' is not a readable Parquet file"),
    ):
        args = ["prepare", "--dataset", "manifest", "--source", str(tmp_path / name), "--store", str(tmp_path / "st")]
        out = runner.invoke(app, args)
        assert out.exit_code == 1 and out.stderr.startswith(message), out.output
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.output
    assert not (tmp_path / "st" / "datasets").exists()  # nothing half-written


# --- the face table ---------------------------------------------------------------------------------


def test_face_table_of_the_wrong_schema_is_an_error_naming_the_file(tmp_path):
    store = Store.from_uri(str(tmp_path))
    face_table(store, "t", [0, 1, 2], folds=3)
    path = f"{store.dataset('t').dir}/faces-00000.parquet"
    pq.write_table(pa.table({"face_id": ["x"], "label": pa.array([1], pa.int32())}), path)  # another schema
    wrong = rf"{path}: not a face table of this version \(missing columns \['dataset', .*label is int32, expected int64"
    with pytest.raises(StoreError, match=wrong):
        read_faces(store, "t")
    with pytest.raises(StoreError, match=wrong):
        load_fold(store, "t", 0, 16)  # what each training worker runs
    with pytest.raises(StoreError, match=wrong):
        plan_shards(store, "t", 0, 3, 60)  # the synthesis plan (read on the driver)
    exp = make_experiment("tiny", num_classes=3).to_dict()
    with pytest.raises(StoreError, match=wrong):  # the training driver checks it before any fold starts
        train(TrainJob(store=str(tmp_path), dataset="t", run="r", experiment=exp, folds=(0,)))
    assert not store.exists(store.run("r").dir)

    with open(path, "wb") as f:
        f.write(b"PAR1 garbage")  # not Parquet at all
    with pytest.raises(StoreError, match=rf"{path}: not a readable Parquet file \(ArrowInvalid"):
        read_faces(store, "t")


# --- checkpoints -------------------------------------------------------------------------------------


def test_truncated_or_foreign_checkpoints_are_refused_naming_the_file(tmp_path):
    store = Store.from_uri(str(tmp_path))
    folder = tmp_path / "runs" / "r" / "fold-0" / "checkpoint-epoch-0001"
    where = f"{folder}/state.pt"
    marker = tmp_path / "code-ran"

    data = checkpoint(folder, {"epoch": 1, "model": {}, "experiment": {}, "extra": Payload(marker)})
    assert latest_checkpoint(store, "r", 0) == str(folder)  # its checksum matches: only loading can tell
    with pytest.raises(
        CheckpointError, match=rf"checkpoint {where} refused by torch.load\(weights_only=True\): .*exec"
    ):
        read_checkpoint(store, str(folder))
    with pytest.raises(SynthError, match=rf"recogniser {where} refused by torch.load\(weights_only=True\)"):
        load_fold_recognizer(store, where)
    with pytest.raises(ValueError, match=rf"identity weights {where} refused by torch.load\(weights_only=True\)"):
        load_identity_weights(where)
    assert not marker.exists()  # nothing in the file ran
    torch.load(io.BytesIO(data), weights_only=False)  # the payload is live: unpickled, it runs
    assert marker.exists()

    checkpoint(folder, [torch.zeros(2)])  # loads as weights, but is not a checkpoint of ours
    with pytest.raises(
        CheckpointError, match=rf"checkpoint {where} is not a fersnet checkpoint \(no epoch, model, exp"
    ):
        read_checkpoint(store, str(folder))

    data = checkpoint(folder, {"epoch": 1})
    (folder / "state.pt").write_bytes(data[:200])  # truncated upload; meta.json still names the whole file
    with pytest.raises(CheckpointError, match=rf"checkpoint {where} is incomplete or corrupt \(checksum mismatch\)"):
        read_checkpoint(store, str(folder))
    assert latest_checkpoint(store, "r", 0) is None
    meta = {"epoch": 1, "sha256": hashlib.sha256(data[:200]).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))  # truncated before its checksum was taken
    with pytest.raises(CheckpointError, match=rf"checkpoint {where} does not load: RuntimeError: PytorchStreamReader"):
        read_checkpoint(store, str(folder))
    (folder / "meta.json").write_text('{"epoch": 1, "sha2')
    with pytest.raises(CheckpointError, match=rf"checkpoint {where}: its meta.json is not valid JSON"):
        read_checkpoint(store, str(folder))
    assert latest_checkpoint(store, "r", 0) is None


# --- empty folds -------------------------------------------------------------------------------------


def test_empty_fold_is_an_error_naming_the_data_set_and_fold(tmp_path):
    store = Store.from_uri(str(tmp_path))
    face_table(store, "gap", [0, 0, 2, 2], folds=3)  # the card says 3 folds; fold 1 holds no face
    with pytest.raises(ValueError, match=r"face table 'gap' has no fold 1 \(folds 0..2\)"):
        load_fold(store, "gap", 1, 16)
    with pytest.raises(ValueError, match=r"face table 'gap' has no face in fold 1"):
        load_test(store, "gap", 1, 16)
    train_set, test_set, _ = load_fold(store, "gap", 0, 16)
    assert (len(train_set), len(test_set)) == (6, 6)

    face_table(store, "one", [0, 0, 0], folds=2)  # every face in fold 0: its training split is empty
    with pytest.raises(ValueError, match=r"face table 'one' has no training faces for fold 0"):
        load_fold(store, "one", 0, 16)
    with pytest.raises(SynthError, match=r"face table 'one' has no training faces for fold 0"):
        plan_shards(store, "one", 0, 3, 60)

    exp = make_experiment("tiny", num_classes=3).to_dict()
    with pytest.raises(TrainError, match=r"face table 'gap' has folds 0..2; no fold 5"):
        train(TrainJob(store=str(tmp_path), dataset="gap", run="r", experiment=exp, folds=(0, 5)))


def test_cli_train_on_a_fold_that_does_not_exist_is_one_error_line(ray_local, tmp_path):
    face_table(Store.from_uri(str(tmp_path)), "gap", [0, 1, 2], folds=3)
    args = ["train", "--store", str(tmp_path), "--dataset", "gap", "--run", "r", "--preset", "tiny", "--folds", "7"]
    out = runner.invoke(app, args)
    assert out.exit_code == 1 and out.stderr.startswith("error: face table 'gap' has folds 0..2; no fold 7")
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.output


# --- synthetic shards ----------------------------------------------------------------------------------


def test_synthetic_shard_of_the_wrong_schema_is_named_by_verify_and_finetune(tmp_path):
    store = Store.from_uri(str(tmp_path))
    face_table(store, "t", [0, 1, 2], folds=3)
    store.write_json(f"{store.run('r').dir}/config.json", {"dataset": "t", "experiment": {}})
    write_checkpoint_dir_at(store.run("r").fold(0), {"epoch": 2, "model": {}, "experiment": {}})
    folder = store.run("r").synthetic(0)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"face_id": ["x"], "label": [1]}), buf)  # someone else's Parquet, listed as a shard
    data = buf.getvalue().to_pybytes()
    store.write_bytes(f"{folder}/part-00000.parquet", data)
    shard = {"file": "part-00000.parquet", "rows": 1, "sha256": hashlib.sha256(data).hexdigest(), "per_class": {}}
    store.write_json(f"{folder}/{MANIFEST}", {"dataset": "t", "classes": CLASSES, "shards": [shard]})
    store.write_bytes(f"{folder}/extra.parquet", data)  # and one more, not in the manifest

    problems = verify_fold(store, "r", 0)
    assert problems == [
        f"fold 0: {folder}/extra.parquet is not in the manifest (foreign or duplicate output)",
        f"fold 0: shard {folder}/part-00000.parquet is unreadable (StoreError: {folder}/part-00000.parquet: "
        "not a synthetic shard of this version (missing columns ['source_face_id', 'subject', 'label_name', "
        "'source_label', 'fold', 'image', 'checkpoint', 'score']))",
    ]
    with pytest.raises(FinetuneError, match=rf"fold 0: synthetic shards fail verify: fold 0: {folder}/extra.parquet"):
        fold_inputs(store, "r", 0, train_epochs=2, data="real+synthetic")

    out = runner.invoke(app, ["verify", "--store", str(tmp_path), "--run", "r"])
    assert out.exit_code == 1 and "Traceback" not in out.output
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: fold 0: ") for line in lines)
    assert "part-00000.parquet is unreadable" in lines[1] and "not a synthetic shard" in lines[1]

    # synthesize: a file it cannot read is only removed when it bears a shard's name (a crashed write of ours).
    other = store.run("r").synthetic(1)
    store.write_bytes(f"{other}/part-00003.parquet", b"half a shard")
    store.write_bytes(f"{other}/notes.parquet", b"not parquet")
    with pytest.raises(SynthError, match=rf"{other}/notes.parquet: not a readable Parquet file .*--overwrite"):
        _check_foreign_files(store, other)
    assert store.exists(f"{other}/notes.parquet")  # a user's file is never deleted


def write_checkpoint_dir_at(folder: str, state: dict) -> None:
    path = f"{folder}/checkpoint-epoch-{state['epoch']:04d}"
    os.makedirs(path, exist_ok=True)
    write_checkpoint_dir(state, path)


def test_subject_regex_with_an_unmatched_optional_group_keeps_the_file(tmp_path):
    save(tmp_path / "joy" / "alice.png", face())  # no frame number: the optional group matches nothing
    save(tmp_path / "joy" / "bob7.png", face())
    listing = create_adapter("folder", str(tmp_path), subject_regex=r"^(?P<subject>[a-z]+)(?P<frame>\d+)?").list()
    assert [(f.subject, f.frame) for f in listing.faces] == [("alice", -1), ("bob", 7)] and listing.rejects == []


@pytest.mark.parametrize(
    "args, known",
    [
        (["run", "--preset", "papr"], ["paper", "ck48", "tiny"]),
        (["run", "--variant", "resnet"], ["fersnet", "fersnet_hard", "fer_only"]),
        (["run", "--gan-mode", "wgan"], ["vanilla", "lsgan"]),
        (["run", "--align", "dlib"], ["none", "fan"]),
        (["run", "--dataset", "ckplus49"], ["ckplus", "ckplus48", "demo", "folder"]),
        (["ablation", "--preset", "papr"], ["paper", "ck48", "tiny"]),
        (["prepare", "--dataset", "ckplus49"], ["ckplus", "ckplus48", "demo", "folder"]),
        (["train", "--variant", "resnet"], ["fersnet", "fersnet_hard", "fer_only"]),
    ],
)
def test_unknown_choices_fail_before_any_stage(tmp_path, args, known):
    """Checked while the options are parsed: one error line listing the choices, exit 1, nothing written."""
    store = tmp_path / "store"
    out = CliRunner().invoke(app, [*args, "--store", str(store)])
    assert out.exit_code == 1, out.output
    option, value = args[1], args[2]
    assert out.output.startswith(f"error: {option} '{value}': unknown; use one of "), out.output
    listed = out.output.split("use one of ", 1)[1].strip().split(", ")
    assert set(known) <= set(listed) and len(out.output.strip().splitlines()) == 1
    assert not store.exists()  # no stage ran


def test_version():
    from fersnet_ray import __version__

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"fersnet {__version__}"
