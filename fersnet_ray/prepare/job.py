"""Stage 1, prepare: source tree → aligned face table with folds, in the store.

    listing  (driver)  adapter.list(): which files are faces, subject, label; rejects
    load     (Ray Data actors, GPU if aligning with FAN)  bytes → decode → align → PNG
    folds    (driver)  subject-disjoint, stratified, from the faces that survived alignment
    write    (Ray Data) Parquet `faces-00000.parquet`, … then _card.json last

Run it with `fersnet prepare …` or `python jobs/prepare.py …`. Ray appears only in `prepare()`
and `FaceLoader`; the per-face work is `load_face`, plain Python tested without Ray.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from dataclasses import dataclass, field, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fersnet_ray import __version__
from fersnet_ray.prepare.align import FaceError, FanAligner, center_resize, decode_image
from fersnet_ray.prepare.folds import assign_folds
from fersnet_ray.prepare.sources import Adapter, Reject, SourceFace, create_adapter
from fersnet_ray.progress import Progress, report, start
from fersnet_ray.store import DATA_FILE, Store, redact
from fersnet_ray.table import FACE_SCHEMA, encode_png, face_id, row_group_rows, table_files

log = logging.getLogger(__name__)

ALIGN_METHODS = ("none", "fan")
PRECROPPED = ("ckplus48", "demo")  # sets whose faces are already cropped: align none by default
ROWS_PER_FILE = 5000  # ~50 MB of 110×110 PNGs: few files for small sets, parallel reads for big ones


class PrepareError(RuntimeError):
    """The source as a whole cannot be prepared; the message is one line, safe to print."""


@dataclass(frozen=True)
class PrepareConfig:
    dataset: str  # adapter name, see `fersnet datasets`
    source: str | None = None
    store: str | None = None
    name: str | None = None  # data set name in the store; defaults to `dataset`
    folds: int = 10
    seed: int = 0
    align: str | None = None  # "fan" | "none"; None: none for pre-cropped sets, fan otherwise
    aligned_size: int = 110
    channels: int = 1  # 1 = greyscale (as the paper's CK+ faces), 3 = RGB
    weights: str | None = None  # folder (path or s3://) holding the face-alignment weights
    actors: int | None = None  # loader actors; None: autoscale up to the cluster's CPUs (or GPUs for fan)
    gpus_per_actor: float | None = None  # None: 1 when aligning with FAN on a cluster with GPUs
    options: dict = field(default_factory=dict)  # adapter options, e.g. {"subject_regex": ...}

    @property
    def table_name(self) -> str:
        return self.name or self.dataset

    @property
    def align_method(self) -> str:
        method = self.align or ("none" if self.dataset in PRECROPPED else "fan")
        if method not in ALIGN_METHODS:
            raise PrepareError(f"--align {method!r}: use one of {', '.join(ALIGN_METHODS)}")
        return method


@dataclass
class PrepareResult:
    store_uri: str
    name: str
    card: dict


def align_face(raw: bytes, method: str, size: int, channels: int, aligner: FanAligner | None = None):
    """One face: raw file bytes → the size×size aligned PIL image ('L' or 'RGB'); FaceError to reject it.

    `fersnet predict` runs the same function on new images, so they get the face table's preparation.
    """
    return align_image(decode_image(raw, channels), method, size, aligner)


def align_image(img, method: str, size: int, aligner: FanAligner | None = None):
    """A decoded, converted image → the size×size aligned face (`align_face` after decoding)."""
    if method == "fan":
        return aligner.align(img)
    return center_resize(img, size)


def load_face(raw: bytes, method: str, size: int, channels: int, aligner: FanAligner | None = None) -> bytes:
    """One face: raw file bytes → PNG bytes of the size×size aligned face; FaceError to reject it."""
    return encode_png(align_face(raw, method, size, channels, aligner))


def load_batch(
    batch: dict[str, np.ndarray],
    adapter: Adapter,
    method: str,
    size: int,
    channels: int,
    aligner: FanAligner | None = None,
) -> dict[str, np.ndarray]:
    """A batch of listed faces → the same columns plus `image` (PNG, b"" if rejected) and `reject`."""
    images, rejects = [], []
    for i in range(len(batch["face_id"])):
        face = SourceFace(
            str(batch["source"][i]),
            str(batch["subject"][i]),
            int(batch["label"][i]),
            str(batch["sequence"][i]),
            int(batch["frame"][i]),
        )
        try:
            images.append(load_face(adapter.read(face), method, size, channels, aligner))
            rejects.append("")
        except FaceError as e:
            images.append(b"")
            rejects.append(str(e))
        except (OSError, ValueError) as e:  # unreadable file (permissions, vanished, storage error, NUL in the path)
            images.append(b"")
            rejects.append(redact(f"unreadable file ({type(e).__name__}: {e})"))
    report("faces loaded and aligned", len(images), add=True)  # the driver's bar, on a terminal
    return {**batch, "image": np.array(images, dtype=object), "reject": np.array(rejects, dtype=object)}


# --- Ray marked place 1 of 2: the loader actor ------------------------------------------------------
class FaceLoader:
    """Ray Data callable class: reads and aligns a batch of faces.

    Input columns: face_id, source, subject, label, sequence, frame (one row per listed face).
    Output columns: the same, plus `image` (PNG bytes, b"" if rejected) and `reject` ("" if kept).
    The FAN model is built once per actor, on its GPU when Ray gave it one. Without FAN there is no
    state to keep, and `load_batch` runs as plain Ray tasks instead (no actors holding CPUs).
    """

    def __init__(self, adapter: Adapter, method: str, size: int, channels: int, weights: str | None):
        import torch

        self.adapter, self.method, self.size, self.channels = adapter, method, size, channels
        self.aligner = None
        if method == "fan":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.aligner = FanAligner(size, device=device, weights=weights)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return load_batch(batch, self.adapter, self.method, self.size, self.channels, self.aligner)


def _with_folds(batch: pa.Table, dataset: str, classes: list[str], fold_of: dict[str, int]) -> pa.Table:
    """Drops rejected rows and adds label_name, dataset and fold, in the face table's schema."""
    batch = batch.filter(pc.equal(batch["reject"], ""))
    subjects = batch["subject"].to_pylist()
    labels = batch["label"].to_pylist()
    columns = {
        "face_id": batch["face_id"],
        "dataset": pa.array([dataset] * len(batch), pa.string()),
        "subject": batch["subject"],
        "label": batch["label"],
        "label_name": pa.array([classes[label] for label in labels], pa.string()),
        "sequence": batch["sequence"],
        "frame": batch["frame"],
        "source": batch["source"],
        "image": batch["image"],
        "fold": pa.array([fold_of[s] for s in subjects], pa.int64()),
    }
    return pa.Table.from_pydict({f.name: columns[f.name] for f in FACE_SCHEMA}).cast(FACE_SCHEMA)


