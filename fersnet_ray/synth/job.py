"""Stage 3, synthesize: every missing expression of every training face, written exactly once.

    fersnet synthesize --store URI --run NAME [--folds all --actors 2 --gpus-per-actor 1 --rows-per-shard 1200]

For fold k the sources are the face table's training faces (fold ≠ k). Each source face is
synthesised with every expression other than its own by the fold's FES branch, so real +
synthetic faces per class are equal (the paper's "completely balanced" set). For the final model
(`--folds final`) the sources are every face of the table: the balanced version of the whole data
set, in runs/<run>/synthetic/final/, with the same shard contract (its `fold` column is -1).

Exactly once: the driver plans shards from the face table's metadata alone: the fold's training
rows in table order, cut into consecutive chunks, shard s ↦ `part-{s:05d}.parquet`. The plan
depends only on the table and --rows-per-shard, so a re-run writes the same names. A shard counts
as done when its sidecar `_part-{s:05d}.json` (rows, per-class counts, SHA-256; written after the
Parquet file) matches the file; a re-run after a crash writes only shards that are not done.
Files are written whole or not at all (`Store.write_bytes`: a temporary name moved into place), so
no half-written shard is ever read as done. `_manifest.json`, written last, marks the fold complete.
A store that runs out of space fails the fold with one line naming the file (StoreFullError), and a
full local disk under Ray's object store with one naming the node's disk; the same command then
writes only the shards that are not done.

Ray Data pipeline, one block per shard so the stages overlap:
    read (CPU tasks)  shard spec → source rows from the face table (only the needed row groups), decoded
    generate (actor pool, GPU)  FES branch built once per actor from the checkpoint *path*; bf16
    write (CPU tasks)  PNG encode, Parquet to tmp, move, sidecar → one summary row per shard
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fersnet_ray.foldkey import FINAL, Fold, is_final, label, shard_fold, training_mask
from fersnet_ray.progress import Progress
from fersnet_ray.synth import SynthError
from fersnet_ray.store import (
    MANIFEST_FILE,
    S3_RETRIES,
    SHARD_FILE,
    Run,
    Store,
    StoreError,
    StoreFullError,
    report_retries,
)
from fersnet_ray.table import check_schema, face_id, open_table_file, read_card, row_group_rows, table_files

MANIFEST = MANIFEST_FILE  # `Run.manifest(k)` is its path

# Documented in the README ("Synthetic shards"); same conventions as the face table.
SYNTH_SCHEMA = pa.schema(
    [
        ("face_id", pa.string()),  # deterministic: hash of source face_id and target label
        ("source_face_id", pa.string()),
        ("subject", pa.string()),
        ("label", pa.int64()),  # the target expression
        ("label_name", pa.string()),
        ("source_label", pa.int64()),
        ("fold", pa.int64()),  # the fold whose training split this face augments; -1: the final data set (every face)
        ("image", pa.binary()),  # PNG, the face table's size and channels
        ("checkpoint", pa.string()),  # generator: checkpoint path @ sha256
        ("score", pa.float32()),  # recogniser's probability of the target (null without one)
    ]
)


@dataclass(frozen=True)
class SynthJob:
    store: str
    run: str
    folds: tuple[Fold, ...] | None = None  # None: every trained fold (and the final model when trained)
    actors: int = 1
    gpus_per_actor: float = 0.0
    batch_size: int = 256
    rows_per_shard: int = 1200
    overwrite: bool = False
    min_score: float | None = None  # keep only rows the recogniser gives at least this target probability
    quality: bool = True  # train the fold's recogniser: Table V accuracy, per-row scores, contact sheet
    recognizer_epochs: int = 30
    max_rows: int | None = None  # refuse a fold whose synthetic output would hold more rows, before any work


def synthetic_face_id(source_face_id: str, target: int) -> str:
    return face_id(source_face_id, f"target={target}")


def shard_name(shard: int) -> str:
    """The shard's file name, as the manifest lists it (`Run.shard` is its path)."""
    return SHARD_FILE.format(shard)


