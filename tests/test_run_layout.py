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
    # The Store's older helpers are the same paths.
    assert store.fold_dir("demo", 3) == run.fold(3) and store.synthetic_dir("demo", 3) == run.synthetic(3)
    assert store.run_dir("demo") == run.dir and store.report_dir("demo") == run.report
    data = store.dataset("demo")
    assert data.dir == f"{tmp_path}/datasets/demo" == store.dataset_dir("demo")
    assert data.card == f"{tmp_path}/datasets/demo/_card.json"


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
