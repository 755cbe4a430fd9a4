"""Store URIs, layout, redaction, and the S3 path on a real S3-compatible server (moto)."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fersnet_ray.store import Store, StoreError, redact


def test_local_uris_resolve_to_absolute_paths(tmp_path):
    assert Store.from_uri(str(tmp_path)).root == str(tmp_path)
    assert Store.from_uri(f"file://{tmp_path}").root == str(tmp_path)
    assert Store.from_uri(None).root == os.path.abspath("fersnet-store")
    store = Store.from_uri(str(tmp_path))
    assert store.dataset("ck").dir == f"{tmp_path}/datasets/ck"
    assert store.run("r1").fold(3) == f"{tmp_path}/runs/r1/fold-3"
    assert store.run("r1").synthetic(3) == f"{tmp_path}/runs/r1/synthetic/fold-3"
    assert store.run("r1").report == f"{tmp_path}/runs/r1/report"
    # The final model (every subject) beside the folds: its own folder in every stage.
    assert store.run("r1").fold("final") == f"{tmp_path}/runs/r1/final"
    assert store.run("r1").synthetic("final") == f"{tmp_path}/runs/r1/synthetic/final"
    assert store.run("r1").fold(3, "finetune") == f"{tmp_path}/runs/r1/finetune/fold-3"
    assert store.run("r1").fold("final", "finetune-real") == f"{tmp_path}/runs/r1/finetune-real/final"
    assert store.uri_of_path(store.run("r1").fold("final")) == f"{tmp_path}/runs/r1/final"
    for bad in ("last", -1, True, "3"):
        with pytest.raises(StoreError, match="use a fold number"):
            store.run("r1").fold(bad)
    with pytest.raises(StoreError, match="leaves the store"):
        store.path("datasets", "../../etc")


def test_s3_uris_and_bad_uris(s3_endpoint):
    store = Store.from_uri("s3://bucket/some/prefix/")
    assert (store.protocol, store.root, store.endpoint) == ("s3", "bucket/some/prefix", s3_endpoint)
    assert store.uri_of("runs", "a") == "s3://bucket/some/prefix/runs/a"
    with pytest.raises(StoreError, match="credential chain") as e:
        Store.from_uri("s3://AKIAXXX:hunter2secret@bucket/x")
    assert "hunter2secret" not in str(e.value)
    with pytest.raises(StoreError, match="unsupported scheme 'gs'"):
        Store.from_uri("gs://bucket")
    with pytest.raises(StoreError, match="names no bucket"):
        Store.from_uri("s3://")


def test_redact_removes_secrets(s3_endpoint):
    text = (
        "https://bucket.s3.amazonaws.com/k?X-Amz-Signature=abcdef123&X-Amz-Credential=AKIA/2026 "
        "s3://user:pass@bucket aws_secret_access_key=zzz testing-secret-value"
    )
    out = redact(text)
    for secret in ("abcdef123", "AKIA/2026", "user:pass", "zzz", "testing-secret-value"):
        assert secret not in out


def test_s3_round_trip_json_and_parquet(s3_bucket):
    store = Store.from_uri(f"{s3_bucket}/prefix")
    store.check_writable()
    store.write_json(store.path("runs", "r", "config.json"), {"a": 1})
    assert store.read_json(store.path("runs", "r", "config.json")) == {"a": 1}
    table = pa.table({"x": [1, 2, 3], "image": [b"a", b"b", b"c"]})
    pq.write_table(table, store.path("datasets", "t", "part.parquet"), filesystem=store.arrow_fs)
    assert pq.read_table(store.path("datasets", "t", "part.parquet"), filesystem=store.arrow_fs).equals(table)
    store.remove(store.path("datasets", "t"))
    assert not store.exists(store.path("datasets", "t", "part.parquet"))


def test_unwritable_stores_fail_with_one_line(tmp_path, s3_endpoint):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"cannot write to store .*/file/store: "):
        Store.from_uri(str(blocker / "store")).check_writable()
    with pytest.raises(StoreError, match="cannot write to store s3://no-such-bucket-xyz") as e:
        Store.from_uri("s3://no-such-bucket-xyz/p").check_writable()
    assert "\n" not in str(e.value) and "testing-secret-value" not in str(e.value)