def _listing_table(faces: list[SourceFace], table_name: str) -> pa.Table:
    """The listed faces as columns (SourceFace's fields and face_id), in listing order."""
    columns = {f.name: [getattr(face, f.name) for face in faces] for f in fields(SourceFace)}
    columns["face_id"] = [face_id(table_name, face.source) for face in faces]
    return pa.table(columns)


def _first_duplicate(ids: pa.ChunkedArray) -> str | None:
    """A value that `ids` holds more than once (the one seen first), or None; ids must not be null.

    Ids of one width (face_id's 20 hex digits) are sorted as a fixed-width numpy view of Arrow's bytes,
    one 2 MB copy at 100k faces; `pc.value_counts` cost ~28 MB there, kept by Arrow's allocator.
    """
    if len(ids) < 2:
        return None
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    offsets = np.frombuffer(ids.buffers()[1], np.int64 if pa.types.is_large_string(ids.type) else np.int32)
    offsets = offsets[ids.offset : ids.offset + len(ids) + 1]
    width = int(offsets[1] - offsets[0])
    if width > 0 and (np.diff(offsets) == width).all():
        view = np.frombuffer(ids.buffers()[2], f"S{width}", count=len(ids), offset=int(offsets[0]))
        ordered = np.sort(view)  # the copy; the view is Arrow's buffer
        same = ordered[1:] == ordered[:-1]
        twice = pa.array(np.unique(ordered[1:][same]).tolist(), pa.binary()).cast(ids.type) if same.any() else None
        del ordered, same
    else:  # ids of mixed widths (NUL-padded bytes would compare wrongly): Arrow's sort
        ordered = ids.take(pc.array_sort_indices(ids))
        same = pc.equal(ordered[1:], ordered[:-1])
        twice = pc.unique(pc.filter(ordered[1:], same)) if pc.any(same).as_py() else None
        del ordered, same
    if twice is None:
        return None
    return ids[pc.index(pc.is_in(ids, value_set=twice), True).as_py()].as_py()


