"""The store layout is fixed in one place: `Run` and `DatasetLayout` name every path, locally and on S3."""

from __future__ import annotations

import pytest

from fersnet_ray.store import MANIFEST_FILE, Run, Store, StoreError


def test_every_path_of_a_run(tmp_path):
    store = Store.from_uri(str(tmp_path))
    run = store.run("demo")
    root = f"{tmp_path}/runs/demo"
    assert run.dir == root and run.uri == root
    assert run.config() == f"{root}/config.json"
    assert run.evaluation() == f"{root}/evaluation.json"
    assert run.fold(3) == f"{root}/fold-3"
    assert run.evaluation(3) == f"{root}/fold-3/evaluation.json"
    assert run.history(3) == f"{root}/fold-3/history.json"
    assert run.recognizer(3) == f"{root}/fold-3/recognizer.pt"
    assert run.synthetic(3) == f"{root}/synthetic/fold-3"
    assert run.manifest(3) == f"{root}/synthetic/fold-3/_manifest.json"
    assert run.report == f"{root}/report"
    assert run.ablation == f"{root}/ablation.json"
    # A fine-tuning stage has the same files one folder down.
    assert run.stage("finetune-real") == f"{root}/finetune-real"
    assert run.config("finetune-real") == f"{root}/finetune-real/config.json"
    assert run.evaluation(None, "finetune-real") == f"{root}/finetune-real/evaluation.json"
    assert run.evaluation(2, "finetune-real") == f"{root}/finetune-real/fold-2/evaluation.json"
    assert run.history(2, "finetune") == f"{root}/finetune/fold-2/history.json"
    # Checkpoints, synthetic shards and their sidecars, the report's files.
    assert run.checkpoint(3, 12) == f"{root}/fold-3/checkpoint-epoch-0012"
    assert run.checkpoint("final", 2, "finetune") == f"{root}/finetune/final/checkpoint-epoch-0002"
    assert run.shard(3, 7) == f"{root}/synthetic/fold-3/part-00007.parquet"
    assert run.sidecar(3, 7) == f"{root}/synthetic/fold-3/_part-00007.json"
    assert run.synthetic_file(3, "_contact_sheet.png") == f"{root}/synthetic/fold-3/_contact_sheet.png"
    assert run.report_file() == f"{root}/report/report.md"
    assert run.report_file("report.json") == f"{root}/report/report.json"
    data = store.dataset("demo")
    assert data.dir == f"{tmp_path}/datasets/demo"
    assert data.card == f"{tmp_path}/datasets/demo/_card.json"
    assert data.part(3) == f"{tmp_path}/datasets/demo/faces-00003.parquet"


def test_the_stage_of_a_path(tmp_path):
    """`Run.stage_of` reads back which stage folder a checkpoint sits in (export finds its config.json so)."""
    run = Store.from_uri(str(tmp_path)).run("demo")
    assert run.stage_of(run.checkpoint(3, 1)) is None  # training
    assert run.stage_of(run.checkpoint("final", 1)) is None
    assert run.stage_of(run.checkpoint(0, 4, "finetune-small-cnn-real")) == "finetune-small-cnn-real"
    assert run.config(run.stage_of(run.fold("final", "finetune"))) == run.config("finetune")
    with pytest.raises(StoreError, match="not a path of run 'demo'"):
        run.stage_of(f"{tmp_path}/runs/other/fold-0")


def test_names_the_stages_write_are_the_layout_s():
    """Shard and checkpoint names come from the layout, so a file a stage writes is where `Run` looks."""
    from fersnet_ray.checkpoint import checkpoint_name
    from fersnet_ray.synth.job import shard_name

    run = Store.from_uri("/s").run("r")
    assert run.shard(0, 5).rsplit("/", 1)[1] == shard_name(5)
    assert run.checkpoint(0, 5).rsplit("/", 1)[1] == checkpoint_name(5)


def test_s3_paths_and_uris(s3_endpoint):
    run = Store.from_uri("s3://bucket/prefix").run("r")
    assert run.dir == "bucket/prefix/runs/r"  # filesystem paths carry no scheme (fsspec, pyarrow, Ray Data)
    assert run.uri == "s3://bucket/prefix/runs/r"
    assert run.synthetic(0) == "bucket/prefix/runs/r/synthetic/fold-0"


@pytest.mark.parametrize("name", ["", "a/b", "..", "."])
def test_run_names_are_one_folder(tmp_path, name):
    with pytest.raises(StoreError, match="run name"):
        Store.from_uri(str(tmp_path)).run(name)


def test_folds_config_and_missing_files(tmp_path):
    store = Store.from_uri(str(tmp_path))
    run = store.run("r")
    assert not run.exists() and run.folds() == []
    with pytest.raises(StoreError, match=r"no run 'r' in .* \(.*runs/r/config.json is missing\)"):
        run.read_config()
    store.write_json(run.config(), {"dataset": "demo"})
    for k in (0, 2, 10):
        store.write_json(run.evaluation(k), {"accuracy": 1.0})
    store.write_json(f"{run.dir}/fold-x/evaluation.json", {})  # not a fold
    store.write_json(run.evaluation(1, "finetune"), {})
    store.write_bytes(f"{run.synthetic(4)}/part-00000.parquet", b"")
    assert run.exists() and run.read_config() == {"dataset": "demo"}
    assert run.folds() == [0, 2, 10]  # numeric order, not name order
    assert run.folds("finetune") == [1]
    assert run.folds(under=run.synthetic_root) == [4]
    with pytest.raises(StoreError, match="no stage 'finetune' of run 'r'"):
        run.read_config("finetune")


def test_the_final_model_has_its_own_folders(tmp_path):
    run = Store.from_uri(str(tmp_path)).run("r")
    assert run.fold("final") == f"{tmp_path}/runs/r/final"
    assert run.synthetic("final") == f"{tmp_path}/runs/r/synthetic/final"
    assert run.manifest("final") == f"{tmp_path}/runs/r/synthetic/final/_manifest.json"
    assert run.evaluation("final", "finetune") == f"{tmp_path}/runs/r/finetune/final/evaluation.json"
    with pytest.raises(StoreError, match="use a fold number"):
        run.fold(-1)


def test_the_synthetic_manifest_is_where_synthesis_writes_it():
    """`Run.manifest` names the file `synth.job` writes last and `fersnet verify` and fine-tuning read."""
    from fersnet_ray.synth.job import MANIFEST

    assert Run.manifest.__doc__ and MANIFEST == MANIFEST_FILE == "_manifest.json"
