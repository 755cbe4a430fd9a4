"""`fersnet finetune --classifier` on a real local Ray with an s3:// store (moto): small-cnn, resnet18 and a
TorchScript model fine-tune from the synthetic shards, real-only and real + synthetic, resume, and are reported.

Built on conftest's `trained_run` (a tiny FERSNet on the 6-subject demo set): its fold 0 is copied to
s3://classifiers/fer and synthesised once without the Table V recogniser; every fine-tuning here is one
epoch or two on fold 0, the independent ones two at a time (2 CPUs, one Ray Train worker each).
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fersnet_ray.cli import app
from fersnet_ray.finetune.bench import bench_classifier, bench_table
from fersnet_ray.finetune.job import FinetuneJob, finetune
from fersnet_ray.finetune.loop import FinetuneConfig
from fersnet_ray.report.job import write_report
from fersnet_ray.store import Store

# About 4 minutes on 2 idle cores (six Ray Train fits and a synthesis): past the suite's 8-minute budget
# until it shares the pipeline test's run. Passed when merged (`FERSNET_SLOW_TESTS=1 python -m pytest
# tests/test_finetune_classifiers.py`: 1 passed, 233 s). The plain-PyTorch classifier tests run always.
pytestmark = pytest.mark.skipif(not os.environ.get("FERSNET_SLOW_TESTS"), reason="slow: set FERSNET_SLOW_TESTS=1")

runner = CliRunner()


@pytest.fixture(scope="module")
def synthesised(trained_run, s3_endpoint):
    """Fold 0 of `trained_run` with its synthetic shards, in s3://classifiers/fer, run "r"."""
    import boto3

    from fersnet_ray.synth.job import SynthJob, synthesize

    boto3.client("s3").create_bucket(Bucket="classifiers")
    source, uri = Store.from_uri(trained_run[0]), "s3://classifiers/fer"
    store = Store.from_uri(uri)
    for part in ("datasets", "runs/r/config.json", "runs/r/fold-0"):
        store.fs.copy(source.path(part), store.path(part), recursive=True)
    synthesize(SynthJob(store=uri, run="r", folds=(0,), rows_per_shard=300, quality=False))
    return uri


def _job(uri: str, **config) -> FinetuneJob:
    cfg = FinetuneConfig.for_classifier(**{"epochs": 1, "batch_size": 32, "cache": True, **config})
    return FinetuneJob(store=uri, run="r", folds=(0,), config=asdict(cfg), parallel_folds=1)


