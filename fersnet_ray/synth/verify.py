"""`fersnet verify`: re-checks a run's synthetic shards against the face table and the manifests.

For every trained fold (and `synthetic/final/`, the final model's balanced data set): the manifest
exists (the fold finished); every listed shard exists, is readable, has the synthetic schema and its
SHA-256; no other Parquet file sits in the folder; no `face_id` appears twice; every (training face,
target expression ≠ its own) pair is present exactly once; and real + synthetic faces per class are
equal. Each problem is one line naming the fold and the file or pair; nothing is repaired here
(re-running `fersnet synthesize` does that).
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from fersnet_ray.foldkey import Fold, label, training_mask

from fersnet_ray.store import Store
from fersnet_ray.synth.job import MANIFEST, SYNTH_SCHEMA, trained_folds
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
    folder = store.synthetic_dir(run, fold)
    where = store.uri_of_path(folder)
    who = label(fold)  # "fold 3" or "final", at the start of every problem
    if not store.exists(f"{folder}/{MANIFEST}"):
        return [f"{who}: no {MANIFEST} in {where} (synthesis did not finish)"]
    manifest = store.read_json(f"{folder}/{MANIFEST}")
    problems: list[str] = []
    listed = {s["file"]: s for s in manifest["shards"]}
    present = {p.rsplit("/", 1)[-1] for p in store.fs.ls(folder, detail=False)}
    for name in sorted(n for n in present if n.endswith(".parquet") and n not in listed):
        problems.append(f"{who}: {where}/{name} is not in the manifest (foreign or duplicate output)")
    seen: Counter = Counter()
    pairs: set[tuple[str, int]] = set()
    for name, info in sorted(listed.items()):
        path = f"{folder}/{name}"
        if name not in present:
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
        seen.update(table["face_id"].to_pylist())
        pairs.update(zip(table["source_face_id"].to_pylist(), table["label"].to_pylist()))
    dups = [f for f, n in seen.items() if n > 1]
    if dups:
        problems.append(f"{who}: {len(dups)} duplicate face_id(s), e.g. {dups[0]}")

    faces = read_faces(store, manifest["dataset"], columns=["face_id", "label", "fold"])
    train = faces.filter(pa.array(training_mask(faces["fold"].to_numpy(), fold)))
    n_classes = len(manifest["classes"])
    expected = {
        (f, t)
        for f, y in zip(train["face_id"].to_pylist(), train["label"].to_pylist())
        for t in range(n_classes)
        if t != y
    }
    missing = expected - pairs
    filtered = sum(sum(s.get("below_min_score", {}).values()) for s in manifest["shards"])
    if filtered and len(missing) == filtered:
        missing = set()  # left out by --min-score, as the manifest records
    if missing and not any("missing" in p or "checksum" in p or "unreadable" in p for p in problems):
        src, tgt = sorted(missing)[0]
        problems.append(
            f"{who}: {len(missing)} (source face, target) pair(s) missing, e.g. ({src}, {manifest['classes'][tgt]})"
        )
    extra = pairs - expected
    if extra:
        problems.append(f"{who}: {len(extra)} synthetic face(s) from faces outside the fold's training split")
    if not problems and not filtered:
        real = Counter(train["label"].to_pylist())
        synth = Counter(t for _, t in pairs)
        totals = {real[c] + synth[c] for c in range(n_classes)}
        if len(totals) != 1:
            problems.append(
                f"{who}: not balanced: real + synthetic per class = {[real[c] + synth[c] for c in range(n_classes)]}"
            )
    return problems


def verify_run(store: Store, run: str, folds: tuple[Fold, ...] | None = None) -> dict[Fold, list[str]]:
    """Problems per fold for every trained fold, the final model's included (or the given ones)."""
    return {f: verify_fold(store, run, f) for f in (folds if folds is not None else trained_folds(store, run))}
