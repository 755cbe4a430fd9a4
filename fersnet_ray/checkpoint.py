"""Checkpoints: plain files in the store, one module for training and fine-tuning alike.

    <folder>/checkpoint-epoch-NNNN/state.pt    torch.save of a state dict (tensors and plain values only)
    <folder>/checkpoint-epoch-NNNN/meta.json   {"epoch", "sha256", "bytes"}: a half-uploaded state.pt is recognisable

`<folder>` is runs/<run>/fold-<k> (training) or runs/<run>/<finetune folder>/fold-<k>. Every load goes
through `torch.load(weights_only=True)`, so a checkpoint can never run code. `resume_state` and
`report_epoch` are the two Ray Train touch points (marked), shared by the training and fine-tuning workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile

import torch

from fersnet_ray.store import CHECKPOINT_DIR, Store

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or foreign; the message names the file."""


def checkpoint_name(epochs_done: int) -> str:
    """The folder name of a checkpoint after `epochs_done` epochs (`Run.checkpoint` is its path)."""
    return CHECKPOINT_DIR.format(epochs_done)


def write_checkpoint_dir(state_dict: dict, folder: str) -> None:
    """state.pt plus meta.json carrying its SHA-256, so a half-uploaded checkpoint is recognisable."""
    buf = io.BytesIO()
    torch.save(state_dict, buf)
    data = buf.getvalue()
    with open(os.path.join(folder, STATE_FILE), "wb") as f:
        f.write(data)
    meta = {"epoch": state_dict["epoch"], "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump(meta, f)


def load_weights(data: bytes, where: str, error: type[Exception] = CheckpointError):
    """`torch.load(weights_only=True)`: tensors and plain values only, never pickled code; errors name `where`."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickled object other than tensors and plain values: refused, not run
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
        # torch's first line is generic advice (to load with weights_only=False); the next one says what was found
        reason = next((ln for ln in lines[1:] if not ln.startswith("Check the documentation")), lines[0])
        raise error(f"{where} refused by torch.load(weights_only=True): {reason}") from None
    except Exception as e:  # noqa: BLE001 - any other loading failure (truncated, not a torch file): name the file
        raise error(f"{where} does not load: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None


def read_checkpoint(store: Store, path: str) -> dict:
    """Loads a checkpoint folder (weights_only: never unpickles code); errors name the file."""
    where = f"{store.uri_of_path(path)}/{STATE_FILE}" if path.startswith(store.root) else path
    try:
        meta = json.loads(store.read_bytes(f"{path}/{META_FILE}"))
        data = store.read_bytes(f"{path}/{STATE_FILE}")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {where} is missing") from None
    except ValueError:  # a truncated or hand-edited meta.json
        raise CheckpointError(f"checkpoint {where}: its {META_FILE} is not valid JSON") from None
    if not isinstance(meta, dict) or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {where} is incomplete or corrupt (checksum mismatch)")
    state = load_weights(data, f"checkpoint {where}")
    missing = [k for k in ("epoch", "model", "experiment") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {where} is not a fersnet checkpoint (no {', '.join(missing)})")
    return state


def latest_checkpoint(store: Store, run: str, fold: int) -> str | None:
    """The newest checkpoint of a fold that is complete (its checksum matches), or None."""
    return latest_checkpoint_in(store, store.run(run).fold(fold))


def _candidates(store: Store, folder: str) -> list[str]:
    """`checkpoint-epoch-NNNN` folders under `folder`, newest first."""
    if not store.exists(folder):
        return []
    return sorted(
        (p for p in store.fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1].startswith(CHECKPOINT_DIR.split("{")[0])),
        reverse=True,
    )


def _complete_meta(store: Store, path: str) -> dict | None:
    """The folder's meta.json when its state.pt is whole, else None; reads state.pt only for old metas.

    meta.json carries the byte count of state.pt, so completeness is a size check (one listing call, no
    download); the checksum is verified when the checkpoint is loaded (`read_checkpoint`), so a
    checkpoint is read once. Metas without a byte count are checked by hashing, as before.
    """
    try:
        meta = checkpoint_meta(store, path)
        if not isinstance(meta, dict) or "epoch" not in meta:
            return None
        if "bytes" in meta:
            return meta if store.fs.size(f"{path}/{STATE_FILE}") == meta["bytes"] else None
        data = store.read_bytes(f"{path}/{STATE_FILE}")
    except (FileNotFoundError, ValueError):
        return None
    return meta if hashlib.sha256(data).hexdigest() == meta.get("sha256") else None


def latest_checkpoint_in(store: Store, folder: str) -> str | None:
    """The newest complete `checkpoint-epoch-NNNN` folder under `folder` (training or fine-tuning)."""
    for path in _candidates(store, folder):
        if _complete_meta(store, path) is not None:
            return path
        log.warning("skipping incomplete checkpoint %s", path)
    return None


def load_latest_checkpoint(store: Store, folder: str, newer_than: int = -1) -> tuple[str, dict] | None:
    """The newest checkpoint under `folder` with more than `newer_than` epochs, loaded: (path, state) or None.

    Each candidate's state.pt is downloaded once, its checksum verified while loading; one that fails
    (corrupt despite its size) is skipped for the next older one.
    """
    for path in _candidates(store, folder):
        meta = _complete_meta(store, path)
        if meta is None:
            log.warning("skipping incomplete checkpoint %s", path)
            continue
        if int(meta["epoch"]) <= newer_than:
            return None
        try:
            return path, read_checkpoint(store, path)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s", path, e)
    return None


def checkpoint_meta(store: Store, path: str) -> dict:
    """The checkpoint folder's meta.json ({"epoch", "sha256", "bytes"}; no state.pt read)."""
    return json.loads(store.read_bytes(f"{path}/{META_FILE}"))


def checkpoint_epoch(store: Store, path: str) -> int:
    """Epochs done by the checkpoint folder `path`, from its meta.json (no state.pt read)."""
    return int(checkpoint_meta(store, path)["epoch"])


# --- Ray marked place: the workers' resume and report ------------------------------------------------


def resume_state(store: Store, folder: str) -> dict | None:
    """The state dict a worker resumes from, or None to start fresh (training and fine-tuning alike).

    The newer of Ray's registered checkpoint (after a worker failure or a re-run) and the store's newest
    complete one under `folder`, looked up at every (re)start of the worker group. The store's can be
    newer: Ray Train registers a reported checkpoint only when its controller next polls the workers
    (every 2 s), so a node lost just after an upload would otherwise restart from an older one, or epoch 0.
    """
    import ray.train

    state = None
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
    newer = load_latest_checkpoint(store, folder, newer_than=state["epoch"] if state else -1)
    return newer[1] if newer else state


def report_epoch(metrics: dict, state, save: bool, rank: int) -> None:
    """`ray.train.report` of a checkpoint epoch, rank 0 attaching a checkpoint of `state`; other epochs: nothing.

    Shared by training and fine-tuning: `state` has `epoch` and `state_dict()`; every rank reports. Epochs
    without a checkpoint are not reported: nothing reads Ray's copy of the metrics (`state.history` keeps
    them all), and each report cost a worker 0.4-0.9 s, as much as a demo epoch's compute (1.1 s).
    """
    import ray.train

    if not save:
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            write_checkpoint_dir(state.state_dict(), tmp)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(state.epoch))
