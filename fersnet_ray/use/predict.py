"""`fersnet predict`: a run's classifier on new images, as Ray Data batch inference.

    fersnet predict --store URI --run NAME [--fold k|final | --ensemble] --source PATH|URI --out FILE.parquet|FILE.csv
    fersnet predict ... --classifier small-cnn --data real      # a classifier `fersnet finetune --classifier` made

Which model: `--fold k` or `--fold final`; `--ensemble` (every cross-validation fold, averaged); by
default the run's final model (trained on every subject) when it has finished, else the ensemble,
with a note saying so.

Pipeline (Ray Data, one block per batch so the stages overlap):
    list      (driver)        use.inputs: which files, true labels where the layout has them
    load      (CPU tasks; actors with FAN)  bytes -> decode, channels, align as `prepare` did -> uint8 at load_size
    classify  (actor pool, GPU when there is one)  Recognizer(s) (FERSNet or a fine-tuned registry classifier)
              built once per actor from checkpoint *paths*;
              centre crop, [-1, 1], softmax; an ensemble averages the folds' probabilities
    write     (driver, streamed)  one Parquet or CSV file, rows in listing order; rejects in a side file

Every image gets the face table's preparation (`Preprocessing`: the data set card's alignment and
size, the run's load and crop size), so a face of the table gets exactly the prediction `evaluate`
gave it. An image that cannot be read, decoded or aligned is a reject with its reason, never a crash.
Ray appears only in `predict()` and the `Classifier` actor; the work itself is `load_images` and
`classify`, plain functions tested without Ray.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import posixpath
import uuid
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch

from fersnet_ray.store import Store, open_location, redact
from fersnet_ray.foldkey import FINAL, Fold, is_final
from fersnet_ray.use.checkpoints import ModelRef, UseError, final_model, resolve, resolve_folds, run_config
from fersnet_ray.use.inputs import ImageSource
from fersnet_ray.use.recognizer import Preprocessing, Recognizer, load_recognizer

log = logging.getLogger(__name__)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class PredictJob:
    store: str
    run: str
    source: str  # folder or manifest (path or s3://)
    out: str  # FILE.parquet or FILE.csv (path or s3://); rejects go to FILE.rejects.csv beside it
    fold: Fold | None = None  # one fold's model, or "final"
    ensemble: bool = False  # average every cross-validation fold's probabilities
    checkpoint: str = "auto"  # auto (fine-tuned when finished, else trained) | finetune | train
    adapter: str = "images"  # images | folder | manifest (use.inputs)
    align: str | None = None  # None: as the data set was prepared
    weights: str | None = None  # face-alignment weights folder, for align fan
    actors: int = 1
    gpus_per_actor: float | None = None  # None: 1 when the cluster has a GPU
    batch_size: int = 256
    overwrite: bool = False
    classifier: str = "fersnet"  # which fine-tuning: `fersnet finetune --classifier` (fersnet: else the trained)
    data: str = "real+synthetic"  # and its --data


# --- plain functions: loading and classifying ------------------------------------------------------


def load_images(batch: dict, source: ImageSource, prep: Preprocessing, method: str, aligner=None) -> dict:
    """Stage 1: listed paths -> faces as the face table holds them, resized for the model.

    Input columns: path, label. Output: the same plus image (N, C, L, L) uint8 at load_size (black
    when rejected), reject ("" if kept) and converted (the file's own mode when it is not the model's,
    e.g. "RGB" for a greyscale model: converted as `prepare` converts, and counted).
    """
    from fersnet_ray.prepare.align import FaceError, convert_image, open_image
    from fersnet_ray.prepare.job import align_image
    from fersnet_ray.train.data import resize_faces

    n = len(batch["path"])
    aligned = np.zeros((n, prep.aligned_size, prep.aligned_size, prep.channels), dtype=np.uint8)  # (N, A, A, C)
    rejects, converted = [""] * n, [""] * n
    for i, path in enumerate(batch["path"]):
        try:
            img = open_image(source.read_path(str(path)))  # prepare's decode and conversion, in two steps
            converted[i] = "" if img.mode == prep.mode else img.mode  # to say how many were converted
            face = align_image(convert_image(img, prep.channels), method, prep.aligned_size, aligner)
            aligned[i] = np.asarray(face).reshape(aligned.shape[1:])
        except FaceError as e:
            rejects[i] = str(e)
        except (OSError, ValueError) as e:  # unreadable: permissions, vanished, storage error, NUL in the path
            rejects[i] = redact(f"unreadable file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    # One batched resize (each face on its own, as decode_faces resizes the face table's): (N, C, L, L) uint8.
    images = resize_faces(torch.from_numpy(aligned).permute(0, 3, 1, 2).contiguous(), prep.load_size).numpy()
    return {
        "path": np.asarray(batch["path"], dtype=object),
        "label": np.asarray(batch["label"], dtype=np.int64),
        "image": images,
        "reject": np.array(rejects, dtype=object),
        "converted": np.array(converted, dtype=object),
    }


class ImageLoader:
    """Stage 1 as a Ray Data actor, for FAN alignment: the detector and landmark model are built once.

    Same columns as `load_images`; on its GPU when Ray gave it one.
    """

    def __init__(self, source: ImageSource, prep: Preprocessing, method: str, weights: str | None):
        from fersnet_ray.prepare.align import FanAligner

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.args = (source, prep, method, FanAligner(prep.aligned_size, device=device, weights=weights))

    def __call__(self, batch: dict) -> dict:
        return load_images(batch, *self.args)


@torch.no_grad()
def classify(
    models: list[Recognizer], faces: torch.Tensor, prep: Preprocessing, amp: bool = True, batch_size: int = 256
) -> torch.Tensor:
    """(N, C, L, L) uint8 faces -> class probabilities (N, E), float32: each model's softmax, averaged.

    Same input and precision as `train.loop.evaluate` (centre crop, [-1, 1], bf16 autocast on a GPU
    when the run trained with it), so argmax gives the prediction `evaluate` recorded.
    """
    from fersnet_ray.train.loop import autocast, nhwc

    device = next(models[0].parameters()).device
    models = [nhwc(m, device, amp) for m in models]  # as `evaluate` scores: weights and input in one layout
    out = []
    for i in range(0, len(faces), batch_size):
        x = nhwc(prep.model_input(faces[i : i + batch_size].to(device)), device, amp)  # (B, C, S, S) in [-1, 1]
        with autocast(device, amp):
            probs = torch.stack([m(x).float().softmax(1) for m in models])  # (M, B, E)
        out.append(probs.mean(0).cpu())
    return torch.cat(out) if out else torch.zeros(0, models[0].num_classes)


def prob_column(name: str) -> str:
    return f"prob_{name}"


# --- Ray marked place 1 of 2: the classifier actor --------------------------------------------------


class Classifier:
    """Stage 2, a Ray Data actor: the run's Recognizer(s), built once per actor from checkpoint paths.

    Input columns: path, label, image (N, C, L, L) uint8, reject, converted.
    Output columns: path, true_label (class index, -1 unknown), label, probability (of the predicted
    class), prob_<class> for every class (float32, NaN for rejects), reject, converted.
    """

    def __init__(
        self, store: Store, refs: list[dict], prep: Preprocessing, classes: list[str], amp: bool, batch_size: int
    ):
        self.classes = classes
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.models = [load_recognizer(store, ModelRef(**r))[0].to(self.device) for r in refs]  # layout: classify's
        self.prep, self.amp, self.batch_size = prep, amp, batch_size

    def __call__(self, batch: dict) -> dict:
        rejects = np.asarray(batch["reject"], dtype=object)
        ok = rejects == ""
        probs = np.full((len(rejects), len(self.classes)), np.nan, dtype=np.float32)
        if ok.any():
            faces = torch.from_numpy(np.array(batch["image"], dtype=np.uint8)[ok])  # writable copy of Arrow's buffer
            probs[ok] = classify(self.models, faces, self.prep, self.amp, self.batch_size).numpy()
        label = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(1), -1)
        return {
            "path": np.asarray(batch["path"], dtype=object),
            "true_label": np.asarray(batch["label"], dtype=np.int64),
            "label": label.astype(np.int64),
            "probability": np.where(ok, np.nan_to_num(probs, nan=0.0).max(1), np.nan).astype(np.float32),
            **{prob_column(c): probs[:, i] for i, c in enumerate(self.classes)},
            "reject": rejects,
            "converted": np.asarray(batch["converted"], dtype=object),
        }


# --- output files ----------------------------------------------------------------------------------


def output_format(out: str) -> str:
    ext = posixpath.splitext(out)[1].lower()
    if ext not in FORMATS:
        raise UseError(f"--out {redact(out)!r}: name a .parquet or .csv file")
    return FORMATS[ext]


def rejects_path(out: str) -> str:
    """FILE.parquet -> FILE.rejects.csv (beside it)."""
    return posixpath.splitext(out)[0] + ".rejects.csv"


class _Writer:
    """Streams record batches into one Parquet or CSV file under a temporary name; `commit` moves it in place."""

    def __init__(self, uri: str, schema: pa.Schema, fmt: str):
        self.fs, self.path = open_location(uri)
        self.tmp = f"{posixpath.dirname(self.path)}/_tmp-{uuid.uuid4().hex}-{posixpath.basename(self.path)}"
        if "file" in self.fs.protocol:  # S3 has no folders
            self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        self.file = self.fs.open(self.tmp, "wb")
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(self.file, schema)
        else:
            import pyarrow.csv as pacsv

            self.writer = pacsv.CSVWriter(self.file, schema)

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table)

    def commit(self) -> None:
        self.writer.close()
        self.file.close()
        self.fs.mv(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            self.file.close()
        with contextlib.suppress(Exception):
            self.fs.rm(self.tmp)


def _output_schema(classes: list[str], labelled: bool) -> pa.Schema:
    fields = [("path", pa.string())]
    if labelled:
        fields.append(("true_label", pa.string()))
    fields += [("label_name", pa.string()), ("label", pa.int64()), ("probability", pa.float32())]
    fields += [(prob_column(c), pa.float32()) for c in classes]
    return pa.schema(fields)


def _rows_table(batch: pa.Table, classes: list[str], labelled: bool, schema: pa.Schema) -> pa.Table:
    """A classified batch's kept rows in the output schema."""
    import pyarrow.compute as pc

    batch = batch.filter(pc.equal(batch["reject"], ""))
    labels = batch["label"].to_numpy()
    cols = {"path": batch["path"], "label_name": pa.array([classes[y] for y in labels], pa.string())}
    if labelled:
        cols["true_label"] = pa.array([classes[y] if y >= 0 else None for y in batch["true_label"].to_numpy()])
    cols.update(label=batch["label"], probability=batch["probability"])
    cols.update({prob_column(c): batch[prob_column(c)].cast(pa.float32()) for c in classes})
    return pa.Table.from_pydict({f.name: cols[f.name] for f in schema}, schema=schema)


