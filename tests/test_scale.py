"""Scale fixes and the scale benchmark's parts, on a real local Ray and moto (fersnet_ray/scale, table, synth).

Row groups sized for partial reads (face table and shards), fold-only reads, the --max-rows refusal,
verify's array accounting of pairs, the stage probe, and pyarrow's two S3 filesystems; the same output
on a head + 2 worker nodes as on one node, and a store that fills up during synthesis.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fersnet_ray import table as face_table
from fersnet_ray.cli import app
from fersnet_ray.prepare.job import PrepareConfig, prepare
from fersnet_ray.scale.bench import stand_in_run
from fersnet_ray.scale.cluster import output_checksums, same_output
from fersnet_ray.scale.probe import StageProbe, parquet_layout
from fersnet_ray.scale.s3 import compare_arrow_s3
from fersnet_ray.store import ARROW_S3, ARROW_S3_KINDS, Store
from fersnet_ray.synth import SynthError
from fersnet_ray.synth.job import MANIFEST, SynthJob, planned_rows, synthesize, synthetic_face_id, write_shard
from fersnet_ray.synth.verify import verify_fold
from fersnet_ray.table import read_card, read_faces, table_files

GROUP = 32  # rows per row group in the module's face table (the real bound, 2048, would give one group)


@pytest.fixture(scope="module")
def scaled(ray_local, tmp_path_factory):
    """The demo set (6 subjects, 3 folds) written in row groups of 32 rows, a stand-in `tiny` run "r"
    (untrained weights, as the benchmark uses) and fold 0 synthesised from it; the local store's URI."""
    uri = str(tmp_path_factory.mktemp("scaled"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(face_table, "ROW_GROUP_ROWS", (16, GROUP))  # read on the driver, which sizes the write
        prepare(PrepareConfig(dataset="demo", store=uri, folds=3, options={"subjects": 6}))
    store = Store.from_uri(uri)
    stand_in_run(store, "demo", "r")
    synthesize(SynthJob(store=uri, run="r", folds=(0,), quality=False, rows_per_shard=60))
    return uri


def test_face_table_row_groups_and_fold_reads(scaled):
    store = Store.from_uri(scaled)
    card = read_card(store, "demo")
    assert card["row_group_rows"] == GROUP
    groups = []
    for path in table_files(store, "demo"):
        meta = pq.ParquetFile(path).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        assert sizes[:-1] == [GROUP] * (len(sizes) - 1) and 0 < sizes[-1] <= GROUP
        groups += sizes
    assert len(groups) > 1 and sum(groups) == card["num_faces"] == 126
    layout = parquet_layout(store, table_files(store, "demo"))
    assert (layout["rows"], layout["row_groups"], layout["rows_per_group"][1]) == (126, len(groups), GROUP)

    whole = read_faces(store, "demo", columns=["face_id", "fold"]).to_pylist()
    for k in range(3):  # only the fold's rows, in table order
        part = read_faces(store, "demo", columns=["face_id", "fold"], fold=k).to_pylist()
        assert part == [r for r in whole if r["fold"] == k] and part
    assert read_faces(store, "demo", columns=["face_id"], fold=7).num_rows == 0


def test_synthesis_reads_sources_across_row_groups_and_verifies(scaled):
    store = Store.from_uri(scaled)
    manifest = store.read_json(f"{store.run('r').synthetic(0)}/{MANIFEST}")
    card = read_card(store, "demo")
    assert manifest["rows"] == planned_rows(card, 0) == 6 * (126 - card["counts"]["per_fold"]["0"])
    assert manifest["balanced"] and len(manifest["shards"]) > 1
    assert verify_fold(store, "r", 0) == []


def test_max_rows_refuses_a_fold_before_any_work(scaled):
    store = Store.from_uri(scaled)
    rows = planned_rows(read_card(store, "demo"), 1)
    args = ["synthesize", "--store", scaled, "--run", "r", "--folds", "1", "--no-quality", "--max-rows", str(rows - 1)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 1
    assert out.stderr.strip().splitlines() == [
        f"error: fold 1: {rows:,} synthetic rows would exceed --max-rows {rows - 1:,} "
        f"({rows // 6:,} training faces × 6 expressions); nothing was written"
    ]
    assert not store.exists(store.run("r").synthetic(1))  # fold 1 has no checkpoint: nothing got that far


def _rewrite(store: Store, folder: str, name: str, change) -> None:
    """Rewrites one shard with `change(table)` and records its new checksum in the manifest."""
    path = f"{folder}/{name}"
    table = change(pq.read_table(path))
    pq.write_table(table, path)
    manifest = store.read_json(f"{folder}/{MANIFEST}")
    for s in manifest["shards"]:
        if s["file"] == name:
            data = open(path, "rb").read()
            s.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), rows=table.num_rows)
    store.write_json(f"{folder}/{MANIFEST}", manifest)


@pytest.mark.parametrize("fault", ["missing", "duplicate", "foreign", "mislabelled"])
def test_verify_names_a_missing_pair_a_duplicate_and_a_foreign_source(scaled, fault):
    store = Store.from_uri(scaled)
    src = store.run("r").synthetic(0)
    run = f"m-{fault}"
    folder = store.run(run).synthetic(0)
    shutil.copytree(src, folder)
    first = pq.read_table(f"{src}/part-00000.parquet")
    if fault == "missing":  # the fold's least (source face, target) pair goes missing
        shards = [s["file"] for s in store.read_json(f"{src}/{MANIFEST}")["shards"]]
        pairs = {
            name: list(zip(*(pq.read_table(f"{src}/{name}")[c].to_pylist() for c in ("source_face_id", "label"))))
            for name in shards
        }
        least = min(p for ps in pairs.values() for p in ps)
        shard = next(name for name, ps in pairs.items() if least in ps)
        _rewrite(store, folder, shard, lambda t: t.filter(pa.array([p != least for p in pairs[shard]])))
        cls = read_card(store, "demo")["classes"][least[1]]
        expected = [f"fold 0: 1 (source face, target) pair(s) missing, e.g. ({least[0]}, {cls})"]
    elif fault == "duplicate":
        _rewrite(store, folder, "part-00000.parquet", lambda t: pa.concat_tables([t, t.slice(0, 1)]))
        expected = [f"fold 0: 1 duplicate face_id(s), e.g. {first['face_id'][0].as_py()}"]
    elif fault == "foreign":
        test_face = read_faces(store, "demo", columns=["face_id"], fold=0)["face_id"][0].as_py()

        def foreign(t):
            row = t.slice(0, 1).to_pylist()[0]
            row.update(face_id=synthetic_face_id(test_face, row["label"]), source_face_id=test_face)
            return pa.concat_tables([t, pa.Table.from_pylist([row], schema=t.schema)])

        _rewrite(store, folder, "part-00000.parquet", foreign)
        expected = ["fold 0: 1 synthetic face(s) from faces outside the fold's training split"]
    else:  # row 0 takes row 1's face_id: a duplicate id whose pair is not duplicated
        other = first["face_id"][1].as_py()
        ids = pa.array([other] + first["face_id"].to_pylist()[1:])
        _rewrite(store, folder, "part-00000.parquet", lambda t: t.set_column(0, "face_id", ids))
        shard = f"{store.uri_of_path(folder)}/part-00000.parquet"
        expected = [f"fold 0: face_id(s) that are not their (source face, target)'s in {shard}: 1, e.g. {other}"]
    assert verify_fold(store, run, 0) == expected


def test_shards_are_written_in_row_groups(tmp_path, monkeypatch):
    """write_shard, plain Python: a shard of 50 rows in groups of 16 when the bound says so."""
    monkeypatch.setattr(face_table, "ROW_GROUP_ROWS", (8, 16))
    store = Store.from_uri(str(tmp_path))
    n = 50
    batch = {
        "shard": np.zeros(n, dtype=np.int64),
        "spec_id": np.array(["spec"] * n, dtype=object),
        "source_face_id": np.array([f"s{i:03d}" for i in range(n)], dtype=object),
        "subject": np.array(["D000"] * n, dtype=object),
        "source_label": np.zeros(n, dtype=np.int64),
        "label": np.ones(n, dtype=np.int64),
        "image": np.random.default_rng(0).integers(0, 255, (n, 8, 8), dtype=np.uint8),
        "score": np.full(n, np.nan, dtype=np.float32),
        "shard_rows": np.full(n, n),
    }
    write_shard(batch, store.run("r"), 0, ["a", "b"], "ckpt@sha256:0")
    meta = pq.ParquetFile(f"{tmp_path}/runs/r/synthetic/fold-0/part-00000.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [16, 16, 16, 2]

    # A shard that reached the writer in two pieces is refused, not written as a partial shard.
    part = {k: v[:30] for k, v in batch.items()}
    with pytest.raises(SynthError, match="shard 0 reached the writer split: 30 of 50 rows"):
        write_shard(part, store.run("r2"), 0, ["a", "b"], "ckpt@sha256:0")
    assert not (tmp_path / "runs" / "r2").exists()


def test_stage_probe_sees_the_object_store_and_driver_memory(ray_local):
    import ray

    with StageProbe(interval=0.05) as probe:
        ref = ray.put(np.zeros(24 << 20, dtype=np.uint8))  # 24 MB in the object store
        ballast = np.ones(48 << 20, dtype=np.uint8)  # 48 MB of driver memory
        ray.get(ref)
    r = probe.result()
    del ref, ballast
    assert r["object_store_peak_mb"] >= 23 and r["driver_peak_rss_mb"] >= 48
    assert r["wall_s"] > 0 and r["spilled_mb"] == 0


def test_both_pyarrow_s3_filesystems_read_and_write_the_same_files(s3_bucket):
    store = Store.from_uri(f"{s3_bucket}/fer")
    assert ARROW_S3 in ARROW_S3_KINDS
    table = pa.table({"label": np.arange(300) % 7, "image": [bytes(100)] * 300})
    paths = []
    for kind in ARROW_S3_KINDS:
        path = store.path("datasets", "t", f"{kind}.parquet")
        pq.write_table(table, path, filesystem=store.arrow_filesystem(kind), row_group_size=100)
        paths.append(path)
    for kind in ARROW_S3_KINDS:  # each reads what the other wrote
        for path in paths:
            assert pq.read_table(path, filesystem=store.arrow_filesystem(kind)).equals(table)
    assert sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(store.path("datasets", "t"))) == [
        "fsspec.parquet",
        "native.parquet",
    ]  # the native filesystem leaves no directory marker in listings
    c = compare_arrow_s3(store, paths, repeats=1)
    assert c["files"] == 2
    assert c["faster"] == min(ARROW_S3_KINDS, key=lambda k: c[k]["whole_s"] + c[k]["row_group_s"] + c[k]["column_s"])
    assert all(c[k]["whole_s"] > 0 and c[k]["row_group_s"] > 0 and c[k]["column_s"] > 0 for k in ARROW_S3_KINDS)


# --- a simulated cluster, and a store that fills up (each in its own process, see the scenario's doc) --------


def _scenario(script: str, args: list[str], workdir, timeout: int, prefix: tuple[str, ...] = ()) -> dict:
    """Runs tests/<script> in a fresh process (no RAY_ADDRESS: it starts its own Ray); its result.json."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = workdir / "scenario.log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [*prefix, sys.executable, str(Path(__file__).with_name(script)), *args],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    assert proc.returncode == 0, log.read_text()[-6000:]
    result = json.loads((workdir / "result.json").read_text())
    assert "exception" not in result, result["exception"] + log.read_text()[-4000:]
    return result


def _can_mount_tmpfs() -> str | None:
    """None when this machine lets a process mount a tmpfs in its own mount namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"


def test_a_store_that_fills_up_on_two_worker_nodes_fails_in_one_line_and_the_rerun_writes_what_one_node_writes(
    scaled, tmp_path
):
    """Fold 0 of `scaled` (synthesised on the session's one-node Ray) again on a head with no CPUs and 2
    worker nodes of 1 CPU (each node more costs the suite seconds of start-up and shows nothing new), onto
    a real full disk (a tmpfs with room for about 40% of the fold's shards): synthesize stops with one line
    naming the file and "no space left on device", leaves no partial file, and the same command then
    completes the fold with the same rows, pixels and file bytes as the one node, spread over the nodes.
    Where this machine cannot mount a tmpfs, the cluster part runs alone."""
    store = Store.from_uri(scaled)
    one = output_checksums(store, "r", 0)
    manifest = store.read_json(f"{store.run('r').synthetic(0)}/{MANIFEST}")
    shards = len(manifest["shards"])
    why = _can_mount_tmpfs()
    room = -1 if why else int(0.4 * sum(s["bytes"] for s in manifest["shards"]))
    prefix = () if why else ("unshare", "--map-root-user", "--mount")
    result = _scenario("disk_full_scenario.py", [scaled, str(tmp_path), str(room)], tmp_path, 240, prefix)
    print("disk-full scenario on 2 nodes:", json.dumps({k: v for k, v in result.items() if k != "checksums"}))

    kept = 0
    if not why:
        first = result["first"]
        assert first["exit_code"] == 1
        assert "Traceback" not in first["stderr"], first["stderr"]
        (line,) = [ln for ln in first["stderr"].splitlines() if ln.startswith("error:")]  # after Ray's own log lines
        assert first["stderr"].strip().splitlines()[-1] == line
        disk = f"{tmp_path}/disk/store/runs/r/synthetic/fold-0/"
        assert re.fullmatch(
            rf"error: fold 0: {re.escape(disk)}(_part|part)-\d{{5}}\.(parquet|json): no space left on device "
            rf"\(writing [\d,]+ bytes\); \d+ of {shards} shards were written and are kept: "
            "free space and run the same command again",
            line,
        ), line
        # Nothing half-written: every file is a complete shard or its sidecar, and there is no manifest yet.
        assert all(re.fullmatch(r"_?part-\d{5}\.(parquet|json)", n) for n in first["files"]), first["files"]
        assert MANIFEST not in first["files"] and any(n.endswith(".parquet") for n in first["files"])
        kept = sum(n.startswith("_part-") for n in first["files"])  # sidecars: the shards that are complete
        assert 0 < kept < shards
        to_write = f"fold 0: {shards} shards, {kept} already written, {shards - kept} to write"
        assert to_write in result["second"]["stdout"], result["second"]["stdout"]

    assert result["second"]["exit_code"] == 0, result["second"]["stderr"]
    assert result["verify"] == {"0": []}
    assert same_output(one, result["checksums"]) == {"fold": True, "shards": True, "files": True, "differ": []}
    placed = result["placement"]
    assert "head" not in placed["tasks"] and placed["nodes_used"] >= 2  # the head has no CPUs
    generators = sum(a.get("Generator", 0) for a in placed["actors"].values())
    tasks = Counter()
    for per_node in placed["tasks"].values():
        tasks.update(per_node)
    # The re-run writes only the shards the first run did not: each once.
    assert generators == 1 and tasks["read_sources"] == tasks["write_shard"] == tasks["Generator"] == shards - kept
