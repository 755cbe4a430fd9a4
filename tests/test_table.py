"""The face table (`fersnet_ray.table`) on real Parquet files written here: no Ray, no stage."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fersnet_ray import table as face_table
from fersnet_ray.store import Store, StoreError
from fersnet_ray.table import (
    FACE_SCHEMA,
    check_schema,
    decode_png,
    encode_png,
    face_id,
    read_card,
    read_faces,
    row_group_rows,
    table_files,
)

CLASSES = ["anger", "happy", "surprise"]


def _rows(name: str, folds: list[int]) -> list[dict]:
    """One face per fold entry, subject i in fold folds[i], labels cycling through CLASSES."""
    png = encode_png(Image.new("L", (8, 8), 100))
    return [
        dict(
            face_id=face_id(name, f"S{i}/0.png"),
            dataset=name,
            subject=f"S{i}",
            label=i % len(CLASSES),
            label_name=CLASSES[i % len(CLASSES)],
            sequence="",
            frame=-1,
            source=f"S{i}/0.png",
            image=png,
            fold=k,
        )
        for i, k in enumerate(folds)
    ]


def write_table(store: Store, name: str, files: list[list[int]], group: int = 4, card: bool = True) -> None:
    """A face table of one Parquet file per entry of `files` (the fold of each row), in row groups of `group`."""
    layout = store.dataset(name)
    start = 0
    for i, folds in enumerate(files):
        rows = _rows(name, [0] * start + folds)[start:]  # face ids unique across files
        start += len(folds)
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=FACE_SCHEMA), buf, row_group_size=group)
        store.write_bytes(layout.part(i), buf.getvalue().to_pybytes())
    if card:
        store.write_json(layout.card, {"name": name, "classes": CLASSES, "folds": 3})


# --- ids, images, row groups --------------------------------------------------------------------------


def test_face_ids_are_stable_and_tell_data_sets_and_sources_apart():
    a = face_id("ck", "S005/001/01.png")
    assert a == face_id("ck", "S005/001/01.png") and len(a) == 20 and int(a, 16) >= 0  # 20 hex characters
    assert a != face_id("oulu", "S005/001/01.png") and a != face_id("ck", "S005/001/02.png")
    assert face_id("ab", "c") != face_id("a", "bc")  # the separator keeps the two parts apart


@pytest.mark.parametrize("mode, shape", [("L", (12, 10)), ("RGB", (12, 10, 3))])
def test_png_round_trip_keeps_every_pixel(mode, shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(Image.fromarray(pixels, mode))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = decode_png(data)
    assert back.dtype == np.uint8 and back.shape == shape and np.array_equal(back, pixels)


def test_row_group_rows_are_bounded_by_rows_and_bytes():
    assert row_group_rows(3_000) == 2048  # a 110 px greyscale PNG face: the row bound
    assert row_group_rows(200_000) == (64 << 20) // 200_000  # large RGB faces: ~64 MB groups
    assert row_group_rows(10 << 20) == 256 and row_group_rows(0) == 2048


def test_row_group_rows_follow_the_configured_bounds(monkeypatch):
    monkeypatch.setattr(face_table, "ROW_GROUP_ROWS", (8, 16))
    sizes = [0, 1, 1_000, 4 << 20, 8 << 20, 1 << 30]
    rows = [row_group_rows(b) for b in sizes]
    assert rows == [16, 16, 16, 16, 8, 8]  # 64 MB / 4 MB = 16; 64 MB / 8 MB = 8; beyond: the lower bound
    assert rows == sorted(rows, reverse=True)  # larger rows never give larger groups


# --- schema ---------------------------------------------------------------------------------------------


def test_the_face_schema_passes_extra_columns_included():
    check_schema(FACE_SCHEMA, "faces.parquet")
    check_schema(FACE_SCHEMA.append(pa.field("note", pa.string())), "faces.parquet")  # added columns are fine


def test_a_bad_schema_is_named_with_its_file_and_every_reason():
    bad = pa.schema([("face_id", pa.string()), ("label", pa.int32()), ("image", pa.string())])
    with pytest.raises(StoreError) as e:
        check_schema(bad, "s3://b/datasets/ck/faces-00003.parquet")
    msg = str(e.value)
    assert msg.startswith("s3://b/datasets/ck/faces-00003.parquet: not a face table of this version (")
    assert "missing columns ['dataset', 'subject', 'label_name', 'sequence', 'frame', 'source', 'fold']" in msg
    assert "label is int32, expected int64" in msg and "image is string, expected binary" in msg
    other = pa.schema([("x", pa.int64())])
    with pytest.raises(
        StoreError, match=r"^shard-7: not a synthetic shard of this version \(missing columns \['y'\]\)$"
    ):
        check_schema(other, "shard-7", pa.schema([("x", pa.int64()), ("y", pa.int64())]), "synthetic shard")


# --- reading the table --------------------------------------------------------------------------------


def test_a_data_set_without_its_card_was_never_prepared(tmp_path):
    store = Store.from_uri(str(tmp_path))
    write_table(store, "half", [[0, 1]], card=False)  # an interrupted prepare: files, no card
    with pytest.raises(StoreError, match=r"no prepared data set 'half' in .*datasets/half/_card.json missing\);"):
        read_card(store, "half")
    with pytest.raises(StoreError, match="run `fersnet prepare` first"):
        read_faces(store, "half")
    write_table(store, "ok", [[0]])
    assert read_card(store, "ok") == {"name": "ok", "classes": CLASSES, "folds": 3}


def test_table_files_are_the_parquet_files_in_name_order(tmp_path):
    store = Store.from_uri(str(tmp_path))
    write_table(store, "t", [[0], [1], [2]])
    store.write_bytes(f"{store.dataset('t').dir}/notes.txt", b"not a table file")
    files = table_files(store, "t")
    assert files == [store.dataset("t").part(i) for i in range(3)]


def test_read_faces_reads_every_file_and_the_asked_columns(tmp_path):
    store = Store.from_uri(str(tmp_path))
    write_table(store, "t", [[0, 1, 2, 0, 1], [2, 2, 0]])
    faces = read_faces(store, "t")
    assert faces.schema == FACE_SCHEMA and faces.num_rows == 8
    assert faces["subject"].to_pylist() == [f"S{i}" for i in range(8)]  # file order, then row order
    assert len(set(faces["face_id"].to_pylist())) == 8
    assert read_faces(store, "t", columns=["face_id", "fold"]).column_names == ["face_id", "fold"]


def test_read_faces_of_one_fold_reads_only_the_row_groups_holding_it(tmp_path, monkeypatch):
    store = Store.from_uri(str(tmp_path))
    # Two files in groups of 4 rows: fold 2 sits in one group of each file, fold 1 in one group of the first.
    write_table(store, "t", [[0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 2, 2, 2, 2]], group=4)
    whole = read_faces(store, "t")
    full_reads = []
    read_group = pq.ParquetFile.read_row_group

    def counting(self, i, columns=None, **kw):
        if columns != ["fold"]:  # the fold column of every group is read first, the rest only where needed
            full_reads.append(i)
        return read_group(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    for k in (0, 1, 2):
        full_reads.clear()
        part = read_faces(store, "t", fold=k)
        expected = whole.filter(pa.compute.equal(whole["fold"], k))
        assert part.to_pylist() == expected.to_pylist()
        assert len(full_reads) == {0: 2, 1: 1, 2: 2}[k]
    assert read_faces(store, "t", columns=["face_id"], fold=1)["face_id"].to_pylist() == [
        f for f, k in zip(whole["face_id"].to_pylist(), whole["fold"].to_pylist()) if k == 1
    ]
    empty = read_faces(store, "t", columns=["face_id", "label"], fold=7)  # a fold with no face: empty, same columns
    assert empty.num_rows == 0 and empty.schema == FACE_SCHEMA.empty_table().select(["face_id", "label"]).schema


def test_a_card_without_files_and_unreadable_files_are_named(tmp_path):
    store = Store.from_uri(str(tmp_path))
    store.write_json(store.dataset("t").card, {"name": "t", "classes": CLASSES, "folds": 3})
    with pytest.raises(StoreError, match=r"data set 't' in .* has a card but no Parquet files"):
        read_faces(store, "t")
    write_table(store, "t", [[0, 1]])
    bad = store.dataset("t").part(1)
    store.write_bytes(bad, b"PAR1 and then nothing")
    with pytest.raises(StoreError, match=rf"{bad}: not a readable Parquet file \(ArrowInvalid"):
        read_faces(store, "t")
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"face_id": ["x"]}), buf)
    store.write_bytes(bad, buf.getvalue().to_pybytes())
    with pytest.raises(StoreError, match=rf"{bad}: not a face table of this version \(missing columns"):
        read_faces(store, "t", fold=0)