def _fate(batch: pa.Table) -> pa.Table:
    """A loaded block → what the driver needs to assign folds: subject, label, reject, PNG size, and the
    source of rejected faces only (null for kept ones, so the driver never holds every face's path).

    One chunk a column: a loaded block is made of 32-row batches, and at 100k faces the driver's copies
    of those thousands of small chunks cost ~24 MB more than the same data in one chunk a block.
    """
    kept = pc.equal(batch["reject"], "")
    return pa.table(
        {
            "source": pc.if_else(kept, pa.scalar(None, batch["source"].type), batch["source"]),
            "subject": batch["subject"],
            "label": batch["label"],
            "reject": batch["reject"],
            "png_bytes": pc.binary_length(batch["image"]),
        }
    ).combine_chunks()


def _counts(classes: list[str], k: int, labels: list[int], folds: list[int]) -> dict:
    per_class = Counter(labels)
    per_fold = Counter(folds)
    cross = Counter(zip(folds, labels))
    return {
        "per_class": {c: per_class.get(i, 0) for i, c in enumerate(classes)},
        "per_fold": {str(f): per_fold.get(f, 0) for f in range(k)},
        "per_fold_class": {str(f): {c: cross.get((f, i), 0) for i, c in enumerate(classes)} for f in range(k)},
    }


