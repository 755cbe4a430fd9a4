"""Synthesis on a real local Ray with an s3:// store (moto): balance, schema, exactly-once, repair."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.store import Store
from fersnet_ray.synth.job import MANIFEST, SYNTH_SCHEMA, SynthError, SynthJob, synthesize
from fersnet_ray.synth.verify import verify_run
from fersnet_ray.table import read_faces

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(trained_run, s3_endpoint):
    """The demo data set (6 subjects, 3 folds) and fold 0 of conftest's `trained_run` (a tiny FERSNet
    trained 4 epochs through Ray Train), copied to s3://synth/fer as run "r"."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="synth")
    source, uri = Store.from_uri(trained_run[0]), "s3://synth/fer"
    store = Store.from_uri(uri)
    for part in ("datasets", "runs/r/config.json", "runs/r/fold-0"):
        store.fs.copy(source.path(part), store.path(part), recursive=True)
    assert store.read_bytes(store.path("runs/r/fold-0/evaluation.json"))  # fold 0 finished
    return uri


def shard_files(store: Store, fold: int = 0) -> list[str]:
    folder = store.run("r").synthetic(fold)
    return sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False) if p.endswith(".parquet"))


def test_balanced_schema_and_verify(trained):
    store = Store.from_uri(trained)
    manifest = synthesize(SynthJob(store=trained, run="r", rows_per_shard=60, recognizer_epochs=2))[0]
    faces = read_faces(store, "demo", columns=["face_id", "label", "fold"]).to_pylist()
    train_faces = [f for f in faces if f["fold"] != 0]
    assert manifest["rows"] == len(train_faces) * 6  # every other expression of every training face
    assert manifest["balanced"] and set(manifest["total_per_class"].values()) == {len(train_faces)}
    files = shard_files(store)
    assert files == [f"part-{i:05d}.parquet" for i in range(len(manifest["shards"]))] and len(files) > 1
    table = pq.read_table(store.run("r").synthetic(0), filesystem=store.arrow_fs)  # pyarrow alone reads it
    assert table.schema.equals(SYNTH_SCHEMA)
    assert len(set(table["face_id"].to_pylist())) == table.num_rows
    rows = table.drop(["image"]).to_pylist()
    assert all(r["label"] != r["source_label"] and r["fold"] == 0 for r in rows)
    assert all(r["checkpoint"].startswith("runs/r/fold-0/checkpoint-epoch-0004@sha256:") for r in rows)
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)  # the recogniser's probability of the target
    quality = manifest["quality"]  # Table V protocol on the held-out subjects of fold 0
    assert quality["synthetic_test_faces"] == 6 * sum(f["fold"] == 0 for f in faces)
    assert 0.0 <= quality["synthetic_test_accuracy"] <= 1.0
    assert store.read_bytes(f"{store.run('r').synthetic(0)}/_contact_sheet.png")[:4] == b"\x89PNG"
    assert verify_run(store, "r") == {0: []}
    out = runner.invoke(app, ["verify", "--store", trained, "--run", "r"])
    assert out.exit_code == 0 and "1 fold(s) verified" in out.stdout

    # Complete output is skipped on a re-run.
    again = runner.invoke(app, ["synthesize", "--store", trained, "--run", "r", "--rows-per-shard", "60"])
    assert again.exit_code == 0 and "fold 0: synthetic shards complete, skipped" in again.stdout


def test_deleted_shard_fails_verify_and_rerun_restores_it(trained):
    store = Store.from_uri(trained)
    synthesize(SynthJob(store=trained, run="r", rows_per_shard=60))
    files = shard_files(store)
    before = pq.read_table(store.run("r").synthetic(0), filesystem=store.arrow_fs).sort_by("face_id")
    store.fs.rm(f"{store.run('r').synthetic(0)}/{files[1]}")
    out = runner.invoke(app, ["verify", "--store", trained, "--run", "r"])
    assert out.exit_code == 1 and f"shard s3://synth/fer/runs/r/synthetic/fold-0/{files[1]} is missing" in out.stderr

    # Re-running writes the missing shard only (the manifest is rewritten, so the fold is redone).
    store.remove(f"{store.run('r').synthetic(0)}/{MANIFEST}")
    out = runner.invoke(app, ["synthesize", "--store", trained, "--run", "r", "--rows-per-shard", "60"])
    assert out.exit_code == 0 and f"{len(files) - 1} already written, 1 to write" in out.stdout
    assert shard_files(store) == files
    after = pq.read_table(store.run("r").synthetic(0), filesystem=store.arrow_fs).sort_by("face_id")
    assert after.drop(["image"]).equals(before.drop(["image"]))
    assert verify_run(store, "r") == {0: []}


def test_min_score_filters_and_reports_balance_as_it_is(trained):
    store = Store.from_uri(trained)
    synthesize(SynthJob(store=trained, run="r", rows_per_shard=60, recognizer_epochs=2))  # skipped if complete
    scores = pq.read_table(store.run("r").synthetic(0), filesystem=store.arrow_fs, columns=["score"])["score"]
    threshold = float(np.median(scores.to_numpy()))  # about half the rows fall below it
    manifest = synthesize(SynthJob(store=trained, run="r", rows_per_shard=60, min_score=threshold))[0]
    below = sum(manifest["below_min_score_per_class"].values())
    assert below > 0 and manifest["rows"] + below == 6 * sum(manifest["real_per_class"].values())
    table = pq.read_table(store.run("r").synthetic(0), filesystem=store.arrow_fs, columns=["score"])
    assert table.num_rows > 0 and min(table["score"].to_pylist()) >= threshold
    assert manifest["balanced"] == (len(set(manifest["total_per_class"].values())) == 1)
    assert verify_run(store, "r") == {0: []}  # filtered rows are recorded, not missing