# --- Ray marked place 2 of 2: the driver -----------------------------------------------------------


@contextlib.contextmanager
def _ordered():
    """Rows come out in listing order (Ray Data's order is otherwise the order blocks finish)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order = before


def choose_models(store: Store, job: PredictJob) -> tuple[list[ModelRef], str, list[str]]:
    """The checkpoints to use, a sentence saying which, and notes (for the log and the summary).

    No --fold and no --ensemble: the final model when it has finished, else every fold averaged (noted).
    """
    if job.fold is not None and job.ensemble:
        raise UseError("--fold and --ensemble exclude each other: one fold's model, or every fold's averaged")
    pick = (job.checkpoint, job.classifier, job.data)
    if job.fold is not None:
        refs = [resolve(store, job.run, job.fold, *pick)]
        return refs, "the final model (every subject)" if is_final(job.fold) else f"fold {job.fold}", []
    if not job.ensemble:
        final = final_model(store, job.run, *pick)
        if final is not None:
            return [final], "the final model (every subject; the default when it has finished)", []
    refs = resolve_folds(store, job.run, None, *pick)
    how = "--ensemble" if job.ensemble else "no --fold given, no final model"
    notes = []
    if not job.ensemble:
        where = store.uri_of_path(store.run(job.run).fold(FINAL)) + "/"
        notes.append(
            f"run {job.run!r} has no finished final model ({where}): every fold averaged instead; "
            f"`fersnet train --run {job.run} --folds final` trains one on every subject"
        )
    return refs, f"ensemble of {len(refs)} fold(s) ({how}): probabilities averaged", notes


def predict(job: PredictJob) -> dict:
    """Classifies every image of `job.source` on the current Ray cluster; writes `job.out`; returns a summary."""
    import pyarrow.compute as pc
    import ray
    from ray.data import ActorPoolStrategy

    from fersnet_ray.prepare.job import ALIGN_METHODS
    from fersnet_ray.table import read_card
    from fersnet_ray.train.config import Experiment

    store = Store.from_uri(job.store)
    fmt = output_format(job.out)
    out_fs, out_path = open_location(job.out)
    for path in (out_path, open_location(rejects_path(job.out))[1]):
        if out_fs.exists(path) and not job.overwrite:
            where = job.out if path == out_path else rejects_path(job.out)
            raise UseError(f"{redact(where)} exists; pass --overwrite to replace it")
    config = run_config(store, job.run)
    card = read_card(store, config["dataset"])
    classes = list(card["classes"])
    refs, how, notes = choose_models(store, job)
    exp = Experiment.from_dict(config["experiment"])
    prep = Preprocessing.of(card, exp)
    method = job.align or prep.align
    if method not in ALIGN_METHODS:
        raise UseError(f"--align {method!r}: use one of {', '.join(ALIGN_METHODS)}")
    if method != prep.align:
        notes.append(f"--align {method}: the data set {config['dataset']!r} was prepared with {prep.align!r}")

    source = ImageSource(job.source, job.adapter)
    listing = source.list_images(classes)
    if not listing.paths:
        first = f"; first reject: {listing.rejects[0].source}: {listing.rejects[0].reason}" if listing.rejects else ""
        raise UseError(f"no image to classify in {redact(job.source)} ({len(listing.rejects)} rejects{first})")
    for ref in refs:
        log.info("predict: %s", ref.describe())

    gpus = job.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    rows = [{"path": p, "label": y} for p, y in zip(listing.paths, listing.labels)]
    blocks = max(1, min(math.ceil(len(rows) / job.batch_size), 1000))
    load_args = dict(source=source, prep=prep, method=method)
    with _ordered():
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        if method == "fan":
            ds = ds.map_batches(
                ImageLoader,
                fn_constructor_kwargs=dict(**load_args, weights=job.weights),
                batch_size=job.batch_size,
                compute=ActorPoolStrategy(min_size=1, max_size=job.actors),
                num_gpus=gpus,
                num_cpus=0 if gpus else 1,
            )
        else:
            # num_cpus differs from the actors' so Ray does not fuse the stages: loading overlaps classifying.
            ds = ds.map_batches(load_images, fn_kwargs=load_args, batch_size=job.batch_size, num_cpus=0.5)
        ds = ds.map_batches(
            Classifier,
            fn_constructor_kwargs=dict(
                store=store,
                refs=[asdict(r) for r in refs],
                prep=prep,
                classes=classes,
                amp=exp.train.amp,
                batch_size=job.batch_size,
            ),
            batch_size=job.batch_size,
            compute=ActorPoolStrategy(min_size=1, max_size=job.actors),
            num_gpus=gpus,
            num_cpus=0 if gpus else 1,
        )
        schema = _output_schema(classes, listing.labelled)
        writer = _Writer(job.out, schema, fmt)
        rejected: list[tuple[str, str]] = [(r.source, r.reason) for r in listing.rejects]
        converted: Counter = Counter()
        n, correct, known = 0, 0, 0
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                table = _rows_table(batch, classes, listing.labelled, schema)
                writer.write(table)
                n += table.num_rows
                rej = batch.filter(pc.not_equal(batch["reject"], ""))
                rejected += list(zip(rej["path"].to_pylist(), rej["reject"].to_pylist()))
                kept = batch.filter(pc.equal(batch["reject"], ""))
                converted.update(m for m in kept["converted"].to_pylist() if m)
                truth, pred = kept["true_label"].to_numpy(), kept["label"].to_numpy()
                known += int((truth >= 0).sum())
                correct += int(((truth >= 0) & (truth == pred)).sum())
        except BaseException:
            writer.abort()
            raise
        writer.commit()
    _write_rejects(rejects_path(job.out), rejected)
    if known and any(is_final(r.fold) for r in refs):
        notes.append(
            f"the final model trained on every face of {config['dataset']!r}: where these images come from it, "
            "this accuracy is not a held-out one (the cross-validation folds measure that)"
        )
    if converted:
        notes.append(
            ", ".join(f"{k} {m} image(s)" for m, k in sorted(converted.items()))
            + f" converted to {prep.mode} (the model's {prep.channels} channel(s)), as prepare converts"
        )
    return {
        "out": job.out,
        "rejects_out": rejects_path(job.out),
        "rows": n,
        "rejects": [{"path": p, "reason": r} for p, r in rejected],
        "converted": dict(converted),
        "models": [{**asdict(r), "id": r.id} for r in refs],
        "models_used": how,
        "checkpoints": [r.describe() for r in refs],
        "classes": classes,
        "align": method,
        "accuracy": correct / known if known else None,
        "labelled_rows": known,
        "notes": notes,
    }


def _write_rejects(uri: str, rejected: list[tuple[str, str]]) -> None:
    """FILE.rejects.csv: path, reason (a header alone when every image was classified)."""
    import pyarrow.csv as pacsv

    fs, path = open_location(uri)
    schema = pa.schema([("path", pa.string()), ("reason", pa.string())])
    table = pa.table({"path": [p for p, _ in rejected], "reason": [r for _, r in rejected]}, schema=schema)
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    with fs.open(path, "wb") as f:
        f.write(buf.getvalue())