def prepare(cfg: PrepareConfig) -> PrepareResult:
    """Runs the prepare stage on the current Ray cluster (call `init_ray` first) and returns the card."""
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from ray.data import SaveMode
    from ray.data.datasource import FilenameProvider

    store = Store.from_uri(cfg.store)
    store.check_writable()
    method = cfg.align_method
    if cfg.folds < 2:
        raise PrepareError(f"--folds {cfg.folds}: need at least 2 folds")
    adapter = create_adapter(cfg.dataset, cfg.source, **cfg.options)
    listing = adapter.list()
    classes = list(listing.classes)
    rejects: list[Reject] = list(listing.rejects)
    if not listing.faces:
        first = f"; first reject: {rejects[0].source}: {rejects[0].reason}" if rejects else ""
        raise PrepareError(f"no usable face in source {redact(str(cfg.source))} ({len(rejects)} rejects{first})")
    log.info("listed %d faces of %d classes, %d rejects", len(listing.faces), len(classes), len(rejects))

    listed_faces = _listing_table(listing.faces, cfg.table_name)  # one Arrow column per field
    listing.faces = []  # the listing's Python objects cost ~1 KB a face on the driver; the table is ~0.1
    dup = _first_duplicate(listed_faces["face_id"])
    if dup is not None:
        raise PrepareError(f"source lists the same file twice ({dup})")

    gpus = cfg.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if method == "fan" and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    max_actors = cfg.actors or max(1, int(ray.cluster_resources().get("GPU" if gpus else "CPU", 1) // max(gpus, 1)))
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows in listing order: same files on every run

    loader_args = dict(adapter=adapter, method=method, size=cfg.aligned_size, channels=cfg.channels)
    n = len(listed_faces)
    step = -(-n // max(1, min(n // 64, 200)))  # rows a block: up to 200 blocks of at least 64 faces
    listed = ray.data.from_arrow([listed_faces.slice(i, step) for i in range(0, n, step)])
    if method == "fan":
        loaded = listed.map_batches(
            FaceLoader,
            fn_constructor_kwargs=dict(**loader_args, weights=cfg.weights),
            batch_size=32,
            compute=ActorPoolStrategy(min_size=1, max_size=max_actors),
            num_gpus=gpus,
            num_cpus=0 if gpus else 1,
        )
    else:
        loaded = listed.map_batches(load_batch, fn_kwargs=loader_args, batch_size=32, concurrency=cfg.actors)
    with Progress("prepare", board=True) as bar:
        start(bar, "faces loaded and aligned", n)
        loaded = loaded.materialize()  # aligned once; folds need every face's fate before anything is written

    # The columns are picked in Ray tasks: a driver reading whole blocks maps their image bytes from the
    # object store into its own memory (at 100k faces its peak RSS grew 1.66× from 10k, with it).
    fates = loaded.map_batches(_fate, batch_format="pyarrow", batch_size=None)
    # Kept as Arrow: converting the whole table to pandas made Python strings of every face's source,
    # subject and reject (~24 MB more at 100k faces than at 10k). Only the rejected rows and the kept
    # subjects (as codes into their distinct names) become Python objects.
    meta = pa.concat_tables(fates.iter_batches(batch_format="pyarrow", batch_size=None))
    n_loaded = len(meta)
    ok = pc.equal(meta["reject"], "")
    failed = meta.filter(pc.invert(ok)).select(["source", "reject"])
    kept = (meta.filter(ok) if len(failed) else meta).select(["subject", "label", "png_bytes"])
    del meta, ok
    failed_sources, failed_reasons = failed["source"].to_pylist(), failed["reject"].to_pylist()
    del failed
    rejects += [Reject(s, r) for s, r in zip(failed_sources, failed_reasons)]
    print(f"prepare: {n_loaded} faces loaded and aligned, {len(failed_sources)} rejected", flush=True)
    if not len(kept):
        raise PrepareError(
            f"no usable face in source {redact(str(cfg.source))}: all {n_loaded} faces rejected"
            f" (first: {failed_sources[0]}: {failed_reasons[0]})"
        )
    del failed_sources, failed_reasons
    num_faces = len(kept)
    subject_codes = pc.dictionary_encode(kept["subject"].combine_chunks())
    names = subject_codes.dictionary.to_pylist()  # each distinct subject once
    codes = subject_codes.indices.to_numpy()
    del subject_codes
    labels = kept["label"].to_pylist()
    group_rows = row_group_rows(pc.mean(kept["png_bytes"]).as_py())
    del kept
    try:
        # one list entry a face, all pointing at the few distinct name strings
        fold_of = assign_folds([names[c] for c in codes], labels, cfg.folds, cfg.seed)
    except ValueError as e:
        raise PrepareError(str(e)) from None
    folds = np.array([fold_of[name] for name in names], np.int64)[codes].tolist()
    num_subjects = len(names)
    del codes, names

    out_dir = store.dataset(cfg.table_name).dir
    # The card is the commit marker (written last): remove it first, so an interrupted re-run never
    # leaves a card beside a half-written table. SaveMode.OVERWRITE then clears the old files.
    store.remove(store.dataset(cfg.table_name).card)

    class _Names(FilenameProvider):  # deterministic names, unlike Ray's per-write uuid
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return DATA_FILE.format(task_index)  # faces-NNNNN.parquet; Ray appends -<i> per file of a task

    loaded.map_batches(
        _with_folds,
        fn_kwargs=dict(dataset=cfg.table_name, classes=classes, fold_of=fold_of),
        batch_format="pyarrow",
        batch_size=None,
    ).write_parquet(
        out_dir,
        filesystem=store.arrow_write_fs,
        filename_provider=_Names(),
        min_rows_per_file=ROWS_PER_FILE,
        # Ray 2.60 passes row_group_size through to pyarrow's write_dataset (min = max rows per group);
        # without it min_rows_per_file made each file one row group, so every partial read read a whole file.
        row_group_size=group_rows,
        mode=SaveMode.OVERWRITE,
    )

    card = {
        "name": cfg.table_name,
        "dataset": cfg.dataset,
        "source": redact(str(cfg.source)) if cfg.source else None,
        "classes": classes,
        "num_faces": num_faces,
        "num_subjects": num_subjects,
        "folds": cfg.folds,
        "seed": cfg.seed,
        "counts": _counts(classes, cfg.folds, labels, folds),
        "alignment": {"method": method, "size": cfg.aligned_size, "channels": cfg.channels},
        "rejects": [{"source": r.source, "reason": r.reason} for r in rejects],
        "notes": listing.notes,
        "schema": {f.name: str(f.type) for f in FACE_SCHEMA},
        "files": [p.rsplit("/", 1)[-1] for p in table_files(store, cfg.table_name)],
        "row_group_rows": group_rows,
        "fersnet_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    store.write_json(store.dataset(cfg.table_name).card, card)
    return PrepareResult(store.uri, cfg.table_name, card)