def plan_shards(store: Store, dataset: str, fold: Fold, num_classes: int, rows_per_shard: int) -> list[dict]:
    """Shard specs for a fold: consecutive training rows of the face table, in table order (final: every row).

    Each spec: {"shard": s, "rows": [(file, [row indices])...], "sources": n}. Only metadata
    columns are read, never the images.
    """
    per_source = num_classes - 1
    sources_per_shard = max(1, rows_per_shard // per_source)
    entries: list[tuple[str, int]] = []
    for path in table_files(store, dataset):
        folds = open_table_file(store, path).read(columns=["fold"])["fold"].to_numpy()
        entries += [(path, int(i)) for i in np.flatnonzero(training_mask(folds, fold))]
    if not entries:
        raise SynthError(f"face table {dataset!r} has no training faces for {label(fold)}")
    shards = []
    for s, start in enumerate(range(0, len(entries), sources_per_shard)):
        chunk = entries[start : start + sources_per_shard]
        by_file: dict[str, list[int]] = {}
        for path, i in chunk:
            by_file.setdefault(path, []).append(i)
        spec = {"shard": s, "rows": list(by_file.items()), "sources": len(chunk)}
        # Identifies the rows a shard holds: a done shard of another plan (other --rows-per-shard, a
        # re-prepared table) must not count as done.
        spec["spec_id"] = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        shards.append(spec)
    return shards


def shard_done(run: Run, fold: Fold, spec: dict, checkpoint_id: str, min_score: float | None) -> dict | None:
    """The shard's sidecar if its Parquet file is complete (size matches), of this plan, generator and filter."""
    store = run.store
    try:
        info = json.loads(store.read_bytes(run.sidecar(fold, spec["shard"])))
        same = (info["checkpoint"], info.get("min_score"), info.get("spec_id")) == (
            checkpoint_id,
            min_score,
            spec["spec_id"],
        )
        return info if same and store.fs.size(run.shard(fold, spec["shard"])) == info["bytes"] else None
    except (FileNotFoundError, ValueError, KeyError):
        return None


# --- pipeline stages (plain functions; the Ray calls are in `synthesize`) ---------------------------


def read_sources(batch: dict, store: Store, load_size: int) -> dict:
    """Stage 1: one shard spec → one row packing its N source faces, decoded to uint8 (N, C, L, L) at load_size.

    Decoding here, in CPU tasks, keeps it off the generator actors, so it overlaps the GPU work.
    Output columns: shard, spec_id, sources (JSON: face_id, subject, label lists and the image shape),
    image (the (N, C, L, L) array's bytes).
    """
    from fersnet_ray.train.data import decode_faces

    spec = json.loads(batch["spec"][0])
    cols = ["face_id", "subject", "label", "image"]
    tables = []
    for path, rows in spec["rows"]:
        pf = pq.ParquetFile(path, filesystem=store.arrow_fs)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)]
        offsets = np.cumsum([0] + sizes)  # first row of each row group
        group_of = {r: int(np.searchsorted(offsets, r, side="right") - 1) for r in rows}
        groups = sorted(set(group_of.values()))  # read only the row groups that hold the shard's rows
        start_in_read, pos = {}, 0
        for g in groups:
            start_in_read[g] = pos
            pos += sizes[g]
        take = [start_in_read[group_of[r]] + r - offsets[group_of[r]] for r in rows]
        tables.append(pf.read_row_groups(groups, columns=cols).take(take))
    out = pa.concat_tables(tables).to_pydict()
    images = decode_faces(out["image"], load_size).numpy()  # (N, C, L, L) uint8
    sources = {k: out[k] for k in ("face_id", "subject", "label")} | {"shape": list(images.shape)}
    # One row per shard: the generator stage takes batches of exactly one row (Ray Data needs an explicit
    # batch_size for GPU stages), so a batch never mixes shards nor splits one.
    return {
        "shard": np.array([spec["shard"]]),
        "spec_id": np.array([spec["spec_id"]], dtype=object),
        "sources": np.array([json.dumps(sources)], dtype=object),
        "image": np.array([images.tobytes()], dtype=object),
    }


