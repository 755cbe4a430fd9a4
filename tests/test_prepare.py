"""The prepare stage end to end on a real local Ray: local store, S3 store (moto), rejects, FAN, CLI."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from builders import ckplus48_tree, face, png_bytes, save
from fersnet_ray.cli import app
from fersnet_ray.prepare.job import PrepareConfig, PrepareError, prepare
from fersnet_ray.store import Store
from fersnet_ray.table import FACE_SCHEMA, decode_png, read_card, read_faces, table_files

runner = CliRunner()


def demo_cfg(store: str, **kw) -> PrepareConfig:
    return PrepareConfig(dataset="demo", store=store, folds=3, options={"subjects": 6}, **kw)


def test_demo_table_card_and_folds(ray_local, tmp_path):
    result = prepare(demo_cfg(str(tmp_path)))
    store = Store.from_uri(str(tmp_path))
    table = read_faces(store, "demo")
    card = read_card(store, "demo")
    assert table.schema.equals(FACE_SCHEMA)
    assert table.num_rows == card["num_faces"] == 6 * 7 * 3 and card["num_subjects"] == 6
    assert len(set(table["face_id"].to_pylist())) == table.num_rows
    assert card["counts"]["per_class"] == {c: 18 for c in card["classes"]}
    assert sum(card["counts"]["per_fold"].values()) == table.num_rows
    assert card["alignment"] == {"method": "none", "size": 110, "channels": 1}
    assert card["rejects"] == [] and result.card == card

    rows = table.drop(["image"]).to_pylist()
    folds_of_subject = defaultdict(set)
    for r in rows:
        folds_of_subject[r["subject"]].add(r["fold"])
        assert card["classes"][r["label"]] == r["label_name"]
    assert all(len(f) == 1 for f in folds_of_subject.values())  # subject-disjoint
    for k in range(3):
        assert {r["label"] for r in rows if r["fold"] == k} == set(range(7))  # test split: every class
        assert {r["label"] for r in rows if r["fold"] != k} == set(range(7))  # training split too
    img = decode_png(table["image"][0].as_py())
    assert img.shape == (110, 110) and img.dtype == np.uint8

    # Re-running on the same source gives the same ids, folds and file names.
    files = table_files(store, "demo")
    prepare(demo_cfg(str(tmp_path)))
    again = read_faces(store, "demo")
    assert again.select(["face_id", "fold"]).equals(table.select(["face_id", "fold"]))
    assert table_files(store, "demo") == files


def test_s3_store_gives_the_same_rows(ray_local, s3_bucket, tmp_path):
    prepare(demo_cfg(str(tmp_path), name="same"))
    prepare(demo_cfg(f"{s3_bucket}/fer", name="same"))
    local = read_faces(Store.from_uri(str(tmp_path)), "same")
    remote = read_faces(Store.from_uri(f"{s3_bucket}/fer"), "same")
    order = pc.sort_indices(local, [("face_id", "ascending")])
    assert remote.take(pc.sort_indices(remote, [("face_id", "ascending")])).equals(local.take(order))


def test_rejects_are_listed_with_reasons(ray_local, tmp_path):
    root = ckplus48_tree(tmp_path / "src", subjects=3)
    save(root / "anger" / "S099_001_00000001.png", data=png_bytes(face())[:150])  # truncated
    save(root / "anger" / "S099_001_00000002.png", data=b"")  # zero bytes
    save(root / "anger" / "S099_001_00000003.png", data=b"GIF89a not really")  # not an image
    save(root / "boredom" / "S010_009_00000001.png", face())  # unknown label folder
    card = prepare(PrepareConfig(dataset="ckplus48", source=str(root), store=str(tmp_path / "st"), folds=3)).card
    assert card["num_faces"] == 3 * 3 * 3
    assert {r["source"]: r["reason"].split(" (")[0] for r in card["rejects"]} == {
        "boredom/S010_009_00000001.png": "unknown expression folder 'boredom'",
        "anger/S099_001_00000001.png": "truncated or corrupt image",
        "anger/S099_001_00000002.png": "empty file",
        "anger/S099_001_00000003.png": "not an image",
    }
    with pytest.raises(PrepareError, match="no usable face in source .*all 1 faces rejected"):
        bad = tmp_path / "bad"
        save(bad / "happy" / "S001_001_00000001.png", data=b"")
        prepare(PrepareConfig(dataset="ckplus48", source=str(bad), store=str(tmp_path / "st"), folds=2))


def test_fan_alignment_end_to_end_through_ray(ray_local, tmp_path, fan_weights):
    # The real face_alignment path in a Ray actor: weights staged from --weights into TORCH_HOME,
    # S3FD + FAN built once, every face detected and warped to aligned_size.
    root = tmp_path / "src"
    for s in range(2):
        save(root / "happy" / f"S{s + 1:03d}_001_00000001.png", face(s, 4, 0, 128).convert("RGB"))
    save(root / "happy" / "S003_001_00000001.png", data=b"\x89PNG broken")
    cfg = PrepareConfig(
        dataset="ckplus48",
        source=str(root),
        store=str(tmp_path / "st"),
        folds=2,
        align="fan",
        aligned_size=64,
        weights=fan_weights,
        actors=1,
    )
    card = prepare(cfg).card
    assert card["alignment"]["method"] == "fan" and card["num_faces"] == 2
    assert [r["source"] for r in card["rejects"]] == ["happy/S003_001_00000001.png"]
    images = read_faces(Store.from_uri(cfg.store), "ckplus48")["image"].to_pylist()
    assert all(decode_png(b).shape == (64, 64) for b in images)


def test_cli_prepare_and_datasets(ray_local, tmp_path):
    out = runner.invoke(app, ["datasets"])
    assert out.exit_code == 0 and "ckplus48" in out.stdout and "manifest" in out.stdout
    out = runner.invoke(
        app, ["prepare", "--dataset", "demo", "--demo-subjects", "4", "--folds", "2", "--store", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    assert "demo: 84 faces of 4 subjects" in out.stdout and "rejects: 0" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--dataset", "ckplus48", "--source", "/no/such/dir"],
            "error: source directory '/no/such/dir' does not exist",
        ),
        (["--dataset", "nope", "--source", "x"], "error: --dataset 'nope': unknown; use one of ckplus, ckplus48"),
        (["--dataset", "demo", "--align", "dlib"], "error: --align 'dlib': unknown; use one of"),
        (["--dataset", "demo", "--folds", "30"], "error: 30 subject-disjoint folds need at least 30 subjects"),
    ],
)
def test_cli_bad_input_is_one_line(ray_local, tmp_path, args, message):
    out = runner.invoke(app, ["prepare", "--store", str(tmp_path), "--demo-subjects", "3", *args])
    assert out.exit_code == 1
    assert out.stderr.strip().startswith(message), out.stderr
    assert "Traceback" not in out.output and len(out.stderr.strip().splitlines()) == 1


def test_cli_unwritable_store(ray_local, tmp_path):
    (tmp_path / "f").write_text("x")
    out = runner.invoke(app, ["prepare", "--store", str(tmp_path / "f" / "store")])
    assert out.exit_code == 1 and out.stderr.startswith("error: cannot write to store")
