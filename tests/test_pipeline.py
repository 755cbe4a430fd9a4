"""`fersnet run` end to end with an s3:// store (moto): submitted to a Ray cluster, stopped, resumed, skipped.

One pipeline serves every check, because each stage costs Ray start-up time on 2 CPUs. It runs as a
cluster job on a real Ray head (`fersnet submit run`), is stopped with `fersnet jobs stop` during
synthesis, is submitted again and finishes the rest (skipping what is done) and reaches SUCCEEDED,
with its logs read through `fersnet jobs logs`; then a local re-run on the in-process Ray skips
every stage and writes no new data. The stop lands during synthesis, so this is also synthesis's
interrupt-and-resume test (exactly once).

The run trains fold 0 and the final model (`--train-folds 0,final`) side by side, so the same pipeline
shows the final model trained on every subject, synthesised into synthetic/final/ (verify passes),
fine-tuned, reported without a held-out accuracy, and used by `predict` and `export` by default.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from ray_head import AUTH, HEADER
from typer.testing import CliRunner

from fersnet_ray import jobs
from fersnet_ray.cli import app
from fersnet_ray.finetune.job import FinetuneError, FinetuneJob, finetune
from fersnet_ray.foldkey import FINAL, NO_HELD_OUT
from fersnet_ray.report.job import report_is_current
from fersnet_ray.store import Store
from fersnet_ray.synth.verify import verify_run
from fersnet_ray.table import read_faces

runner = CliRunner()


def _listing(store: Store) -> dict[str, tuple]:
    """Every file under the store with its size and modification time."""
    found = store.fs.find(store.root, detail=True)
    return {path: (info["size"], info.get("LastModified")) for path, info in found.items()}


def _shards_written(store: Store, run: str, fold: int) -> int:
    folder = store.run(run).synthetic(fold)
    if not store.exists(folder):
        return 0
    return sum(p.rsplit("/", 1)[-1].startswith("_part-") for p in store.fs.ls(folder, detail=False))


def test_run_submitted_stopped_resumed_skipped_and_reported(head, ray_local, s3_bucket, monkeypatch, tmp_path):
    uri = f"{s3_bucket}/fer"
    store = Store.from_uri(uri)
    args = ["--store", uri, "--demo-subjects", "6", "--folds", "3", "--train-folds", "0,final", "--epochs", "1"]
    args += ["--finetune-epochs", "1", "--recognizer-epochs", "1", "--rows-per-shard", "40"]
    submit = ["submit", "--address", head, "--header", HEADER, "--no-pip"]

    # 1. Submitted to the cluster, stopped once synthesis has written a shard. A RAY_ADDRESS that is not
    # the dashboard must not override --address (Ray's client would let it).
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    first = runner.invoke(app, [*submit, "run", *args])
    assert first.exit_code == 0, first.output
    sid = first.stdout.strip()
    monkeypatch.delenv("RAY_ADDRESS")
    assert sid.startswith("fersnet-run-")
    info = jobs.status(sid, head, AUTH)
    assert info.stage == "run" and info.entrypoint.startswith("python -m fersnet_ray.cli run --store ")
    status = runner.invoke(app, ["jobs", "status", sid, "--address", head, "--header", HEADER])
    assert status.exit_code == 0 and status.stdout.startswith(f"{sid}: "), status.output
    # Address and headers from the environment, as `ray job` reads them.
    listed = runner.invoke(app, ["jobs", "list"], env={"RAY_ADDRESS": head, "RAY_JOB_HEADERS": json.dumps(AUTH)})
    assert listed.exit_code == 0 and sid in listed.stdout, listed.output
    again = runner.invoke(app, [*submit, "--submission-id", sid, "run", *args])
    assert again.exit_code == 1 and "Traceback" not in again.output, again.output
    assert again.stderr.startswith("error: ") and "already exists" in again.stderr.strip().splitlines()[0]
    assert len(again.stderr.strip().splitlines()) == 1
    deadline = time.time() + 300
    while time.time() < deadline and _shards_written(store, "demo", 0) < 1:
        assert jobs.status(sid, head, AUTH).status in ("PENDING", "RUNNING"), jobs.logs(sid, head, AUTH)[-3000:]
        time.sleep(0.2)
    stopped = runner.invoke(app, ["jobs", "stop", sid, "--wait", "--address", head, "--header", HEADER])
    assert stopped.exit_code == 0 and jobs.status(sid, head, AUTH).status == "STOPPED", stopped.output
    written = _shards_written(store, "demo", 0)
    assert written >= 1 and not store.exists(f"{store.run('demo').synthetic(0)}/_manifest.json")
    assert verify_run(store, "demo")[0]  # an interrupted fold is never marked complete, and verify says so

    # 2. Submitted again: finished stages are skipped, synthesis writes only what is missing, SUCCEEDED.
    second = runner.invoke(app, [*submit, "--wait", "run", *args])
    assert second.exit_code == 0, second.output
    sid = second.stdout.strip()
    assert f"job {sid} SUCCEEDED" in second.stderr
    logs = runner.invoke(app, ["jobs", "logs", sid, "--address", head, "--header", HEADER])
    assert logs.exit_code == 0, logs.output
    log = logs.stdout
    assert "prepare: data set 'demo' is prepared" in log
    assert "fold 0: finished earlier (1/1 epochs), skipped" in log
    assert "final: finished earlier (1/1 epochs), skipped" in log
    assert re.search(r"fold 0: \d+ shards, [1-9]\d* already written", log), log  # resumed, not restarted
    assert "does not have any available CPUs" not in log  # Ray Data's false alarm while cached folds train
    for stage in ("prepare", "train", "synthesize", "finetune", "report"):
        assert f"== {stage}: done" in log
    assert "mean ± std" in log and f"report: {uri}/runs/demo/report/report.md" in log
    assert verify_run(store, "demo") == {0: [], FINAL: []}  # no duplicate face_id, no missing pair, balanced
    names = sorted(p.rsplit("/", 1)[-1] for p in store.fs.ls(store.run("demo").synthetic(0)) if p.endswith(".parquet"))
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))]  # the planned names, each once

    # Fine-tuning streamed real + synthetic faces through Ray Data from the store.
    manifest = store.read_json(f"{store.run('demo').synthetic(0)}/_manifest.json")
    real = sum(manifest["real_per_class"].values())
    tuned = store.read_json(f"{store.run('demo').dir}/finetune/fold-0/evaluation.json")
    assert tuned["training_rows"] == real + manifest["rows"] and tuned["synthetic_rows"] == manifest["rows"]
    history = store.read_json(f"{store.run('demo').dir}/finetune/fold-0/history.json")
    assert [h["epoch"] for h in history] == [0]
    # Every real and synthetic face went through the workers' Ray Data shard (less a ragged last batch).
    assert real + manifest["rows"] - 64 < history[0]["images"] <= real + manifest["rows"]
    assert "finetune (fes-da) fold 0 epoch 1/1 cls" in log and f"({history[0]['images']} faces," in log

    # The report holds the numbers the stages wrote.
    report_dir = store.run("demo").report
    md = store.read_bytes(f"{report_dir}/report.md").decode()
    data = json.loads(store.read_bytes(f"{report_dir}/report.json"))
    trained = store.read_json(f"{store.run('demo').fold(0)}/evaluation.json")
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["fersnet"]["per_fold"]["0"] == trained["accuracy"]
    assert rows["fersnet+fes-da"]["per_fold"]["0"] == tuned["accuracy"]
    assert f"{100 * trained['accuracy']:.2f}" in md and f"{100 * tuned['accuracy']:.2f}" in md
    assert data["table_v"]["0"] == manifest["quality"]["synthetic_test_accuracy"]
    for png in ("accuracy.png", "class-counts.png", "curves-train.png", "curves-finetune.png", "gates.png"):
        assert f"]({png})" in md and store.read_bytes(f"{report_dir}/{png}")[:4] == b"\x89PNG"
    assert store.read_bytes(f"{report_dir}/contact-sheet-fold-0.png")[:4] == b"\x89PNG"

    # The final model: every subject, no test faces, so no accuracy anywhere but the fold's; said plainly.
    final_eval = store.read_json(f"{store.run('demo').fold(FINAL)}/evaluation.json")
    assert final_eval["accuracy"] is None and final_eval["held_out"] is False and final_eval["note"] == NO_HELD_OUT
    assert (final_eval["training_subjects"], final_eval["training_faces"]) == (6, 126)
    assert not any("accuracy" in h for h in store.read_json(f"{store.run('demo').fold(FINAL)}/history.json"))
    final_manifest = store.read_json(f"{store.run('demo').synthetic(FINAL)}/_manifest.json")
    assert final_manifest["balanced"] and final_manifest["rows"] == 126 * 6  # every face, every other expression
    assert final_manifest["quality"]["synthetic_test_accuracy"] is None  # no Table V without held-out subjects
    tuned_final = store.read_json(f"{store.run('demo').fold(FINAL, 'finetune')}/evaluation.json")
    assert tuned_final["accuracy"] is None and tuned_final["training_rows"] == 126 + final_manifest["rows"]
    assert "**it has no held-out accuracy**" in md and "Table VI above (1 fold(s) of this run" in md
    assert set(data["table_v"]) == {"0"} and [r["per_fold"].keys() for r in data["rows"]] == [{"0"}, {"0"}]
    assert store.read_bytes(f"{report_dir}/contact-sheet-final.png")[:4] == b"\x89PNG"

    # 3. A finished pipeline re-run skips every stage and adds or changes no data.
    before = _listing(store)
    again = runner.invoke(app, ["run", *args])
    assert again.exit_code == 0, again.output
    assert "finetune fold 0: finished earlier, skipped" in again.stdout
    assert "finetune final: finished earlier, skipped" in again.stdout
    assert "fold 0: synthetic shards complete, skipped" in again.stdout
    assert "final: synthetic shards complete, skipped" in again.stdout
    assert "final model (every subject): trained, synthesised, fine-tuned (fersnet+fes-da); no held-out" in again.stdout
    assert "report: drawn from the stages' current output already, skipped" in again.stdout
    assert "mean ± std" in again.stdout and f"report: {uri}/runs/demo/report/report.md" in again.stdout
    assert _listing(store) == before

    # predict and export use the final model by default; the fold is still there with --fold 0.
    faces = read_faces(store, "demo", columns=["face_id", "label_name", "image"]).slice(0, 8).to_pydict()
    for fid, name, png in zip(faces["face_id"], faces["label_name"], faces["image"]):
        (tmp_path / "src" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name / f"{fid}.png").write_bytes(png)
    base = ["--store", uri, "--run", "demo", "--source", str(tmp_path / "src"), "--dataset-adapter", "folder"]
    predicted = runner.invoke(app, ["predict", *base, "--out", str(tmp_path / "final.csv")])
    assert predicted.exit_code == 0, predicted.output
    assert "models: the final model (every subject; the default when it has finished)" in predicted.output
    assert "final model (every subject, no held-out accuracy): fine-tuned (FES-DA), epoch 1" in predicted.output
    assert "this accuracy is not a held-out one" in predicted.output and "8 images classified" in predicted.output
    exported = runner.invoke(app, ["export", "--store", uri, "--run", "demo", "--out", str(tmp_path / "export")])
    assert exported.exit_code == 0, exported.output
    card = json.loads((tmp_path / "export" / "fersnet-card.json").read_text())
    assert (card["source"]["fold"], card["source"]["stage"]) == (FINAL, "finetune")
    assert card["held_out_accuracy"] == NO_HELD_OUT and card["checks"]["torchscript"]["within_tolerance"]
    assert card["source"]["checkpoint"] == f"{uri}/runs/demo/finetune/final/checkpoint-epoch-0001"
    assert _listing(store) == before  # using the models writes nothing into the store

    # The control's row: the report lists the run's real-only fine-tuning (runs/<run>/finetune-real/, as
    # `fersnet finetune --data real` writes it) beside FES-DA, with the paired per-fold difference. Its
    # fold record is FES-DA's under the control's config with one more face right: fine-tuning is the same
    # loop for both (it ran above), and the control's own data (the real faces repeated to FES-DA's epoch
    # length, so the same steps) are checked in test_synth; a live control run here would cost a Ray Train
    # start-up on 2 CPUs for no other check.
    run_dir = store.run("demo").dir
    cfg = store.read_json(f"{run_dir}/finetune/config.json")
    store.write_json(f"{run_dir}/finetune-real/config.json", {**cfg, "finetune": {**cfg["finetune"], "data": "real"}})
    correct = tuned["correct"] + (1 if tuned["correct"] < tuned["total"] else -1)
    ctrl = {**tuned, "data": "real", "synthetic_rows": 0, "correct": correct, "accuracy": correct / tuned["total"]}
    store.write_json(f"{run_dir}/finetune-real/fold-0/evaluation.json", ctrl)
    reported = runner.invoke(app, ["report", "--store", uri, "--run", "demo"])
    assert reported.exit_code == 0, reported.output
    data = json.loads(store.read_bytes(f"{report_dir}/report.json"))
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["fersnet+real-only"]["per_fold"]["0"] == ctrl["accuracy"]
    pair = {(p["row"], p["baseline"]): p for p in data["paired"]}[("fersnet+fes-da", "fersnet+real-only")]
    assert pair["folds"] == 1 and pair["mean_diff"] == pytest.approx(tuned["accuracy"] - ctrl["accuracy"])
    md = store.read_bytes(f"{report_dir}/report.md").decode()
    assert "fine-tuned on real faces only (control)" in md and "Paired per-fold comparisons" in md

    # Fine-tuning refuses a fold whose shards fail verify, or that has none, naming it.
    job = FinetuneJob(store=uri, run="demo", folds=(0,), overwrite=True)
    store.fs.rm(f"{store.run('demo').synthetic(0)}/part-00001.parquet")
    with pytest.raises(FinetuneError, match=r"fold 0: synthetic shards fail verify: .*part-00001.parquet is missing"):
        finetune(job)
    store.fs.rm(f"{store.run('demo').synthetic(0)}/_manifest.json")
    with pytest.raises(FinetuneError, match="fold 0 has no synthetic shards in s3://.*/synthetic/fold-0"):
        finetune(job)
    assert not report_is_current(uri, "demo")  # the report no longer matches what the stages hold

    # Secrets: the fake AWS credentials every stage ran with appear in no artifact and no output.
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]]
    texts = {"job logs": log.encode(), "local re-run": again.output.encode()}
    texts.update({path: store.fs.cat_file(path) for path in store.fs.find(store.root)})
    leaks = [where for where, data in texts.items() for s in secrets if s.encode() in data]
    assert len(texts) > 50 and not leaks