class Generator:
    """Stage 2, a Ray Data actor: the fold's FES branch (and recogniser), built once from their paths.

    Input: one row of `read_sources` (one shard's N sources). Output columns, P = N × (classes − 1)
    rows: shard, spec_id, source_face_id, subject, source_label, label (target), image (uint8 array in
    the face table's size and channels), score (recogniser's probability of the target, or NaN),
    shard_rows (P, so the writer can tell a whole shard from a split one). Every source gets every
    target ≠ its own label.
    """

    def __init__(self, store: Store, checkpoint: str, batch_size: int, aligned_size: int, recognizer: str | None):
        import torch

        from fersnet_ray.model import create_model
        from fersnet_ray.synth.quality import load_fold_recognizer
        from fersnet_ray.train.config import Experiment
        from fersnet_ray.checkpoint import read_checkpoint

        state = read_checkpoint(store, checkpoint)
        self.exp = Experiment.from_dict(state["experiment"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = create_model(self.exp.model).to(self.device).eval()  # layout: synthesize_all_targets'
        self.model.load_state_dict(state["model"])
        if self.model.fes_head is None:
            raise SynthError(f"checkpoint {checkpoint} is a {self.exp.model.variant!r} model: it has no FES branch")
        self.recognizer = load_fold_recognizer(store, recognizer).to(self.device) if recognizer else None
        self.batch_size, self.aligned_size = batch_size, aligned_size

    def __call__(self, batch: dict) -> dict:
        import torch
        import torch.nn.functional as F

        from fersnet_ray.synth.quality import synthesize_all_targets
        from fersnet_ray.synth.recognizer import target_probability
        from fersnet_ray.train.data import FaceSet

        t = self.exp.train
        if len(batch["shard"]) != 1:
            raise SynthError(f"the generator takes one shard per batch, got {len(batch['shard'])}")
        shard, spec_id = int(np.asarray(batch["shard"])[0]), str(np.asarray(batch["spec_id"])[0])
        sources = json.loads(batch["sources"][0])
        labels = torch.as_tensor(np.array(sources["label"], dtype=np.int64))
        # bytearray: a writable copy of the Arrow buffer, which torch wants
        images = torch.frombuffer(bytearray(batch["image"][0]), dtype=torch.uint8).reshape(sources["shape"])
        face_id, subject = np.array(sources["face_id"], dtype=object), np.array(sources["subject"], dtype=object)
        faces = FaceSet(images, labels, subject, [])
        out, src, tgt = synthesize_all_targets(self.model, faces, self.exp, self.device, self.batch_size)
        score = np.full(len(tgt), np.nan, dtype=np.float32)
        if self.recognizer is not None:
            score = (
                target_probability(
                    self.recognizer, out.to(self.device), torch.as_tensor(tgt, device=self.device), t.crop_size
                )
                .cpu()
                .numpy()
                .astype(np.float32)
            )
        if t.load_size != self.aligned_size:  # back to the face table's size
            out = (
                F.interpolate(
                    out.float(), size=(self.aligned_size,) * 2, mode="bilinear", antialias=True, align_corners=False
                )
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
            )
        images = out.permute(0, 2, 3, 1).numpy()  # (P, S, S, C)
        return {
            "shard": np.full(len(src), shard),
            "spec_id": np.full(len(src), spec_id, dtype=object),
            "source_face_id": face_id[src],
            "subject": subject[src],
            "source_label": labels.numpy()[src],
            "label": tgt,
            "image": images[..., 0] if images.shape[-1] == 1 else images,
            "score": score,
            "shard_rows": np.full(len(src), len(src)),
        }


def write_shard(
    batch: dict,
    run: Run,
    fold: Fold,
    classes: list[str],
    checkpoint_id: str,
    min_score: float | None = None,
) -> dict:
    """Stage 3: PNG-encode one shard's rows, write part-NNNNN.parquet (tmp + move), then its sidecar.

    With `min_score`, rows whose score is below it are left out and counted per class in the sidecar.
    """
    from PIL import Image

    from fersnet_ray.table import encode_png

    shards = set(np.asarray(batch["shard"]).tolist())
    if len(shards) != 1:
        raise SynthError(f"a write block mixes shards {sorted(shards)}")  # one block per shard by construction
    shard = shards.pop()
    expected = int(np.asarray(batch["shard_rows"])[0])
    if len(batch["label"]) != expected:  # a block split by Ray Data would write a partial shard
        raise SynthError(f"shard {shard} reached the writer split: {len(batch['label'])} of {expected} rows")
    spec_id = str(np.asarray(batch["spec_id"])[0])
    score = np.asarray(batch["score"], dtype=np.float32)
    keep = np.ones(len(score), dtype=bool) if min_score is None else score >= min_score
    dropped = Counter(np.asarray(batch["label"], dtype=np.int64)[~keep].tolist())
    batch = {k: [x for x, kp in zip(v, keep) if kp] if k == "image" else np.asarray(v)[keep] for k, v in batch.items()}
    n = len(batch["label"])
    labels = np.asarray(batch["label"], dtype=np.int64)
    table = pa.Table.from_pydict(
        {
            "face_id": [synthetic_face_id(s, int(y)) for s, y in zip(batch["source_face_id"], labels)],
            "source_face_id": list(batch["source_face_id"]),
            "subject": list(batch["subject"]),
            "label": labels,
            "label_name": [classes[y] for y in labels],
            "source_label": np.asarray(batch["source_label"], dtype=np.int64),
            "fold": np.full(n, shard_fold(fold), dtype=np.int64),  # k, or -1 for the final data set
            "image": [encode_png(Image.fromarray(np.ascontiguousarray(img))) for img in batch["image"]],
            "checkpoint": [checkpoint_id] * n,
            "score": pa.array(
                np.asarray(batch["score"], dtype=np.float32),
                pa.float32(),
                mask=np.isnan(np.asarray(batch["score"], dtype=np.float32)),
            ),
        },
        schema=SYNTH_SCHEMA,
    )
    buf = pa.BufferOutputStream()
    image_bytes = pc.sum(pc.binary_length(table["image"])).as_py() or 0
    pq.write_table(table, buf, row_group_size=row_group_rows(image_bytes / max(n, 1)))
    data = buf.getvalue().to_pybytes()
    try:
        run.store.write_bytes(run.shard(fold, shard), data)  # whole or not at all
    except StoreFullError as e:
        # Returned, not raised: a raised error reaches the driver as Ray Data's UserCodeException, whose
        # message is a worker's traceback. The driver stops the pipeline at the first one.
        return _summary(shard, "", str(e))
    info = {
        "shard": shard,
        "file": shard_name(shard),
        "rows": n,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "checkpoint": checkpoint_id,
        "min_score": min_score,
        "spec_id": spec_id,
        "per_class": {classes[c]: int(k) for c, k in sorted(Counter(labels.tolist()).items())},
        "below_min_score": {classes[c]: int(k) for c, k in sorted(dropped.items())},
    }
    try:
        run.store.write_json(run.sidecar(fold, shard), info)
    except StoreFullError as e:  # the shard without its sidecar is not done: a re-run rewrites it
        return _summary(shard, "", str(e))
    return _summary(shard, json.dumps(info), "")


def _summary(shard: int, info: str, error: str) -> dict:
    """write_shard's one output row: the sidecar's JSON, or the one-line error that kept the shard from the store."""
    # S3 requests this worker process retried since its last shard: summed and logged by the driver.
    retries = np.array([S3_RETRIES.take()])
    return {
        "shard": np.array([shard]),
        "info": np.array([info], dtype=object),
        "s3_retries": retries,
        "error": np.array([error], dtype=object),
    }


# --- the driver ------------------------------------------------------------------------------------


def trained_folds(store: Store, run: str) -> list[Fold]:
    """Every fold with a training folder (finished or not), in order, and "final" last when the run has one."""
    layout = store.run(run)
    if not layout.exists():
        raise StoreError(f"no run {run!r} in {store.uri}")
    return layout.folds() + ([FINAL] if store.exists(layout.fold(FINAL)) else [])


def _fold_checkpoint(store: Store, job: SynthJob, fold: Fold) -> tuple[str, str, dict | None]:
    """The fold's newest complete checkpoint, its id, and its manifest when the fold is already complete."""
    from fersnet_ray.checkpoint import checkpoint_meta, latest_checkpoint

    checkpoint = latest_checkpoint(store, job.run, fold)
    if checkpoint is None:
        where = store.uri_of_path(store.run(job.run).fold(fold))
        raise SynthError(f"{label(fold)} of run {job.run!r} has no complete checkpoint in {where}")
    meta = checkpoint_meta(store, checkpoint)
    checkpoint_id = f"{posixpath.relpath(checkpoint, store.root)}@sha256:{meta['sha256'][:16]}"
    manifest_path = store.run(job.run).manifest(fold)
    if store.exists(manifest_path) and not job.overwrite:
        manifest = store.read_json(manifest_path)
        if manifest.get("checkpoint") == checkpoint_id and manifest.get("min_score") == job.min_score:
            return checkpoint, checkpoint_id, manifest
    return checkpoint, checkpoint_id, None


def _quality_task(job: SynthJob, fold: Fold, checkpoint: str):
    """Starts the fold's Table V task (recogniser training + scoring) on the cluster; returns its ObjectRef."""
    import ray

    from fersnet_ray.synth.quality import fold_quality

    task = ray.remote(fold_quality).options(num_gpus=job.gpus_per_actor, num_cpus=0 if job.gpus_per_actor else 1)
    return task.remote(job.store, job.run, fold, checkpoint, job.recognizer_epochs)


def synthesize_fold(job: SynthJob, fold: Fold, quality_ref=None) -> dict:
    """Synthesises one fold, or the whole table for "final" (skipping done shards), and writes and
    returns its manifest.

    quality_ref: the fold's Table V task, when the driver started it already (`synthesize` starts
    every fold's at once, so the recognisers train side by side); None starts it here.
    """
    import ray
    from ray.data import ActorPoolStrategy

    store = Store.from_uri(job.store)
    layout = store.run(job.run)
    config = store.read_json(layout.config())
    dataset = config["dataset"]
    card = read_card(store, dataset)
    classes = card["classes"]
    folder, manifest_path = layout.synthetic(fold), layout.manifest(fold)
    if not job.overwrite:
        _check_foreign_files(store, folder)
    checkpoint, checkpoint_id, complete = _fold_checkpoint(store, job, fold)
    if complete is not None:
        print(f"{label(fold)}: synthetic shards complete, skipped (--overwrite to redo)", flush=True)
        return complete
    if job.overwrite:
        store.remove(folder)
    else:
        store.remove(manifest_path)  # the fold is being (re)written: not complete until the manifest returns

    quality, recognizer = None, None
    if job.quality or job.min_score is not None:
        quality = ray.get(quality_ref if quality_ref is not None else _quality_task(job, fold, checkpoint))
        recognizer = store.run(job.run).recognizer(fold)
        if is_final(fold):
            print(
                "final: synthetic rows scored by a recogniser trained on every real face; no Table V number "
                "(no held-out subjects: the cross-validation folds measure it)",
                flush=True,
            )
        else:
            print(
                f"fold {fold}: Table V accuracy of synthesised test-subject faces "
                f"{100 * quality['synthetic_test_accuracy']:.2f}% (recogniser on real test faces "
                f"{100 * quality['recognizer_real_test_accuracy']:.2f}%)",
                flush=True,
            )

    specs = plan_shards(store, dataset, fold, len(classes), job.rows_per_shard)
    _remove_unplanned(store, folder, len(specs))
    done = {s["shard"]: shard_done(layout, fold, s, checkpoint_id, job.min_score) for s in specs}
    todo = [s for s in specs if not done[s["shard"]]]
    print(
        f"{label(fold)}: {len(specs)} shards, {len(specs) - len(todo)} already written, {len(todo)} to write",
        flush=True,
    )
    if todo:
        ds = ray.data.from_items([{"spec": json.dumps(s)} for s in todo], override_num_blocks=len(todo))
        summaries = (
            # num_cpus differs from the actors' so Ray does not fuse the stages: reads overlap generation.
            ds.map_batches(
                read_sources,
                batch_size=None,
                num_cpus=0.5,
                fn_kwargs=dict(store=store, load_size=config["experiment"]["train"]["load_size"]),
            )
            .map_batches(
                Generator,
                fn_constructor_kwargs=dict(
                    store=store,
                    checkpoint=checkpoint,
                    batch_size=job.batch_size,
                    aligned_size=card["alignment"]["size"],
                    recognizer=recognizer,
                ),
                batch_size=1,  # one shard's sources (read_sources packs them in one row)
                compute=ActorPoolStrategy(min_size=1, max_size=job.actors),
                num_gpus=job.gpus_per_actor,
                num_cpus=0 if job.gpus_per_actor else 1,
            )
            .map_batches(
                write_shard,
                fn_kwargs=dict(
                    run=layout,
                    fold=fold,
                    classes=classes,
                    checkpoint_id=checkpoint_id,
                    min_score=job.min_score,
                ),
                batch_size=None,
            )
        )
        retries, written, full = 0, len(specs) - len(todo), None
        rows = iter(summaries.iter_rows())  # one row per shard, as soon as it is written
        try:
            with Progress("synthesize") as bar:  # a bar per fold on a terminal, a line per shard elsewhere
                bar.update(label(fold), written, len(specs), "shards written")
                for row in rows:
                    retries += int(row["s3_retries"])
                    if row["error"]:  # the store is full: every later shard would fail the same way
                        full = row["error"]
                        break
                    done[int(row["shard"])] = json.loads(row["info"])
                    written += 1
                    bar.update(label(fold), written, len(specs), "shards written")
        except Exception as e:  # noqa: BLE001 - re-raised, as one line when a node's disk was full
            raise _spill_failed(e, fold, written, len(specs)) or e
        finally:
            rows.close()  # stops the pipeline now (actors and tasks), not when the iterator is collected
        report_retries(f"while synthesising {label(fold)}", more=retries)
        if full is not None:
            raise StoreFullError(f"{label(fold)}: {full.split('; free space')[0]}; {_kept(written, len(specs))}")
    shards = [done[s["shard"]] for s in specs]
    return _write_manifest(store, manifest_path, fold, card, checkpoint_id, dataset, shards, job.min_score, quality)


def _kept(written: int, total: int) -> str:
    return f"{written} of {total} shards were written and are kept: free space and run the same command again"


def _spill_failed(e: BaseException, fold: Fold, written: int, total: int) -> Exception | None:
    """One line for a pipeline that failed because a node's local disk filled up under Ray's object store
    (it could not create or spill an object), or None for any other failure."""
    import ray.exceptions

    from fersnet_ray.runtime import find_cause

    spill = find_cause(e, ray.exceptions.OutOfDiskError)
    if spill is None:
        return None
    first = next((ln.strip() for ln in str(spill).splitlines() if ln.strip()), "")
    return SynthError(
        f"{label(fold)}: Ray could not store or spill an object, a node's disk is full ({first}); "
        f"{_kept(written, total)}"
    )


def _remove_unplanned(store: Store, folder: str, n_shards: int) -> None:
    """Shards of ours beyond this plan (an earlier run with another --rows-per-shard) would duplicate rows."""
    if not store.exists(folder):
        return
    for path in store.fs.ls(folder, detail=False):
        m = re.fullmatch(r"_?part-(\d{5})\.(parquet|json)", path.rsplit("/", 1)[-1])
        if m and int(m.group(1)) >= n_shards:
            store.remove(path)


def _check_foreign_files(store: Store, folder: str) -> None:
    """A Parquet file in the output folder that we did not write is an error, not something to count."""
    if not store.exists(folder):
        return
    for path in store.fs.ls(folder, detail=False):
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".parquet") and not name.startswith("_tmp-"):
            try:
                schema = pq.ParquetFile(path, filesystem=store.arrow_fs).schema_arrow
                check_schema(schema, store.uri_of_path(path), SYNTH_SCHEMA, "synthetic shard")
            except StoreError as e:
                raise SynthError(f"{e}; remove it or pass --overwrite") from None
            except Exception as e:  # noqa: BLE001 - unreadable: a crashed write of ours is rewritten
                if not re.fullmatch(r"part-\d{5}\.parquet", name):  # not ours: never delete a user's file
                    raise SynthError(
                        f"{store.uri_of_path(path)}: not a readable Parquet file "
                        f"({type(e).__name__}); remove it or pass --overwrite"
                    ) from None
                store.remove(path)
        elif name.startswith("_tmp-") or (name.startswith(".") and ".tmp-" in name):
            store.remove(path)  # leftover of an interrupted write (a process killed mid-write: `Store.write_bytes`)


def _write_manifest(store, path, fold, card, checkpoint_id, dataset, shards: list[dict], min_score, quality) -> dict:
    classes = card["classes"]
    real = card["counts"]["per_fold_class"]
    real_train = Counter()
    for f, per in real.items():
        if is_final(fold) or int(f) != fold:  # the final data set augments every face
            real_train.update(per)
    synth, below = Counter(), Counter()
    for s in shards:
        synth.update(s["per_class"])
        below.update(s.get("below_min_score", {}))
    totals = {c: real_train[c] + synth[c] for c in classes}
    manifest = {
        "fold": fold,
        "dataset": dataset,
        "checkpoint": checkpoint_id,
        "classes": classes,
        "shards": shards,
        "rows": sum(s["rows"] for s in shards),
        "synthetic_per_class": {c: synth[c] for c in classes},
        "real_per_class": {c: real_train[c] for c in classes},
        "total_per_class": totals,
        "balanced": len(set(totals.values())) == 1,  # measured, not claimed: --min-score can unbalance
        "min_score": min_score,
        "below_min_score_per_class": {c: below[c] for c in classes},
        "quality": quality,
        "schema": {f.name: str(f.type) for f in SYNTH_SCHEMA},
    }
    store.write_json(path, manifest)
    return manifest


def planned_rows(card: dict, fold: Fold) -> int:
    """Synthetic rows a fold will hold, from the card alone: each training face × every other expression
    (the final model's: every face)."""
    training = sum(n for f, n in card["counts"]["per_fold"].items() if is_final(fold) or int(f) != fold)
    return training * (len(card["classes"]) - 1)


def check_max_rows(store: Store, job: SynthJob, folds: tuple[Fold, ...]) -> None:
    """SynthError, one line, when a fold's synthetic output would exceed `job.max_rows` (nothing started yet)."""
    if job.max_rows is None:
        return
    config = store.read_json(store.run(job.run).config())
    card = read_card(store, config["dataset"])
    for fold in folds:
        rows = planned_rows(card, fold)
        if rows > job.max_rows:
            raise SynthError(
                f"{label(fold)}: {rows:,} synthetic rows would exceed --max-rows {job.max_rows:,} "
                f"({rows // (len(card['classes']) - 1):,} training faces × {len(card['classes']) - 1} "
                "expressions); nothing was written"
            )


def synthesize(job: SynthJob) -> dict[Fold, dict]:
    """Runs every requested fold: all folds' Table V recognisers train side by side first (as many at once
    as the cluster's CPUs or GPUs allow), then each fold's shards are written in parallel, fold after fold."""
    from dataclasses import replace

    import ray

    store = Store.from_uri(job.store)
    store.check_writable()
    job = replace(job, store=store.uri)  # absolute: Ray workers run in other directories
    folds = job.folds if job.folds is not None else tuple(trained_folds(store, job.run))
    if not folds:
        raise SynthError(f"run {job.run!r} has no trained fold")
    check_max_rows(store, job, folds)
    refs = {}
    if job.quality or job.min_score is not None:
        for f in folds:
            checkpoint, _, complete = _fold_checkpoint(store, job, f)
            if complete is None:
                refs[f] = _quality_task(job, f, checkpoint)
        # Every recogniser finishes before any fold's Ray Data pipeline starts: a generator actor that
        # holds a CPU while its read tasks queue behind recognisers would leave one CPU idle (on 2 CPUs the
        # ten CK+48 recognisers then ran one at a time).
        ray.get(list(refs.values()))
    return {f: synthesize_fold(job, f, refs.get(f)) for f in folds}