def _both(*jobs: FinetuneJob) -> list[dict]:
    """Fine-tunings side by side: each holds one of the 2 CPUs (cached data need no spare CPU)."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(finetune, jobs))


class Tiny(nn.Module):
    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, S, S) → (N, classes)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _put_scripted(store: Store, name: str, model: nn.Module) -> str:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buf)
    store.write_bytes(store.path("models", name), buf.getvalue())
    return store.uri_of("models", name)


def test_classifiers_fine_tune_from_shards_in_both_modes_resume_and_are_reported(synthesised):
    uri = synthesised
    store = Store.from_uri(uri)
    run_dir = store.run("r").dir
    manifest = store.read_json(f"{store.run('r').synthetic(0)}/_manifest.json")
    real = sum(manifest["real_per_class"].values())

    # Bad input ends before any work, in one line: an unknown name lists the choices.
    bad = runner.invoke(app, ["finetune", "--store", uri, "--run", "r", "--classifier", "vgg"])
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1, bad.output
    assert "unknown classifier 'vgg'; choose one of fersnet, small-cnn, resnet18" in bad.stderr
    wrong = _put_scripted(store, "three.pt", Tiny(classes=3))
    bad = runner.invoke(app, ["finetune", "--store", uri, "--run", "r", "--classifier", f"torchscript:{wrong}"])
    assert bad.exit_code == 1 and "returned a tensor of shape (2, 3) for a (2, 1, 32, 32) input" in bad.stderr
    assert not store.exists(f"{run_dir}/finetune-torchscript-three")

    # small-cnn from scratch: the benchmark of jobs/bench_classifiers.py runs the real-only control, then
    # real + synthetic, two epochs each with a checkpoint after each (so the control can be interrupted).
    bench = bench_classifier(uri, "r", "small-cnn", (0,), epochs=2, checkpoint_every=1, batch_size=32, cache=True)
    tuned = store.read_json(f"{run_dir}/finetune-small-cnn/fold-0/evaluation.json")
    ctrl = store.read_json(f"{run_dir}/finetune-small-cnn-real/fold-0/evaluation.json")
    assert tuned["classifier"] == "small-cnn" and tuned["variant"] == "small-cnn+fes-da"
    assert tuned["training_rows"] == real + manifest["rows"] and tuned["synthetic_rows"] == manifest["rows"]
    assert ctrl["training_rows"] == real * round((real + manifest["rows"]) / real) and ctrl["data"] == "real"
    assert bench["real+synthetic"]["per_fold"][0] == tuned["accuracy"] and bench["real"]["epochs"] == [2]
    assert bench["paired"]["mean_diff"] == pytest.approx(tuned["accuracy"] - ctrl["accuracy"])
    assert "| difference |" in bench_table(bench)

    # The control as a crash after epoch 1's checkpoint leaves it (as test_train does it): the same call
    # continues from that checkpoint, not from scratch.
    folder = f"{run_dir}/finetune-small-cnn-real/fold-0"
    before = store.read_json(f"{folder}/history.json")
    for name in ("checkpoint-epoch-0002", "evaluation.json", "history.json", "checkpoint_manager_snapshot.json"):
        store.remove(f"{folder}/{name}")
    finetune(_job(uri, classifier="small-cnn", data="real", epochs=2, checkpoint_every=1))
    after = store.read_json(f"{folder}/history.json")
    assert [h["epoch"] for h in after] == [0, 1]
    assert after[0] == before[0]  # epoch 1 was not run again: its record (and wall time) came from the checkpoint

    # A standard backbone, in both modes, and a TorchScript model made here (real faces only).
    mine = _put_scripted(store, "mine.pt", Tiny())
    _both(_job(uri, classifier="resnet18"), _job(uri, classifier="resnet18", data="real"))
    out = runner.invoke(
        app,
        ["finetune", "--store", uri, "--run", "r", "--folds", "0", "--classifier", f"torchscript:{mine}"]
        + ["--data", "real", "--epochs", "1", "--batch-size", "32"],
    )
    assert out.exit_code == 0, out.output
    scripted = store.read_json(f"{run_dir}/finetune-torchscript-mine-real/fold-0/evaluation.json")
    assert scripted["total"] > 0 and 0.0 <= scripted["accuracy"] <= 1.0
    assert sum(map(sum, scripted["confusion"])) == scripted["total"]

    # The report: each classifier's two rows and their paired per-fold difference; FERSNet's rows stay.
    write_report(uri, "r")
    data = store.read_json(f"{store.run('r').report}/report.json")
    rows = {r["key"]: r for r in data["rows"]}
    assert rows["small-cnn+fes-da"]["per_fold"]["0"] == tuned["accuracy"]
    assert rows["small-cnn+real-only"]["per_fold"]["0"] == store.read_json(f"{folder}/evaluation.json")["accuracy"]
    assert {"fersnet", "resnet18+fes-da", "resnet18+real-only", "torchscript-mine+real-only"} <= set(rows)
    pairs = {(p["row"], p["baseline"]): p for p in data["paired"]}
    pair = pairs[("small-cnn+fes-da", "small-cnn+real-only")]
    assert pair["folds"] == 1 and pair["improved"] + pair["tied"] + pair["worse"] == 1
    assert ("resnet18+fes-da", "resnet18+real-only") in pairs
    md = store.read_bytes(f"{store.run('r').report}/report.md").decode()
    assert "small-cnn on real faces only (control)" in md and "resnet18: real + synthetic against real faces only" in md
