"""Checkpoints (fersnet_ray/checkpoint.py): round trip, weights-only loading, corruption, single-read resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train import toy_faces

from fersnet_ray.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_latest_checkpoint,
    read_checkpoint,
    write_checkpoint_dir,
)
from fersnet_ray.store import Store
from fersnet_ray.train.config import make_experiment
from fersnet_ray.train.data import TargetSampler
from fersnet_ray.train.loop import FoldState, evaluate, train_epoch


def test_checkpoint_round_trip_weights_only_and_corruption(tmp_path):
    exp = make_experiment("tiny", epochs=2)
    state = FoldState.create(exp)
    faces = toy_faces()
    train_epoch(state, faces, TargetSampler(faces.labels, faces.subjects, 0))
    folder = tmp_path / "runs" / "r" / "fold-0" / "checkpoint-epoch-0001"
    folder.mkdir(parents=True)
    write_checkpoint_dir(state.state_dict(), str(folder))
    store = Store.from_uri(str(tmp_path))
    assert latest_checkpoint(store, "r", 0) == str(folder)
    restored = FoldState.create(exp)
    restored.load_state_dict(read_checkpoint(store, str(folder)))
    assert restored.epoch == 1 and restored.sched_g.last_epoch == state.sched_g.last_epoch
    for a, b in zip(restored.model.state_dict().values(), state.model.state_dict().values()):
        assert torch.equal(a, b)
    result = evaluate(restored.model, faces, 32)
    assert np.array(result["confusion"]).sum() == len(faces) == result["total"]

    (folder / "state.pt").write_bytes((folder / "state.pt").read_bytes()[:100])  # truncated upload
    with pytest.raises(CheckpointError, match="checkpoint-epoch-0001/state.pt is incomplete or corrupt"):
        read_checkpoint(store, str(folder))
    assert latest_checkpoint(store, "r", 0) is None


def test_the_newest_checkpoint_is_found_without_download_and_loaded_with_one_read(tmp_path, monkeypatch):
    """Completeness is a size check against meta.json; the checksum is verified while loading, so the
    state.pt a worker resumes from is downloaded once. A corrupt one of the right size is skipped."""
    exp = make_experiment("tiny", epochs=3)
    state = FoldState.create(exp)
    folder = tmp_path / "runs" / "r" / "fold-0"
    for epoch in (1, 2):
        state.epoch = epoch
        (folder / f"checkpoint-epoch-{epoch:04d}").mkdir(parents=True)
        write_checkpoint_dir(state.state_dict(), str(folder / f"checkpoint-epoch-{epoch:04d}"))
    store = Store.from_uri(str(tmp_path))
    reads = []
    fs_open = store.fs.open
    monkeypatch.setattr(store.fs, "open", lambda path, *a, **k: reads.append(path) or fs_open(path, *a, **k))
    assert latest_checkpoint(store, "r", 0).endswith("checkpoint-epoch-0002")
    assert not [p for p in reads if p.endswith("state.pt")]
    path, loaded = load_latest_checkpoint(store, str(folder))
    assert path.endswith("checkpoint-epoch-0002") and loaded["epoch"] == 2
    assert len([p for p in reads if p.endswith("state.pt")]) == 1
    assert load_latest_checkpoint(store, str(folder), newer_than=2) is None  # nothing newer: nothing read

    newest = folder / "checkpoint-epoch-0002" / "state.pt"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF  # bit rot: same size, wrong checksum
    newest.write_bytes(bytes(data))
    path, loaded = load_latest_checkpoint(store, str(folder))
    assert path.endswith("checkpoint-epoch-0001") and loaded["epoch"] == 1
