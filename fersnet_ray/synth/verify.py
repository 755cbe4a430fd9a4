"""`fersnet verify`: re-checks a run's synthetic shards against the face table and the manifests.

For every trained fold (and `synthetic/final/`, the final model's balanced data set): the manifest
exists (the fold finished); every listed shard exists, is readable, has the synthetic schema and its
SHA-256; no other Parquet file sits in the folder; every `face_id` is its (source face, target)'s and none appears twice; every (training face,
target expression ≠ its own) pair is present exactly once; and real + synthetic faces per class are
equal. Each problem is one line naming the fold and the file or pair; nothing is repaired here
(re-running `fersnet synthesize` does that).
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fersnet_ray.foldkey import Fold, label, training_mask

from fersnet_ray.store import Store
from fersnet_ray.synth.job import MANIFEST, SYNTH_SCHEMA, synthetic_face_id, trained_folds
from fersnet_ray.table import check_schema, read_faces


def _sha256(store: Store, path: str) -> str:
    h = hashlib.sha256()
    with store.fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_fold(store: Store, run: str, fold: Fold) -> list[str]:
    """Problems found in one fold's synthetic output (empty: the fold is complete and balanced).

    For the final model ("final") the sources are every face of the table, with the same checks.
    """
    layout = store.run(run)
    folder = layout.synthetic(fold)
    where = store.uri_of_path(folder)
    who = label(fold)  # "fold 3" or "final", at the start of every problem
    if not store.exists(layout.manifest(fold)):
        return [f"{who}: no {MANIFEST} in {where} (synthesis did not finish)"]
    manifest = store.read_json(layout.manifest(fold))
    problems: list[str] = []
    listed = {s["file"]: s for s in manifest["shards"]}
    present_files = {p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False)}
    for name in sorted(n for n in present_files if n.endswith(".parquet") and n not in listed):
        problems.append(f"{who}: {where}/{name} is not in the manifest (foreign or duplicate output)")
    # Pairs are counted in numpy against the training faces' sorted ids: the driver keeps a few bytes per
    # training face and target, nothing per synthetic row. A face_id is a function of its pair, checked
    # row by row within each shard, so a duplicate face_id anywhere is a pair counted twice (keeping
    # every face_id of the fold to count them took ~100 MB of the driver at 100k faces).
    faces = read_faces(store, manifest["dataset"], columns=["face_id", "label", "fold"])
    train = faces.filter(pa.array(training_mask(faces["fold"].to_numpy(), fold)))
    order = pc.sort_indices(train["face_id"])  # index order = face_id order, so the first missing pair is the least
    ids = pc.take(train["face_id"], order).combine_chunks()
    labels = pc.take(train["label"], order).to_numpy()  # (n,)
    n, n_classes = len(ids), len(manifest["classes"])
    present = np.zeros(n * n_classes, dtype=np.int64)  # (n × C,) rows per (training face, target)
    outside: Counter[tuple[str, int]] = Counter()  # pairs from faces outside the training split (rare)
    mislabelled: list[str] = []  # face_ids that are not their pair's
    for name, info in sorted(listed.items()):
        path = layout.synthetic_file(fold, name)
        if name not in present_files:
            problems.append(f"{who}: shard {where}/{name} is missing")
            continue
        if _sha256(store, path) != info["sha256"]:
            problems.append(f"{who}: shard {where}/{name} does not match its checksum")
            continue
        try:
            pf = pq.ParquetFile(path, filesystem=store.arrow_fs)
            check_schema(pf.schema_arrow, f"{where}/{name}", SYNTH_SCHEMA, "synthetic shard")
            table = pf.read(columns=["face_id", "source_face_id", "label"])
        except Exception as e:  # noqa: BLE001 - any read failure is a finding, named with its file
            problems.append(f"{who}: shard {where}/{name} is unreadable ({type(e).__name__}: {e})")
            continue
        rows = zip(table["face_id"].to_pylist(), table["source_face_id"].to_pylist(), table["label"].to_pylist())
        wrong = [f for f, src, t in rows if f != synthetic_face_id(src, t)]  # one shard's rows at a time
        if wrong:
            mislabelled.append(f"{where}/{name}: {len(wrong)}, e.g. {wrong[0]}")
        idx = pc.index_in(table["source_face_id"], value_set=ids)  # (rows,) position in `ids`, null outside
        target = table["label"].to_numpy()
        inside = pc.is_valid(idx).to_numpy(zero_copy_only=False) & (target >= 0) & (target < n_classes)
        keys = pc.fill_null(idx, 0).to_numpy()[inside].astype(np.int64) * n_classes + target[inside]
        present += np.bincount(keys, minlength=len(present))
        if not inside.all():
            sources = table["source_face_id"].to_numpy(zero_copy_only=False)
            outside.update(zip(sources[~inside].tolist(), target[~inside].tolist()))
    for m in mislabelled:
        problems.append(f"{who}: face_id(s) that are not their (source face, target)'s in {m}")
    twice = np.flatnonzero(present > 1)  # (training face, target) pairs written more than once
    twice_outside = [p for p, k in outside.items() if k > 1]
    if len(twice) or twice_outside:
        i, t = divmod(int(twice[0]), n_classes) if len(twice) else (None, None)
        example = synthetic_face_id(ids[i].as_py(), t) if i is not None else synthetic_face_id(*twice_outside[0])
        problems.append(f"{who}: {len(twice) + len(twice_outside)} duplicate face_id(s), e.g. {example}")

    own = np.zeros((n, n_classes), dtype=bool)  # (n, C): the face's own expression, never a target
    own[np.arange(n), labels] = True
    seen = present.reshape(n, n_classes) > 0
    missing = ~seen & ~own
    n_missing = int(missing.sum())
    filtered = sum(sum(s.get("below_min_score", {}).values()) for s in manifest["shards"])
    if filtered and n_missing == filtered:
        n_missing = 0  # left out by --min-score, as the manifest records
    if n_missing and not any("missing" in p or "checksum" in p or "unreadable" in p for p in problems):
        i, t = np.argwhere(missing)[0]
        problems.append(
            f"{who}: {n_missing} (source face, target) pair(s) missing, e.g. ({ids[int(i)].as_py()}, "
            f"{manifest['classes'][int(t)]})"
        )
    extra = int((seen & own).sum()) + len(outside)
    if extra:
        problems.append(f"{who}: {extra} synthetic face(s) from faces outside the fold's training split")
    if not problems and not filtered:
        totals = np.bincount(labels, minlength=n_classes) + seen.sum(axis=0)  # (C,) real + synthetic per class
        if len(set(totals.tolist())) != 1:
            problems.append(f"{who}: not balanced: real + synthetic per class = {totals.tolist()}")
    return problems


def verify_run(store: Store, run: str, folds: tuple[Fold, ...] | None = None) -> dict[Fold, list[str]]:
    """Problems per fold for every trained fold, the final model's included (or the given ones)."""
    return {f: verify_fold(store, run, f) for f in (folds if folds is not None else trained_folds(store, run))}
