"""`fersnet run` end to end on a real local Ray with an s3:// store (moto): interrupted, resumed, skipped.

The kill lands during synthesis, so this is also synthesis's kill-and-resume test (exactly once).

One pipeline serves every check, because each stage costs Ray start-up time on 2 CPUs: the first
attempt runs as its own driver process and is killed during synthesis; the same command then
finishes the rest (skipping what is done); a third run skips everything and writes no new data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.finetune.job import FinetuneError, FinetuneJob, finetune, fold_dataset
from fersnet_ray.store import Store
from fersnet_ray.synth.verify import verify_run

runner = CliRunner()


def _listing(store: Store, skip: str) -> dict[str, int]:
    """Every file under the store (but `skip`) with its size."""
    out = {}
    for path, info in store.fs.find(store.root, detail=True).items():
        if skip not in path:
            out[path] = info["size"]
    return out


def _shards_written(store: Store, run: str, fold: int) -> int:
    folder = store.synthetic_dir(run, fold)
    if not store.exists(folder):
        return 0
    return sum(p.rsplit("/", 1)[-1].startswith("_part-") for p in store.fs.ls(folder, detail=False))


def test_run_interrupted_resumed_skipped_and_reported(ray_local, s3_bucket, tmp_path):
    uri = f"{s3_bucket}/fer"
    store = Store.from_uri(uri)
    args = ["run", "--store", uri, "--demo-subjects", "6", "--folds", "3", "--train-folds", "0", "--epochs", "2"]
    args += ["--finetune-epochs", "2", "--recognizer-epochs", "2", "--rows-per-shard", "40"]

    # 1. The first attempt, a driver process of its own, killed once synthesis has written a shard.
    address = ray_local.get_runtime_context().gcs_address
    code = f"from fersnet_ray.cli import app; app({args + ['--address', address]!r})"
    log = tmp_path / "first-attempt.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and _shards_written(store, "demo", 0) < 1:
            assert proc.poll() is None, f"the first attempt ended before it was killed:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    written = _shards_written(store, "demo", 0)
    assert written >= 1 and not store.exists(f"{store.synthetic_dir('demo', 0)}/_manifest.json")
    assert verify_run(store, "demo")[0]  # an interrupted fold is never marked complete, and verify says so

    # 2. The same command finishes: finished stages are skipped, synthesis writes only what is missing.
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "prepare: data set 'demo' is prepared" in out.stdout
    assert "fold 0: finished earlier (2/2 epochs), skipped" in out.stdout
    assert f"{written} already written" in out.stdout
    assert verify_run(store, "demo") == {0: []}  # no duplicate face_id, no missing pair, balanced
    names = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(store.synthetic_dir("demo", 0)) if p.endswith(".parquet"))
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))]  # the planned names, each once
    for stage in ("prepare", "train", "synthesize", "finetune", "report"):
        assert f"== {stage}: done" in out.stdout

    # Fine-tuning streamed real + synthetic faces through Ray Data from the store.
    manifest = store.read_json(f"{store.synthetic_dir('demo', 0)}/_manifest.json")
    real = sum(manifest["real_per_class"].values())
    tuned = store.read_json(f"{store.run_dir('demo')}/finetune/fold-0/evaluation.json")
    assert tuned["training_rows"] == real + manifest["rows"] and tuned["synthetic_rows"] == manifest["rows"]
    history = store.read_json(f"{store.run_dir('demo')}/finetune/fold-0/history.json")
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(real + manifest["rows"] - 64 < h["images"] <= real + manifest["rows"] for h in history)
    ds = fold_dataset(store, "demo", "demo", 0, 36, 1, manifest, cache=False).materialize()
    assert ds.count() == real + manifest["rows"] and "ListFiles" in ds.stats()  # read from the store
    assert set(ds.take_batch(4)["image"].shape[1:]) == {1, 36}

    # The report holds the numbers the stages wrote.
    report_dir = store.report_dir("demo")
    md = store.read_bytes(f"{report_dir}/report.md").decode()
    data = json.loads(store.read_bytes(f"{report_dir}/report.json"))
    trained = store.read_json(f"{store.fold_dir('demo', 0)}/evaluation.json")
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["fersnet"]["per_fold"]["0"] == trained["accuracy"]
    assert rows["fersnet+fes-da"]["per_fold"]["0"] == tuned["accuracy"]
    assert f"{100 * trained['accuracy']:.2f}" in md and f"{100 * tuned['accuracy']:.2f}" in md
    assert data["table_v"]["0"] == manifest["quality"]["synthetic_test_accuracy"]
    for png in ("accuracy.png", "class-counts.png", "curves-train.png", "curves-finetune.png", "gates.png"):
        assert f"]({png})" in md and store.read_bytes(f"{report_dir}/{png}")[:4] == b"\x89PNG"
    assert store.read_bytes(f"{report_dir}/contact-sheet-fold-0.png")[:4] == b"\x89PNG"
    assert "mean ± std" in out.stdout and f"report: {uri}/runs/demo/report/report.md" in out.stdout

    # 3. A finished pipeline re-run skips every stage and adds or changes no data.
    before = _listing(store, "/report/")
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "finetune fold 0: finished earlier, skipped" in again.stdout
    assert "fold 0: synthetic shards complete, skipped" in again.stdout
    assert _listing(store, "/report/") == before

    # Fine-tuning refuses a fold whose shards fail verify, or that has none, naming it.
    job = FinetuneJob(store=uri, run="demo", folds=(0,), overwrite=True)
    store.fs.rm(f"{store.synthetic_dir('demo', 0)}/part-00001.parquet")
    with pytest.raises(FinetuneError, match=r"fold 0: synthetic shards fail verify: .*part-00001.parquet is missing"):
        finetune(job)
    store.fs.rm(f"{store.synthetic_dir('demo', 0)}/_manifest.json")
    with pytest.raises(FinetuneError, match="fold 0 has no synthetic shards in s3://.*/synthetic/fold-0"):
        finetune(job)

    # Secrets: the fake AWS credentials every stage ran with appear in no artifact and no output.
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]]
    texts = {"first attempt log": log.read_bytes(), "run output": out.output.encode(), "re-run": again.output.encode()}
    texts.update({path: store.fs.cat_file(path) for path in store.fs.find(store.root)})
    leaks = [where for where, data in texts.items() for s in secrets if s.encode() in data]
    assert len(texts) > 50 and not leaks