def test_bad_inputs_are_clear_errors(trained, tmp_path):
    store = Store.from_uri(trained)
    with pytest.raises(SynthError, match=r"fold 2 of run 'r' has no complete checkpoint"):
        synthesize(SynthJob(store=trained, run="r", folds=(2,)))
    out = runner.invoke(app, ["synthesize", "--store", trained, "--run", "nope"])
    assert out.exit_code == 1 and out.stderr.startswith("error: no run 'nope' in s3://synth/fer")
    # A foreign Parquet file in the output folder is named, not counted.
    import pyarrow as pa

    pq.write_table(pa.table({"x": [1]}), f"{store.run('r').synthetic(0)}/part-09999.parquet", filesystem=store.arrow_fs)
    with pytest.raises(
        SynthError,
        match=r"fer/runs/r/synthetic/fold-0/part-09999.parquet: not a synthetic shard of this version .*--overwrite",
    ):
        synthesize(SynthJob(store=trained, run="r", overwrite=False, rows_per_shard=61))
    store.fs.rm(f"{store.run('r').synthetic(0)}/part-09999.parquet")


def test_weighted_fine_tuning_rows_carry_their_weight_and_need_scores(trained):
    """FES-DA with weighted synthetic rows (`fersnet finetune --synthetic-weight --weight-by-score`): real
    rows weigh 1, each synthetic row synthetic_weight × its recogniser score, read through Ray Data."""
    from fersnet_ray.finetune.job import FinetuneError, fold_dataset, fold_inputs
    from fersnet_ray.finetune.loop import FinetuneConfig

    store = Store.from_uri(trained)
    synthesize(SynthJob(store=trained, run="r", rows_per_shard=60, recognizer_epochs=2))  # skipped if complete
    config = store.read_json(store.run("r").config())
    manifest_path = f"{store.run('r').synthetic(0)}/{MANIFEST}"
    manifest = store.read_json(manifest_path)
    cfg = FinetuneConfig(synthetic_weight=0.5, score_weighted=True)
    load = config["experiment"]["train"]["load_size"]
    ds = fold_dataset(store, config["dataset"], "r", 0, load, 1, manifest, cache=False, cfg=cfg)
    weights = np.sort(np.asarray([r["weight"] for r in ds.select_columns(["weight"]).take_all()]))
    real = sum(manifest["real_per_class"].values())
    scores = pq.read_table(store.run("r").synthetic(0), filesystem=store.arrow_fs, columns=["score"])["score"]
    want = np.sort(np.concatenate([np.ones(real), 0.5 * scores.to_numpy()]))
    assert len(weights) == real + manifest["rows"] and np.allclose(weights, want)

    # The control (`--data real`): the fold's real training faces alone, each repeated as often as makes an
    # epoch as long as FES-DA's, so both fine-tunings take the same steps.
    from fersnet_ray.finetune.job import real_repeats

    repeats = real_repeats(manifest)
    assert repeats == round((real + manifest["rows"]) / real) > 1
    control = fold_dataset(
        store, config["dataset"], "r", 0, load, 1, manifest, cache=False, cfg=FinetuneConfig(data="real")
    )
    labels = np.bincount(
        [r["label"] for r in control.select_columns(["label"]).take_all()], minlength=len(manifest["classes"])
    )
    per_class = [manifest["real_per_class"][name] for name in manifest["classes"]]
    assert labels.tolist() == [repeats * n for n in per_class] and labels.sum() == repeats * real

    # FES-DA on the rows scored >= a threshold (`--min-score`): the kept rows, drawn again in the dropped
    # ones' places so that an epoch is FES-DA's (the same steps, the same real faces).
    from fersnet_ray.finetune.job import FinetuneJob, finetune, kept_rows

    threshold = float(np.median(scores.to_numpy()))
    kept = kept_rows(store, "r", 0, manifest, threshold)
    assert 0 < kept == int((scores.to_numpy() >= threshold).sum()) < manifest["rows"]
    cfg = FinetuneConfig(min_score=threshold)
    refilled = fold_dataset(store, config["dataset"], "r", 0, load, 1, manifest, cache=False, cfg=cfg, kept=kept)
    labels = np.bincount(refilled.select_columns(["label"]).to_pandas()["label"], minlength=len(per_class))
    assert labels.sum() == real + manifest["rows"] and (labels >= per_class).all()  # the real faces, and fakes
    none = FinetuneConfig(min_score=float(np.nextafter(scores.to_numpy().max(), 2)))
    with pytest.raises(FinetuneError, match=rf"fold 0: none of its {manifest['rows']} synthetic rows is scored >= "):
        finetune(FinetuneJob(store=trained, run="r", folds=(0,), config=asdict(none)))
    assert not store.exists(store.run("r").config(none.folder))  # refused before anything is written

    # Shards synthesised without the recogniser have no scores to weigh by: said before anything runs.
    store.write_json(manifest_path, {**manifest, "quality": None})
    try:
        with pytest.raises(FinetuneError, match=r"fold 0: its synthetic rows carry no recogniser score .*--quality"):
            fold_inputs(store, "r", 0, train_epochs=0, data="real+synthetic", needs_scores=True)
        assert fold_inputs(store, "r", 0, train_epochs=0, data="real+synthetic")[1]["quality"] is None
    finally:
        store.write_json(manifest_path, manifest)
