"""The face table: the one thing every stage reads.

Parquet files under `<store>/datasets/<name>/` (`faces-*.parquet`, one row per aligned face)
and `_card.json` beside them. The card is written last, so a table without a card is an
unfinished `prepare` and is never read. Plain Parquet + JSON: pyarrow or pandas alone can
read it, e.g. `pd.read_parquet("fersnet-store/datasets/demo")`.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from fersnet_ray.store import CARD_FILE, Store, StoreError

CARD_NAME = CARD_FILE  # "_" prefix: pyarrow, pandas and Spark skip it when reading the folder

# Row groups are the unit of a partial read (a synthesis shard reads only the groups holding its source
# faces; pyarrow fetches whole column chunks). ~64 MB keeps one S3 GET per column chunk worth its latency;
# at most a few thousand rows keeps a shard's read close to what it needs (a 110 px greyscale face is
# ~3 KB as PNG, so the row bound decides there; large RGB faces hit the byte bound first).
ROW_GROUP_BYTES = 64 << 20
ROW_GROUP_ROWS = (256, 2048)  # (fewest, most) rows in a row group

# Column order is the schema's order; documented in the README ("Face table").
FACE_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),  # stable: hash of data set name and source path
        ("dataset", pa.string()),
        ("subject", pa.string()),
        ("label", pa.int64()),  # index into the card's `classes`
        ("label_name", pa.string()),
        ("sequence", pa.string()),
        ("frame", pa.int64()),  # -1 where the source has no frame number
        ("source", pa.string()),  # path relative to the source root
        ("image", pa.binary()),  # PNG bytes, aligned_size × aligned_size, 'L' or 'RGB'
        ("fold", pa.int64()),  # 0..k-1, subject-disjoint, stratified by expression
    ]
)


def row_group_rows(bytes_per_row: float) -> int:
    """Rows per Parquet row group for rows of about `bytes_per_row` (face table and synthetic shards alike)."""
    lo, hi = ROW_GROUP_ROWS
    return int(min(hi, max(lo, ROW_GROUP_BYTES // max(1, int(bytes_per_row)))))


def face_id(dataset: str, source: str) -> str:
    """Stable id of a face: the same data set name and source path give the same id on every run."""
    return hashlib.sha1(f"{dataset}\0{source}".encode()).hexdigest()[:20]


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: the table is read far more often than written, and PNG decode speed does not
    # depend on the level, but level 9 makes prepare several times slower for ~10% smaller files.
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → uint8 array, (H, W) for greyscale or (H, W, 3) for RGB."""
    return np.asarray(Image.open(io.BytesIO(data)))


def check_schema(schema: pa.Schema, where: str, expected: pa.Schema = FACE_SCHEMA, what: str = "face table") -> None:
    """Raises a clear error naming `where` when a Parquet file does not hold the expected columns."""
    missing = [f.name for f in expected if f.name not in schema.names]
    wrong = [
        f"{f.name} is {schema.field(f.name).type}, expected {f.type}"
        for f in expected
        if f.name in schema.names and not schema.field(f.name).type.equals(f.type)
    ]
    if missing or wrong:
        reasons = ([f"missing columns {missing}"] if missing else []) + wrong
        raise StoreError(f"{where}: not a {what} of this version ({'; '.join(reasons)})")


def read_card(store: Store, name: str) -> dict:
    """The data set's card; a clear error when the data set was never (fully) prepared."""
    path = store.dataset(name).card
    if not store.exists(path):
        raise StoreError(
            f"no prepared data set {name!r} in {store.uri} ({store.uri_of_path(path)} missing);"
            " run `fersnet prepare` first"
        )
    return store.read_json(path)


def table_files(store: Store, name: str) -> list[str]:
    """The face table's Parquet files, in name order (the order rows were written in)."""
    return sorted(p for p in store.fs.ls(store.dataset(name).dir, detail=False) if p.endswith(".parquet"))


def open_table_file(store: Store, path: str) -> pq.ParquetFile:
    """One of the face table's Parquet files, opened and schema-checked; errors name the file."""
    where = store.uri_of_path(path)
    try:
        pf = pq.ParquetFile(path, filesystem=store.arrow_fs)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise StoreError(f"{where}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    check_schema(pf.schema_arrow, where)
    return pf


def read_faces(store: Store, name: str, columns: list[str] | None = None, fold: int | None = None) -> pa.Table:
    """Reads the face table with pyarrow (small data sets, tests, reports), or only the faces of `fold`.

    With `fold`, each row group's `fold` column is read first and the other columns only of the row
    groups that hold the fold's faces, filtered as they come: memory is the fold's faces plus one row
    group, not the whole table. Stages that must scale read it with Ray Data instead
    (`ray.data.read_parquet(table_files(...), filesystem=store.arrow_fs)`).
    """
    read_card(store, name)
    tables = []
    for path in table_files(store, name):
        pf = open_table_file(store, path)
        if fold is None:
            tables.append(pf.read(columns=columns))
            continue
        for g in range(pf.num_row_groups):
            keep = pc.equal(pf.read_row_group(g, columns=["fold"])["fold"], fold)
            if pc.any(keep).as_py():
                tables.append(pf.read_row_group(g, columns=columns).filter(keep))
    if not tables:
        if fold is not None and table_files(store, name):
            return FACE_SCHEMA.empty_table().select(columns or FACE_SCHEMA.names)
        raise StoreError(f"data set {name!r} in {store.uri} has a card but no Parquet files")
    return pa.concat_tables(tables)
